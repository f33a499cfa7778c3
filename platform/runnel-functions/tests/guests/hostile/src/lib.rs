//! Misbehaves as its `mode` config says: `echo` (behaves), `loop` (never returns),
//! `bomb` (allocates without end), `trap-on-9` (panics on offsets ending in 9), `fail`
//! (returns an error), `kv-bomb` (fills kv without end), `count` (counts records in kv and logs).

use runnel_sdk::{Error, Output, Record, config, kv, log, metrics};

#[runnel_sdk::transform]
fn hostile(record: Record<'_>) -> Result<Option<Output>, Error> {
    match config::get("mode").as_deref() {
        Some("loop") => {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        Some("bomb") => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        Some("trap-on-9") if record.offset % 10 == 9 => {
            panic!("offset {} ends in 9", record.offset)
        }
        Some("fail") => Err(Error::new("refused on purpose")),
        Some("kv-bomb") => {
            for i in 0u64.. {
                kv::set(&i.to_le_bytes(), &vec![7u8; 1 << 20]);
            }
            unreachable!()
        }
        Some("count") => {
            let seen = kv::get(b"seen")
                .map(|v| u64::from_le_bytes(v.try_into().unwrap_or_default()))
                .unwrap_or(0)
                + 1;
            kv::set(b"seen", &seen.to_le_bytes());
            metrics::counter_add("records", 1);
            log::info(&format!("record {} is number {seen}", record.offset));
            Ok(Some(Output::new().value(seen.to_string())))
        }
        _ => Ok(Some(
            Output::from_record(&record).value(record.value.unwrap_or_default()),
        )),
    }
}
