//! `filter`: keeps the records whose JSON value matches a predicate, drops the rest.
//!
//! Config:
//! - `field`: the dotted path of the field (`status`, `customer.country`, `items.0.sku`);
//! - `op`: `eq` (default), `ne`, `gt`, `ge`, `lt`, `le` (numbers), `contains` (text),
//!   `exists`, `missing`;
//! - `value`: what to compare with (not for `exists` and `missing`); numbers compare as
//!   numbers, the rest as text (a JSON string's text, other values as compact JSON);
//! - `invalid`: what to do with a value that is not JSON: `drop` (default), `keep`, or
//!   `fail` (the batch goes to the dead-letter topic).
//!
//! Kept records go out unchanged (key, value, headers, timestamp). Counters: `kept`,
//! `dropped`, `invalid`.

use runnel_sdk::{Error, Output, Record, config, json, metrics};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
    Contains,
    Exists,
    Missing,
}

fn op() -> Result<Op, Error> {
    Ok(match config::get("op").as_deref().unwrap_or("eq") {
        "eq" => Op::Eq,
        "ne" => Op::Ne,
        "gt" => Op::Gt,
        "ge" => Op::Ge,
        "lt" => Op::Lt,
        "le" => Op::Le,
        "contains" => Op::Contains,
        "exists" => Op::Exists,
        "missing" => Op::Missing,
        other => {
            return Err(Error::new(format!(
                "op `{other}`: one of eq, ne, gt, ge, lt, le, contains, exists, missing"
            )));
        }
    })
}

/// Whether the record's value matches; `None` if it is not JSON.
fn matches(record: &Record<'_>, field: &str, op: Op, wanted: &str) -> Result<Option<bool>, Error> {
    let Ok(value) = json::value(record) else {
        return Ok(None);
    };
    let found = json::field(&value, field);
    let Some(found) = found else {
        return Ok(Some(op == Op::Missing || op == Op::Ne));
    };
    let text = match found {
        json::Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    let number = |s: &str| s.parse::<f64>().ok();
    let compare = |test: fn(f64, f64) -> bool| match (found.as_f64(), number(wanted)) {
        (Some(a), Some(b)) => test(a, b),
        _ => false,
    };
    Ok(Some(match op {
        Op::Eq => match (found.as_f64(), number(wanted)) {
            (Some(a), Some(b)) => a == b,
            _ => text == wanted,
        },
        Op::Ne => match (found.as_f64(), number(wanted)) {
            (Some(a), Some(b)) => a != b,
            _ => text != wanted,
        },
        Op::Gt => compare(|a, b| a > b),
        Op::Ge => compare(|a, b| a >= b),
        Op::Lt => compare(|a, b| a < b),
        Op::Le => compare(|a, b| a <= b),
        Op::Contains => text.contains(wanted),
        Op::Exists => true,
        Op::Missing => false,
    }))
}

#[runnel_sdk::transform]
fn filter(record: Record<'_>) -> Result<Option<Output>, Error> {
    let field = config::get("field").ok_or_else(|| Error::new("config `field` is required"))?;
    let op = op()?;
    let wanted = config::get("value").unwrap_or_default();
    if config::get("value").is_none() && !matches!(op, Op::Exists | Op::Missing) {
        return Err(Error::new("config `value` is required for this op"));
    }
    let keep = match matches(&record, &field, op, &wanted)? {
        Some(keep) => keep,
        None => {
            metrics::counter_add("invalid", 1);
            match config::get("invalid").as_deref().unwrap_or("drop") {
                "keep" => true,
                "fail" => return Err(Error::new("the value is not JSON")),
                _ => false,
            }
        }
    };
    if !keep {
        metrics::counter_add("dropped", 1);
        return Ok(None);
    }
    metrics::counter_add("kept", 1);
    let mut output = Output::from_record(&record);
    output.value = record.value.map(<[u8]>::to_vec);
    Ok(Some(output))
}
