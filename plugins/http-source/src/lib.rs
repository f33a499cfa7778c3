//! `http-source`: polls a URL that answers with JSON and emits each item of its array as
//! a record.
//!
//! Config:
//! - `url`: what to GET (its host must be on the connector's `--allow-host` list);
//! - `items`: where the array is in the response, as a dotted path (`data.items`);
//!   default: the response is the array;
//! - `cursor.field`: a field of each item that grows from item to item (an id, a
//!   timestamp). The last emitted item's value is the connector's cursor, sent back as
//!   the query parameter `cursor.param` (default `after`), so each poll asks only for
//!   what is new and a restart resumes after the last item written. Without it, every
//!   poll emits every item of the response;
//! - `key.field`: a field whose text becomes the record key (default: no key);
//! - `header.NAME`: an extra request header.
//!
//! A response other than 2xx, or a body that is not JSON, fails the poll: the host
//! retries it with backoff and the cursor stays where it was.

use runnel_sdk::json::{Value, field};
use runnel_sdk::{Error, Output, Polled, config, http, metrics};

#[runnel_sdk::source]
fn http_source(cursor: Option<&[u8]>, max_records: usize) -> Result<Polled, Error> {
    let url = config::get("url").ok_or_else(|| Error::new("config url is missing"))?;
    let cursor_field = config::get("cursor.field");
    let cursor = cursor.map(std::str::from_utf8).transpose()?;
    let target = match (&cursor_field, cursor) {
        (Some(_), Some(cursor)) => {
            let param = config::get("cursor.param").unwrap_or_else(|| "after".to_string());
            http::with_query(&url, &param, cursor)
        }
        _ => url.clone(),
    };
    let mut headers: Vec<(String, String)> =
        vec![("accept".to_string(), "application/json".to_string())];
    headers.extend(http::config_headers());
    let response = http::send("GET", &target, &headers, None)?;
    if !response.is_success() {
        return Err(Error(format!("GET {target} answered {}", response.status)));
    }
    let body = runnel_sdk::json::from_bytes(&response.body)
        .map_err(|e| Error(format!("GET {target}: the body is {e}")))?;
    let items = match config::get("items") {
        Some(path) => field(&body, &path)
            .ok_or_else(|| Error(format!("GET {target}: no `{path}` in the response")))?,
        None => &body,
    };
    let items = items
        .as_array()
        .ok_or_else(|| Error(format!("GET {target}: the items are not a JSON array")))?;
    let key_field = config::get("key.field");
    let mut records = Vec::new();
    let mut last_cursor = None;
    for item in items.iter().take(max_records) {
        let mut output = Output::new().value(item.to_string());
        if let Some(key) = key_field.as_deref().and_then(|k| field(item, k)) {
            output = output.key(text(key));
        }
        if let Some(name) = &cursor_field {
            let value = field(item, name).ok_or_else(|| {
                Error(format!("an item has no cursor field `{name}`: {item}"))
            })?;
            last_cursor = Some(text(value).into_bytes());
        }
        records.push(output);
    }
    metrics::counter_add("items", records.len() as u64);
    Ok(Polled {
        records,
        cursor: last_cursor,
    })
}

/// A JSON value as text: a string's contents, anything else as JSON.
fn text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}
