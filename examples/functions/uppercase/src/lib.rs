//! Upper-cases each record's value (ASCII), keeping its key, headers and timestamp.
//! Build: `cargo build --target wasm32-wasip2 --release`.

use runnel_sdk::{Error, Output, Record};

#[runnel_sdk::transform]
fn uppercase(record: Record<'_>) -> Result<Option<Output>, Error> {
    let value = record.value.unwrap_or_default().to_ascii_uppercase();
    Ok(Some(Output::from_record(&record).value(value)))
}
