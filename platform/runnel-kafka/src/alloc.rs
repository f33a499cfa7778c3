//! A global allocator that keeps a malformed request from aborting the process.
//!
//! The `kafka-protocol` crate (0.18) sizes a vector from an array's length prefix before
//! decoding its elements, so a request of a few bytes that claims two billion elements asks
//! for hundreds of gigabytes at once. The system allocator refuses, and Rust answers a
//! refused allocation by aborting: one bad request would take the broker down. (The fix,
//! bounding the length by the bytes left, is proposed upstream but not released.)
//!
//! [`GuardedAllocator`] serves allocations of [`HUGE`] bytes or more from anonymous
//! mappings with `MAP_NORESERVE`, which the kernel grants without committing memory, and
//! every other allocation from the system allocator. A decoder that reserves a huge vector
//! and then fails on the next element never touches it, so nothing is spent and the
//! request gets an error. Genuine huge allocations still work (pages are committed when
//! touched). The guard needs overcommit not set to "never" (`vm.overcommit_memory` = 2);
//! the frame limit (`socket.request.max.bytes`) bounds every real allocation anyway.

use std::alloc::{GlobalAlloc, Layout, System};

/// Allocations at least this large are mapped lazily.
pub const HUGE: usize = 1 << 30;

/// Page size assumed for alignment: mappings are page-aligned, so larger alignments fall
/// back to the system allocator.
const PAGE: usize = 4096;

pub struct GuardedAllocator;

fn is_mapped(layout: Layout) -> bool {
    layout.size() >= HUGE && layout.align() <= PAGE
}

// SAFETY: every pointer handed out is either the system allocator's (and goes back to it)
// or a fresh private mapping of at least `layout.size()` bytes, page-aligned (so aligned for
// any `layout.align() <= PAGE`), unmapped with the same size. `is_mapped` depends only on
// the layout, which callers must pass unchanged to `dealloc`.
unsafe impl GlobalAlloc for GuardedAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if is_mapped(layout) {
            map(layout.size())
        } else {
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { System.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_mapped(layout) {
            // Anonymous mappings are zeroed.
            map(layout.size())
        } else {
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if is_mapped(layout) {
            // SAFETY: `ptr` came from `map(layout.size())`.
            unsafe { libc::munmap(ptr.cast(), layout.size()) };
        } else {
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `new_size` with `layout.align()` is a valid layout.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        if !is_mapped(layout) && !is_mapped(new_layout) {
            // SAFETY: forwarded with the caller's guarantees.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // SAFETY: a valid layout as above; the copy covers bytes both blocks own.
        unsafe {
            let new = self.alloc(new_layout);
            if !new.is_null() {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            new
        }
    }
}

fn map(size: usize) -> *mut u8 {
    // SAFETY: a new private anonymous mapping; no existing memory is affected.
    let pointer = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if pointer == libc::MAP_FAILED {
        std::ptr::null_mut()
    } else {
        pointer.cast()
    }
}
