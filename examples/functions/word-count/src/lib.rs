//! Counts the words of each record's value (split on whitespace, lower-cased) in the
//! function's kv state, and produces each word's running count, keyed by the word, to the
//! first output topic. Build: `cargo build --target wasm32-wasip2 --release`.

use runnel_sdk::{Batch, Error, Output, kv, log, produce};

#[runnel_sdk::consumer(batch)]
fn word_count(batch: &Batch<'_>) -> Result<(), Error> {
    let mut counts = Vec::new();
    for record in batch.records() {
        let text = std::str::from_utf8(record.value.unwrap_or_default())?;
        for word in text.split_whitespace() {
            let word = word.to_lowercase();
            let count = kv::get(word.as_bytes())
                .and_then(|v| std::str::from_utf8(&v).ok()?.parse::<u64>().ok())
                .unwrap_or(0)
                + 1;
            kv::set(word.as_bytes(), count.to_string().as_bytes());
            counts.push(Output::new().key(word).value(count.to_string()));
        }
    }
    log::info(&format!(
        "counted {} words in {} records",
        counts.len(),
        batch.len()
    ));
    produce::send(&counts)
}
