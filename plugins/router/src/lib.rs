//! `router`: sends each record to an output topic chosen by its key, a header or a JSON
//! field.
//!
//! Config:
//! - `by`: `key` (default), `header:NAME`, or `field:PATH` (a dotted path into the JSON
//!   value);
//! - `routes`: `VALUE=TOPIC` pairs, comma-separated (`eu=orders-eu,us=orders-us`);
//! - `default`: the topic for records no route matches; without it they are dropped.
//!
//! Every topic named must be one of the function's declared outputs (the host refuses
//! others). Records go out unchanged. Counters: `routed`, `unrouted`.

use runnel_sdk::{Error, Output, Record, config, json, metrics};

/// The record's routing value, if it has one.
fn selector(record: &Record<'_>, by: &str) -> Result<Option<String>, Error> {
    if by == "key" {
        return Ok(record.key.map(|k| String::from_utf8_lossy(k).into_owned()));
    }
    if let Some(name) = by.strip_prefix("header:") {
        return Ok(record
            .headers
            .get(name)
            .flatten()
            .map(|v| String::from_utf8_lossy(v).into_owned()));
    }
    if let Some(path) = by.strip_prefix("field:") {
        let Ok(value) = json::value(record) else {
            return Ok(None);
        };
        return Ok(json::text(&value, path));
    }
    Err(Error::new(format!(
        "by `{by}`: one of key, header:NAME, field:PATH"
    )))
}

#[runnel_sdk::transform]
fn route(record: Record<'_>) -> Result<Option<Output>, Error> {
    let by = config::get("by").unwrap_or_else(|| "key".to_string());
    let routes = config::get("routes").unwrap_or_default();
    let selected = selector(&record, &by)?;
    let mut topic = None;
    if let Some(selected) = &selected {
        for route in routes.split(',').map(str::trim).filter(|r| !r.is_empty()) {
            let (value, target) = route
                .split_once('=')
                .ok_or_else(|| Error::new(format!("route `{route}` is not VALUE=TOPIC")))?;
            if value.trim() == selected {
                topic = Some(target.trim().to_string());
                break;
            }
        }
    }
    let Some(topic) = topic.or_else(|| config::get("default")) else {
        metrics::counter_add("unrouted", 1);
        return Ok(None);
    };
    metrics::counter_add("routed", 1);
    let mut output = Output::from_record(&record).topic(topic);
    output.value = record.value.map(<[u8]>::to_vec);
    Ok(Some(output))
}
