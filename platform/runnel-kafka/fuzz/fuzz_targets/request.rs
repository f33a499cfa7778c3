//! One request frame (header and body, no length prefix).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    runnel_kafka::codec::decode_one_for_fuzzing(bytes::Bytes::copy_from_slice(data));
});
