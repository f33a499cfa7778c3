//! JSON values in records, with the `json` feature: parse a record's value, reach into it
//! by a dotted path, and write JSON outputs.
//!
//! ```ignore
//! use runnel_sdk::{Error, Output, Record, json};
//!
//! #[runnel_sdk::transform]
//! fn tag_big_orders(record: Record<'_>) -> Result<Option<Output>, Error> {
//!     let mut order = json::value(&record)?;
//!     let big = json::field(&order, "total").and_then(|t| t.as_f64()).unwrap_or(0.0) > 100.0;
//!     json::set(&mut order, "big", json::Value::Bool(big))?;
//!     Ok(Some(Output::from_record(&record).json(&order)?))
//! }
//! ```

pub use serde_json::{Map, Value, json};

use crate::{Error, Output, Record};

/// The record's value as JSON (a null value is JSON `null`).
pub fn value(record: &Record<'_>) -> Result<Value, Error> {
    match record.value {
        None => Ok(Value::Null),
        Some(bytes) => serde_json::from_slice(bytes)
            .map_err(|e| Error(format!("the value is not JSON: {e}"))),
    }
}

/// `bytes` (an HTTP body, say) as JSON.
pub fn from_bytes(bytes: &[u8]) -> Result<Value, Error> {
    serde_json::from_slice(bytes).map_err(|e| Error(format!("not JSON: {e}")))
}

/// The record's value as a `T`.
pub fn parse<T: serde::de::DeserializeOwned>(record: &Record<'_>) -> Result<T, Error> {
    let bytes = record.value.unwrap_or(b"null");
    serde_json::from_slice(bytes).map_err(|e| Error(format!("the value does not parse: {e}")))
}

/// The value at `path`: field names and array indexes separated by dots
/// (`customer.address.city`, `items.0.sku`); the whole value for an empty path.
pub fn field<'v>(value: &'v Value, path: &str) -> Option<&'v Value> {
    if path.is_empty() {
        return Some(value);
    }
    let mut current = value;
    for step in path.split('.') {
        current = match current {
            Value::Object(map) => map.get(step)?,
            Value::Array(items) => items.get(step.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(current)
}

/// The value at `path`, to change it.
pub fn field_mut<'v>(value: &'v mut Value, path: &str) -> Option<&'v mut Value> {
    if path.is_empty() {
        return Some(value);
    }
    let mut current = value;
    for step in path.split('.') {
        current = match current {
            Value::Object(map) => map.get_mut(step)?,
            Value::Array(items) => items.get_mut(step.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(current)
}

/// Sets the value at `path`, creating objects on the way; an error if a step on the way
/// is neither an object nor missing.
pub fn set(value: &mut Value, path: &str, new: Value) -> Result<(), Error> {
    let mut steps: Vec<&str> = path.split('.').collect();
    let Some(last) = steps.pop() else {
        *value = new;
        return Ok(());
    };
    let mut current = value;
    for step in steps {
        let Value::Object(map) = current else {
            return Err(Error(format!("`{path}`: `{step}` is inside a non-object")));
        };
        current = map
            .entry(step.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    match current {
        Value::Object(map) => {
            map.insert(last.to_string(), new);
            Ok(())
        }
        Value::Array(items) => {
            let slot = last
                .parse::<usize>()
                .ok()
                .and_then(|index| items.get_mut(index))
                .ok_or_else(|| Error(format!("`{path}`: no element `{last}`")))?;
            *slot = new;
            Ok(())
        }
        _ => Err(Error(format!("`{path}`: the parent is not an object"))),
    }
}

/// The value at `path` as text for comparing and routing: strings as they are, other
/// scalars as JSON (`42`, `true`), objects and arrays as compact JSON.
pub fn text(value: &Value, path: &str) -> Option<String> {
    match field(value, path)? {
        Value::String(text) => Some(text.clone()),
        other => Some(other.to_string()),
    }
}

impl Output {
    /// Sets the value to `value` as JSON.
    pub fn json<T: serde::Serialize>(self, value: &T) -> Result<Output, Error> {
        let bytes =
            serde_json::to_vec(value).map_err(|e| Error(format!("cannot write JSON: {e}")))?;
        Ok(self.value(bytes))
    }
}

impl From<serde_json::Error> for Error {
    fn from(error: serde_json::Error) -> Error {
        Error(format!("JSON: {error}"))
    }
}

/// A record as one JSON object, `{"topic", "partition", "offset", "timestamp", "key",
/// "value", "headers"}`, for sinks that write records out as JSON. Keys and header
/// values are text (invalid UTF-8 replaced); the value per `value_format`: `auto` (JSON
/// if it parses, else text), `json` (an error if it does not parse) or `string`.
pub fn record_object(
    batch: &crate::Batch<'_>,
    record: &Record<'_>,
    value_format: &str,
) -> Result<Value, Error> {
    let text = |bytes: &[u8]| Value::String(String::from_utf8_lossy(bytes).into_owned());
    let value = match (record.value, value_format) {
        (None, _) => Value::Null,
        (Some(bytes), "string") => text(bytes),
        (Some(_), "json") => {
            value(record).map_err(|e| Error(format!("offset {}: {e}", record.offset)))?
        }
        (Some(bytes), "auto") => value(record).unwrap_or_else(|_| text(bytes)),
        (_, other) => {
            return Err(Error(format!(
                "value format `{other}`: one of auto, json, string"
            )));
        }
    };
    let mut headers = Map::new();
    for (key, header) in record.headers.iter() {
        headers.insert(key.to_string(), header.map_or(Value::Null, text));
    }
    let mut object = Map::new();
    object.insert("topic".into(), Value::String(batch.topic.to_string()));
    object.insert("partition".into(), batch.partition.into());
    object.insert("offset".into(), record.offset.into());
    object.insert("timestamp".into(), record.timestamp.into());
    object.insert("key".into(), record.key.map_or(Value::Null, text));
    object.insert("value".into(), value);
    object.insert("headers".into(), Value::Object(headers));
    Ok(Value::Object(object))
}
