//! `datagen`: a source of synthetic events at a configured rate, for demos and benchmarks.
//!
//! Config:
//! - `rate`: records per second (default 10);
//! - `shape`: `json` (default: an order-like object per record), `counter` (the sequence
//!   number as text) or `bytes:N` (N bytes of filler per value);
//! - `key`: `none` (default), `id` (the sequence number) or `user` (one of 100 users);
//! - `count`: stop after this many records (default: never).
//!
//! The cursor is the number of records emitted and the time the run started, so a
//! restart goes on from the next sequence number. After a pause longer than a few
//! seconds the schedule starts again from now instead of catching up in a burst.

use std::time::{SystemTime, UNIX_EPOCH};

use runnel_sdk::json::json;
use runnel_sdk::{Error, Output, Polled, config};

/// The most seconds of records a poll catches up on after a pause.
const MAX_BACKLOG_SECONDS: u64 = 5;

#[runnel_sdk::source]
fn datagen(cursor: Option<&[u8]>, max_records: usize) -> Result<Polled, Error> {
    let settings = Settings::from_config()?;
    let now = now_ms();
    let (mut start, emitted) = match cursor {
        Some(cursor) => parse_cursor(cursor)?,
        None => (now, 0),
    };
    let mut due = settings.rate.saturating_mul(now.saturating_sub(start)) / 1000;
    if due > emitted.saturating_add(settings.rate.saturating_mul(MAX_BACKLOG_SECONDS)) {
        // Down for a while: go on at the rate from now.
        start = now.saturating_sub(emitted.saturating_mul(1000) / settings.rate.max(1));
        due = emitted;
    }
    if let Some(count) = settings.count {
        due = due.min(count);
    }
    let wanted = due.saturating_sub(emitted).min(max_records as u64);
    let end = emitted.saturating_add(wanted);
    let mut records = Vec::with_capacity((end - emitted) as usize);
    for sequence in emitted..end {
        records.push(settings.record(sequence, now as i64)?);
    }
    Ok(Polled {
        records,
        cursor: Some(format!("{start},{end}").into_bytes()),
    })
}

struct Settings {
    rate: u64,
    shape: Shape,
    key: Key,
    count: Option<u64>,
}

enum Shape {
    Json,
    Counter,
    Bytes(usize),
}

enum Key {
    None,
    Id,
    User,
}

impl Settings {
    fn from_config() -> Result<Settings, Error> {
        let rate = match config::get("rate") {
            Some(rate) => rate
                .parse::<u64>()
                .map_err(|e| Error(format!("config rate={rate}: {e}")))?,
            None => 10,
        };
        if rate == 0 {
            return Err(Error::new("config rate: at least 1 record per second"));
        }
        let shape = match config::get("shape").as_deref() {
            None | Some("json") => Shape::Json,
            Some("counter") => Shape::Counter,
            Some(other) => match other.strip_prefix("bytes:").map(str::parse::<usize>) {
                Some(Ok(size)) if size <= 1 << 20 => Shape::Bytes(size),
                _ => {
                    return Err(Error(format!(
                        "config shape={other}: one of json, counter, bytes:N (N up to 1048576)"
                    )));
                }
            },
        };
        let key = match config::get("key").as_deref() {
            None | Some("none") => Key::None,
            Some("id") => Key::Id,
            Some("user") => Key::User,
            Some(other) => {
                return Err(Error(format!("config key={other}: one of none, id, user")));
            }
        };
        let count = match config::get("count") {
            Some(count) => Some(
                count
                    .parse::<u64>()
                    .map_err(|e| Error(format!("config count={count}: {e}")))?,
            ),
            None => None,
        };
        Ok(Settings {
            rate,
            shape,
            key,
            count,
        })
    }

    fn record(&self, sequence: u64, now: i64) -> Result<Output, Error> {
        let noise = mix(sequence);
        let user = format!("user-{}", noise % 100);
        let value = match self.shape {
            Shape::Counter => sequence.to_string().into_bytes(),
            Shape::Bytes(size) => {
                let mut filler = vec![b'x'; size];
                let digits = sequence.to_string();
                let n = digits.len().min(size);
                filler[..n].copy_from_slice(&digits.as_bytes()[..n]);
                filler
            }
            Shape::Json => {
                let items = ["book", "lamp", "mug", "pen", "shirt", "plant"];
                let event = json!({
                    "id": sequence,
                    "ts": now,
                    "user": user,
                    "item": items[(noise >> 8) as usize % items.len()],
                    "quantity": 1 + (noise >> 16) % 5,
                    "amount": ((noise >> 24) % 10_000) as f64 / 100.0,
                });
                event.to_string().into_bytes()
            }
        };
        let output = Output::new().value(value).timestamp(now);
        Ok(match self.key {
            Key::None => output,
            Key::Id => output.key(sequence.to_string()),
            Key::User => output.key(user),
        })
    }
}

/// A well-spread 64-bit value from a sequence number (SplitMix64).
fn mix(sequence: u64) -> u64 {
    let mut z = sequence.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn parse_cursor(cursor: &[u8]) -> Result<(u64, u64), Error> {
    let text = std::str::from_utf8(cursor)?;
    let (start, emitted) = text
        .split_once(',')
        .ok_or_else(|| Error(format!("cursor {text:?}: not START,EMITTED")))?;
    Ok((start.parse()?, emitted.parse()?))
}
