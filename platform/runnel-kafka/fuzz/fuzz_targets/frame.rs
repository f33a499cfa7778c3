//! A byte stream from a client: split into frames, each decoded if it claims a served
//! request.
#![no_main]

/// As in the `runnel` binary: a huge reservation from a malformed array count must not
/// abort the process (see `runnel_kafka::alloc`).
#[global_allocator]
static ALLOCATOR: runnel_kafka::alloc::GuardedAllocator = runnel_kafka::alloc::GuardedAllocator;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    runnel_kafka::codec::decode_stream_for_fuzzing(data);
});
