//! `redact`: masks named fields of each record's JSON value.
//!
//! Config:
//! - `fields`: comma-separated dotted paths (`email,card.number,customer.phone`);
//! - `mask`: what replaces each value (default `***`); with `mask=null` it becomes JSON
//!   `null`;
//! - `invalid`: for a value that is not JSON: `fail` (default: the batch goes to the
//!   dead-letter topic, nothing unredacted gets through) or `drop`.
//!
//! Fields that are not there are left alone; the key, headers and timestamp go out
//! unchanged. Counter: `redacted` (fields masked).

use runnel_sdk::{Error, Output, Record, config, json, metrics};

#[runnel_sdk::transform]
fn redact(record: Record<'_>) -> Result<Option<Output>, Error> {
    let fields = config::get("fields").ok_or_else(|| Error::new("config `fields` is required"))?;
    let mask = match config::get("mask").as_deref() {
        Some("null") => json::Value::Null,
        Some(mask) => json::Value::String(mask.to_string()),
        None => json::Value::String("***".to_string()),
    };
    let mut value = match json::value(&record) {
        Ok(value) => value,
        Err(error) => match config::get("invalid").as_deref() {
            Some("drop") => return Ok(None),
            _ => return Err(error),
        },
    };
    for path in fields.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some(field) = json::field_mut(&mut value, path) {
            *field = mask.clone();
            metrics::counter_add("redacted", 1);
        }
    }
    Ok(Some(Output::from_record(&record).json(&value)?))
}
