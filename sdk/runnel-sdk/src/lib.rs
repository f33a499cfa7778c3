//! Write Runnel functions in Rust: a plain function behind one attribute macro, built with
//! `cargo build --target wasm32-wasip2 --release` into a component the broker runs next to
//! the partitions it reads (`docs/functions.md`).
//!
//! Enable the feature of the function's kind, `transform`, `consumer`, `source` or
//! `sink` (the last two are connectors, `docs/connectors.md`), then:
//!
//! ```ignore
//! use runnel_sdk::{Error, Output, Record};
//!
//! /// Upper-cases every value; keys and headers are kept.
//! #[runnel_sdk::transform]
//! fn uppercase(record: Record<'_>) -> Result<Option<Output>, Error> {
//!     let value = record.value.unwrap_or_default().to_ascii_uppercase();
//!     Ok(Some(Output::from_record(&record).value(value)))
//! }
//! ```
//!
//! A per-record function returns anything iterable over [`Output`]s (`Option`, `Vec`, …);
//! `#[transform(batch)]` and `#[consumer(batch)]` take the whole [`Batch`] instead. An
//! error fails the batch: the broker retries it, then sends it to the function's
//! dead-letter topic.
//!
//! A source is `#[runnel_sdk::source] fn(Option<&[u8]>, usize) -> Result<Polled, Error>`:
//! given its cursor (none at first) and the most records to return, the records it
//! brings and its new cursor, which the host stores with them. A sink is written as a
//! consumer, with `#[runnel_sdk::sink]`.
//!
//! The host's services: [`log`], [`config`], [`kv`] (state per partition), [`metrics`]
//! and, for consumers, [`produce`]. With the `json` feature, [`json`] reads and writes
//! JSON values; with `http`, connectors make requests with [`http`].

// The generated bindings name this crate by its path, also from inside it.
extern crate self as runnel_sdk;

#[cfg(any(
    all(feature = "transform", feature = "consumer"),
    all(feature = "transform", feature = "source"),
    all(feature = "transform", feature = "sink"),
    all(feature = "consumer", feature = "source"),
    all(feature = "consumer", feature = "sink"),
    all(feature = "source", feature = "sink"),
))]
compile_error!(
    "enable one of the features `transform`, `consumer`, `source` and `sink`, not several"
);

pub use runnel_abi::{Batch, Headers, Record};
pub use runnel_sdk_macros::{consumer, sink, source, transform};

#[cfg(feature = "http")]
pub mod http;

/// What a source's poll brought: records for its topics, and its position after them
/// (`None` keeps the previous one).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Polled {
    pub records: Vec<Output>,
    pub cursor: Option<Vec<u8>>,
}

mod output;
pub use output::Output;

#[cfg(feature = "json")]
pub mod json;

/// Why a function failed a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(pub String);

impl Error {
    pub fn new(message: impl Into<String>) -> Error {
        Error(message.into())
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<String> for Error {
    fn from(message: String) -> Error {
        Error(message)
    }
}

impl From<&str> for Error {
    fn from(message: &str) -> Error {
        Error(message.to_string())
    }
}

impl From<std::str::Utf8Error> for Error {
    fn from(error: std::str::Utf8Error) -> Error {
        Error(format!("not UTF-8: {error}"))
    }
}

impl From<std::num::ParseIntError> for Error {
    fn from(error: std::num::ParseIntError) -> Error {
        Error(format!("not a number: {error}"))
    }
}

/// The bindings of the world this crate builds, generated from `schemas/wit`.
#[doc(hidden)]
pub mod bindings {
    #[cfg(feature = "transform")]
    wit_bindgen::generate!({
        world: "transform",
        path: "../../schemas/wit",
        pub_export_macro: true,
        export_macro_name: "export_transform",
        default_bindings_module: "::runnel_sdk::bindings",
        runtime_path: "::runnel_sdk::__private::wit_bindgen::rt",
    });

    #[cfg(feature = "consumer")]
    wit_bindgen::generate!({
        world: "consumer",
        path: "../../schemas/wit",
        pub_export_macro: true,
        export_macro_name: "export_consumer",
        default_bindings_module: "::runnel_sdk::bindings",
        runtime_path: "::runnel_sdk::__private::wit_bindgen::rt",
    });

    #[cfg(feature = "sink")]
    wit_bindgen::generate!({
        world: "sink",
        path: "../../schemas/wit",
        pub_export_macro: true,
        export_macro_name: "export_sink",
        default_bindings_module: "::runnel_sdk::bindings",
        runtime_path: "::runnel_sdk::__private::wit_bindgen::rt",
    });

    #[cfg(feature = "source")]
    wit_bindgen::generate!({
        world: "source",
        path: "../../schemas/wit",
        pub_export_macro: true,
        export_macro_name: "export_source",
        default_bindings_module: "::runnel_sdk::bindings",
        runtime_path: "::runnel_sdk::__private::wit_bindgen::rt",
    });
}

#[cfg(any(
    feature = "transform",
    feature = "consumer",
    feature = "source",
    feature = "sink"
))]
use bindings::runnel::functions as host;

/// Lines in the function's log stream (`runnel fn logs NAME`).
#[cfg(any(
    feature = "transform",
    feature = "consumer",
    feature = "source",
    feature = "sink"
))]
pub mod log {
    use super::host::log::{Level, write};

    pub fn debug(message: &str) {
        write(Level::Debug, message);
    }

    pub fn info(message: &str) {
        write(Level::Info, message);
    }

    pub fn warn(message: &str) {
        write(Level::Warn, message);
    }

    pub fn error(message: &str) {
        write(Level::Error, message);
    }
}

/// The function's configuration, as given at deploy (`--config key=value`).
#[cfg(any(
    feature = "transform",
    feature = "consumer",
    feature = "source",
    feature = "sink"
))]
pub mod config {
    pub fn get(key: &str) -> Option<String> {
        super::host::config::get(key)
    }

    pub fn all() -> Vec<(String, String)> {
        super::host::config::all()
    }
}

/// State of the function for the partition being processed; it survives restarts.
#[cfg(any(
    feature = "transform",
    feature = "consumer",
    feature = "source",
    feature = "sink"
))]
pub mod kv {
    pub fn get(key: &[u8]) -> Option<Vec<u8>> {
        super::host::kv::get(key)
    }

    pub fn set(key: &[u8], value: &[u8]) {
        super::host::kv::set(key, value)
    }

    pub fn delete(key: &[u8]) {
        super::host::kv::delete(key)
    }
}

/// Counters and gauges on the node's `/metrics`, labelled with the function's name.
#[cfg(any(
    feature = "transform",
    feature = "consumer",
    feature = "source",
    feature = "sink"
))]
pub mod metrics {
    pub fn counter_add(name: &str, delta: u64) {
        super::host::metrics::counter_add(name, delta)
    }

    pub fn gauge_set(name: &str, value: f64) {
        super::host::metrics::gauge_set(name, value)
    }
}

/// Records to the function's declared output topics (consumers).
#[cfg(feature = "consumer")]
pub mod produce {
    use super::{Error, Output};

    pub fn send(outputs: &[Output]) -> Result<(), Error> {
        let encoded = super::__private::encode(outputs.iter())?;
        super::host::produce::send(&encoded).map_err(Error)
    }
}

/// What the attribute macros expand to; not for direct use.
#[doc(hidden)]
pub mod __private {
    pub use wit_bindgen;

    use super::{Batch, Error, Output, Record};

    /// Adds `outputs` to `writer`.
    fn push_all<O: std::borrow::Borrow<Output>>(
        writer: &mut runnel_abi::OutputWriter,
        outputs: impl IntoIterator<Item = O>,
    ) -> Result<(), String> {
        for output in outputs {
            writer
                .push(&output.borrow().as_abi())
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    pub fn encode<'a>(outputs: impl Iterator<Item = &'a Output>) -> Result<Vec<u8>, Error> {
        let mut writer = runnel_abi::OutputWriter::new();
        push_all(&mut writer, outputs).map_err(Error)?;
        Ok(writer.finish())
    }

    fn parse(batch: &[u8]) -> Result<Batch<'_>, String> {
        Batch::parse(batch).map_err(|e| format!("the host sent a batch that does not decode: {e}"))
    }

    /// A per-record transform over a batch.
    pub fn transform_records<O, I>(
        batch: &[u8],
        function: impl Fn(Record<'_>) -> Result<I, Error>,
    ) -> Result<Vec<u8>, String>
    where
        I: IntoIterator<Item = O>,
        O: std::borrow::Borrow<Output>,
    {
        let batch = parse(batch)?;
        let mut writer = runnel_abi::OutputWriter::new();
        for record in batch.records() {
            let outputs =
                function(record).map_err(|e| format!("record at offset {}: {e}", record.offset))?;
            push_all(&mut writer, outputs)?;
        }
        Ok(writer.finish())
    }

    /// A per-batch transform.
    pub fn transform_batch<O, I>(
        batch: &[u8],
        function: impl Fn(&Batch<'_>) -> Result<I, Error>,
    ) -> Result<Vec<u8>, String>
    where
        I: IntoIterator<Item = O>,
        O: std::borrow::Borrow<Output>,
    {
        let batch = parse(batch)?;
        let mut writer = runnel_abi::OutputWriter::new();
        push_all(&mut writer, function(&batch).map_err(|e| e.0)?)?;
        Ok(writer.finish())
    }

    /// A per-record consumer over a batch.
    pub fn consume_records(
        batch: &[u8],
        function: impl Fn(Record<'_>) -> Result<(), Error>,
    ) -> Result<(), String> {
        let batch = parse(batch)?;
        for record in batch.records() {
            function(record).map_err(|e| format!("record at offset {}: {e}", record.offset))?;
        }
        Ok(())
    }

    /// A per-batch consumer.
    pub fn consume_batch(
        batch: &[u8],
        function: impl Fn(&Batch<'_>) -> Result<(), Error>,
    ) -> Result<(), String> {
        let batch = parse(batch)?;
        function(&batch).map_err(|e| e.0)
    }

    /// A source's poll: its records in the output encoding, and its cursor.
    #[cfg(feature = "source")]
    pub fn poll(
        cursor: Option<Vec<u8>>,
        max_records: u32,
        function: impl Fn(Option<&[u8]>, usize) -> Result<super::Polled, Error>,
    ) -> Result<crate::bindings::Polled, String> {
        let polled = function(cursor.as_deref(), max_records as usize).map_err(|e| e.0)?;
        if polled.records.len() > max_records as usize {
            return Err(format!(
                "the poll returned {} records, more than the {max_records} asked for",
                polled.records.len()
            ));
        }
        Ok(crate::bindings::Polled {
            records: encode(polled.records.iter()).map_err(|e| e.0)?,
            cursor: polled.cursor,
        })
    }
}
