//! A byte stream from a client: split into frames, each decoded if it claims a served
//! request.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    runnel_kafka::codec::decode_stream_for_fuzzing(data);
});
