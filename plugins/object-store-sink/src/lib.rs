//! `object-store-sink`: writes each batch of records as one object of JSON lines to an
//! S3-compatible bucket (AWS S3, MinIO, …), path-style, signed with AWS Signature V4.
//!
//! Config:
//! - `endpoint`: `http://host:port` or `https://host` of the S3 API (its host must be on
//!   the connector's `--allow-host` list);
//! - `bucket`; `prefix` (default `topics/`); `region` (default `us-east-1`);
//! - `access.key` and `secret.key`: the credentials (without them requests go unsigned,
//!   which only a local test server takes);
//! - `value.format`: `auto` (default), `json` or `string`, as for `http-sink`.
//!
//! A batch of partition P of topic T from offset F to L becomes the object
//! `PREFIX T/partition=P/F-L.jsonl` (offsets zero-padded to 20 digits, so keys sort by
//! offset), one record per line as `{"topic", "partition", "offset", "timestamp", "key",
//! "value", "headers"}`. A batch sent again after a crash writes the same key when it has
//! the same bounds. A response other than 2xx fails the batch: the host retries it.

use std::time::{SystemTime, UNIX_EPOCH};

use runnel_sdk::{Batch, Error, config, http, metrics};

#[runnel_sdk::sink(batch)]
fn object_store_sink(batch: &Batch<'_>) -> Result<(), Error> {
    let endpoint = required("endpoint")?;
    let bucket = required("bucket")?;
    let prefix = config::get("prefix").unwrap_or_else(|| "topics/".to_string());
    let format = config::get("value.format").unwrap_or_else(|| "auto".to_string());
    let mut body = Vec::new();
    let (mut first, mut last) = (None, 0);
    for record in batch.records() {
        first.get_or_insert(record.offset);
        last = record.offset;
        let line = runnel_sdk::json::record_object(batch, &record, &format)?;
        body.extend_from_slice(line.to_string().as_bytes());
        body.push(b'\n');
    }
    let Some(first) = first else {
        return Ok(());
    };
    let host = endpoint
        .split_once("://")
        .map(|(_, rest)| rest.trim_end_matches('/'))
        .filter(|host| !host.is_empty() && !host.contains('/'))
        .ok_or_else(|| Error(format!("config endpoint={endpoint}: http(s)://host[:port]")))?;
    let key = format!(
        "{prefix}{}/partition={}/{first:020}-{last:020}.jsonl",
        batch.topic, batch.partition
    );
    let path = runnel_sigv4::encode_path(&format!("/{bucket}/{key}"));
    let url = format!("{}{path}", endpoint.trim_end_matches('/'));
    let mut headers = vec![("content-type".to_string(), "application/x-ndjson".to_string())];
    if let (Some(access_key), Some(secret_key)) =
        (config::get("access.key"), config::get("secret.key"))
    {
        let region = config::get("region").unwrap_or_else(|| "us-east-1".to_string());
        let unix_seconds = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let signed = runnel_sigv4::sign(&runnel_sigv4::Request {
            method: "PUT",
            host,
            path: &path,
            query: "",
            payload: &body,
            region: &region,
            access_key: &access_key,
            secret_key: &secret_key,
            unix_seconds,
        });
        headers.push(("authorization".to_string(), signed.authorization));
        headers.push(("x-amz-date".to_string(), signed.date));
        headers.push(("x-amz-content-sha256".to_string(), signed.content_sha256));
    }
    let response = http::send("PUT", &url, &headers, Some(&body))?;
    if !response.is_success() {
        let text = String::from_utf8_lossy(&response.body);
        let text: String = text.chars().take(300).collect();
        return Err(Error(format!(
            "PUT {url} answered {}: {text}",
            response.status
        )));
    }
    metrics::counter_add("objects_written", 1);
    metrics::counter_add("records_written", batch.len() as u64);
    Ok(())
}

fn required(key: &str) -> Result<String, Error> {
    config::get(key).ok_or_else(|| Error(format!("config {key} is missing")))
}
