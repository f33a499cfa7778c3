//! A produced record batch, validated down to its records as an append would.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    runnel_log::batch::fuzz_produced_batch(data);
});
