//! A produced record batch, validated down to its records as an append would.
#![no_main]

/// As in the `runnel` binary: a huge reservation from a malformed array count must not
/// abort the process (see `runnel_kafka::alloc`).
#[global_allocator]
static ALLOCATOR: runnel_kafka::alloc::GuardedAllocator = runnel_kafka::alloc::GuardedAllocator;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    runnel_log::batch::fuzz_produced_batch(data);
});
