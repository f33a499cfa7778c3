//! `http-sink`: POSTs each batch of records as one JSON array to a URL.
//!
//! Config:
//! - `url`: where to POST (its host must be on the connector's `--allow-host` list);
//! - `value.format`: `auto` (default: a value that is JSON goes as JSON, any other as a
//!   string), `json` (a value that is not JSON fails the batch) or `string`;
//! - `header.NAME`: an extra request header (for example `header.authorization`).
//!
//! Each element is `{"topic", "partition", "offset", "timestamp", "key", "value",
//! "headers"}`; the request carries `x-runnel-batch: TOPIC/PARTITION/FIRST-LAST` so a
//! receiver can recognise a batch sent again. A response other than 2xx, or no response,
//! fails the batch: the host retries it with backoff (and, with `--on-failure dlq`,
//! dead-letters it after its retries); progress moves only past batches that were
//! accepted.

use runnel_sdk::json::Value;
use runnel_sdk::{Batch, Error, config, http, metrics};

#[runnel_sdk::sink(batch)]
fn http_sink(batch: &Batch<'_>) -> Result<(), Error> {
    let url = config::get("url").ok_or_else(|| Error::new("config url is missing"))?;
    let format = config::get("value.format").unwrap_or_else(|| "auto".to_string());
    let mut elements = Vec::with_capacity(batch.len());
    let mut first = None;
    let mut last = 0;
    for record in batch.records() {
        first.get_or_insert(record.offset);
        last = record.offset;
        elements.push(runnel_sdk::json::record_object(batch, &record, &format)?);
    }
    let Some(first) = first else {
        return Ok(());
    };
    let body = Value::Array(elements).to_string();
    let batch_id = format!("{}/{}/{first}-{last}", batch.topic, batch.partition);
    let mut headers: Vec<(String, String)> = vec![
        ("content-type".to_string(), "application/json".to_string()),
        ("x-runnel-batch".to_string(), batch_id),
    ];
    headers.extend(http::config_headers());
    let response = http::send("POST", &url, &headers, Some(body.as_bytes()))?;
    if !response.is_success() {
        let text = String::from_utf8_lossy(&response.body);
        let text: String = text.chars().take(200).collect();
        return Err(Error(format!(
            "POST {url} answered {}: {text}",
            response.status
        )));
    }
    metrics::counter_add("records_sent", batch.len() as u64);
    metrics::counter_add("requests", 1);
    Ok(())
}
