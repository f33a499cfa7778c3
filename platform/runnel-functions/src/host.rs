//! The host side of the worlds: generated bindings, the store's state, and the host
//! interfaces a function imports (`log`, `config`, `kv`, `metrics`, `produce`), and for
//! connectors outgoing HTTP ([`crate::http`]).

use std::collections::{BTreeMap, VecDeque};

use wasmtime::component::{HasSelf, InstancePre, Linker, ResourceTable};
use wasmtime::{Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::Kind;
use crate::http::{HttpAccess, HttpHooks};

mod transform {
    wasmtime::component::bindgen!({
        world: "transform",
        path: "../../schemas/wit",
        // A set that would take the kv state past its limit traps the guest.
        imports: { "runnel:functions/kv.set": trappable },
    });
}

/// Bindings of a world whose shared interfaces are the transform bindings' ones, so one
/// `State` implements them for every world.
macro_rules! world_sharing_transform_imports {
    ($module:ident, $world:literal) => {
        mod $module {
            wasmtime::component::bindgen!({
                world: $world,
                path: "../../schemas/wit",
                with: {
                    "runnel:functions/log": super::transform::runnel::functions::log,
                    "runnel:functions/config": super::transform::runnel::functions::config,
                    "runnel:functions/kv": super::transform::runnel::functions::kv,
                    "runnel:functions/metrics": super::transform::runnel::functions::metrics,
                },
            });
        }
    };
}

world_sharing_transform_imports!(consumer, "consumer");
world_sharing_transform_imports!(sink, "sink");
world_sharing_transform_imports!(source, "source");

pub use source::Polled;
use transform::runnel::functions::{config, kv, log, metrics};

/// Log lines kept per instance until the executor collects them.
const MAX_LOG_LINES: usize = 1000;
/// The longest log line kept; longer ones are cut.
const MAX_LOG_LINE: usize = 4096;

/// One line a function logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub level: &'static str,
    pub message: String,
}

/// What a function's store holds.
pub struct State {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    hooks: HttpHooks,
    table: ResourceTable,
    limits: StoreLimits,
    config: BTreeMap<String, String>,
    /// The function's state for its partition.
    pub kv: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Bytes of keys and values in `kv`, and their limit.
    kv_bytes: usize,
    kv_limit: usize,
    /// Logged since last taken; the oldest lines go first when full.
    pub logs: VecDeque<LogLine>,
    pub counters: BTreeMap<String, u64>,
    pub gauges: BTreeMap<String, f64>,
    /// Output records a consumer sent, in the output encoding, one buffer per call.
    pub produced: Vec<Vec<u8>>,
    /// The values before the first change since the last [`State::take_kv_changes`] of
    /// every key changed since (`None`: it did not exist), to roll a failed batch back.
    kv_before: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl Default for State {
    fn default() -> Self {
        State::new(
            BTreeMap::new(),
            BTreeMap::new(),
            crate::Limits::default(),
            HttpAccess::none(),
        )
    }
}

impl State {
    pub(crate) fn new(
        config: BTreeMap<String, String>,
        kv: BTreeMap<Vec<u8>, Vec<u8>>,
        limits: crate::Limits,
        http: HttpAccess,
    ) -> State {
        let kv_bytes = kv.iter().map(|(k, v)| k.len() + v.len()).sum();
        State {
            // No files, sockets, environment or arguments: WASI's defaults only.
            wasi: WasiCtx::builder().build(),
            http: WasiHttpCtx::new(),
            hooks: HttpHooks {
                access: http,
                refused: Vec::new(),
                deadline: None,
            },
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new()
                .memory_size(limits.memory_bytes)
                .table_elements(1 << 20)
                .instances(16)
                .trap_on_grow_failure(true)
                .build(),
            config,
            kv,
            kv_bytes,
            kv_limit: limits.kv_bytes,
            logs: VecDeque::new(),
            counters: BTreeMap::new(),
            gauges: BTreeMap::new(),
            produced: Vec::new(),
            kv_before: BTreeMap::new(),
        }
    }

    /// The kv entries changed since the last call, with their values now (`None`:
    /// deleted), to persist; from here on they count as unchanged.
    pub fn take_kv_changes(&mut self) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        std::mem::take(&mut self.kv_before)
            .into_keys()
            .map(|key| {
                let value = self.kv.get(&key).cloned();
                (key, value)
            })
            .collect()
    }

    /// The bytes the kv changes since the last [`State::take_kv_changes`] would take in
    /// the state topic (keys and their values now).
    pub fn pending_kv_bytes(&self) -> usize {
        self.kv_before
            .keys()
            .map(|key| 64 + key.len() + self.kv.get(key).map_or(0, Vec::len))
            .sum()
    }

    /// Undoes every kv change since the last [`State::take_kv_changes`] (a batch that
    /// failed is retried from the state before it), and drops what it produced.
    pub fn roll_back(&mut self) {
        for (key, before) in std::mem::take(&mut self.kv_before) {
            if let Some(old) = self.kv.remove(&key) {
                self.kv_bytes -= key.len() + old.len();
            }
            if let Some(value) = before {
                self.kv_bytes += key.len() + value.len();
                self.kv.insert(key, value);
            }
        }
        self.produced.clear();
    }

    /// Remembers `key`'s value before its first change since the last take.
    fn note_change(&mut self, key: &[u8]) {
        if !self.kv_before.contains_key(key) {
            let before = self.kv.get(key).cloned();
            self.kv_before.insert(key.to_vec(), before);
        }
    }

    pub(crate) fn limits(&mut self) -> &mut StoreLimits {
        &mut self.limits
    }

    /// When the call about to start ends: its outgoing HTTP must be done by then.
    pub(crate) fn set_call_deadline(&mut self, deadline: std::time::Instant) {
        self.hooks.deadline = Some(deadline);
    }

    /// The outgoing HTTP requests refused since the last call, each with why.
    pub fn take_refused_requests(&mut self) -> Vec<String> {
        std::mem::take(&mut self.hooks.refused)
    }
}

impl WasiHttpView for State {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl log::Host for State {
    fn write(&mut self, level: log::Level, mut message: String) {
        if message.len() > MAX_LOG_LINE {
            let mut end = MAX_LOG_LINE;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        if self.logs.len() == MAX_LOG_LINES {
            self.logs.pop_front();
        }
        let level = match level {
            log::Level::Debug => "debug",
            log::Level::Info => "info",
            log::Level::Warn => "warn",
            log::Level::Error => "error",
        };
        self.logs.push_back(LogLine { level, message });
    }
}

impl config::Host for State {
    fn get(&mut self, key: String) -> Option<String> {
        self.config.get(&key).cloned()
    }

    fn all(&mut self) -> Vec<(String, String)> {
        self.config
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

impl kv::Host for State {
    fn get(&mut self, key: Vec<u8>) -> Option<Vec<u8>> {
        self.kv.get(&key).cloned()
    }

    fn set(&mut self, key: Vec<u8>, value: Vec<u8>) -> wasmtime::Result<()> {
        let replaced = self.kv.get(&key).map_or(0, |old| key.len() + old.len());
        let total = self.kv_bytes - replaced + key.len() + value.len();
        if total > self.kv_limit {
            return Err(wasmtime::Error::msg(format!(
                "the kv state would grow past its limit of {} bytes",
                self.kv_limit
            )));
        }
        self.note_change(&key);
        self.kv_bytes = total;
        self.kv.insert(key, value);
        Ok(())
    }

    fn delete(&mut self, key: Vec<u8>) {
        self.note_change(&key);
        if let Some(old) = self.kv.remove(&key) {
            self.kv_bytes -= key.len() + old.len();
        }
    }
}

impl metrics::Host for State {
    fn counter_add(&mut self, name: String, delta: u64) {
        let counter = self.counters.entry(name).or_default();
        *counter = counter.saturating_add(delta);
    }

    fn gauge_set(&mut self, name: String, value: f64) {
        self.gauges.insert(name, value);
    }
}

impl consumer::runnel::functions::produce::Host for State {
    fn send(&mut self, records: Vec<u8>) -> Result<(), String> {
        runnel_abi::Outputs::parse(&records).map_err(|e| format!("outputs do not decode: {e}"))?;
        self.produced.push(records);
        Ok(())
    }
}

/// Adds WASI and the imports of `kind`'s world to `linker`, and for connectors
/// `wasi:http`.
pub(crate) fn link(linker: &mut Linker<State>, kind: Kind) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_sync(linker)?;
    match kind {
        Kind::Transform => {
            transform::Transform::add_to_linker::<_, HasSelf<_>>(linker, |state| state)
        }
        Kind::Consumer => consumer::Consumer::add_to_linker::<_, HasSelf<_>>(linker, |state| state),
        Kind::Sink => {
            wasmtime_wasi_http::p2::add_only_http_to_linker_sync(linker)?;
            sink::Sink::add_to_linker::<_, HasSelf<_>>(linker, |state| state)
        }
        Kind::Source => {
            wasmtime_wasi_http::p2::add_only_http_to_linker_sync(linker)?;
            source::Source::add_to_linker::<_, HasSelf<_>>(linker, |state| state)
        }
    }
}

/// A compiled component checked against its world.
pub(crate) enum Pre {
    Transform(transform::TransformPre<State>),
    Consumer(consumer::ConsumerPre<State>),
    Sink(sink::SinkPre<State>),
    Source(source::SourcePre<State>),
}

impl Pre {
    pub(crate) fn new(kind: Kind, pre: InstancePre<State>) -> wasmtime::Result<Pre> {
        Ok(match kind {
            Kind::Transform => Pre::Transform(transform::TransformPre::new(pre)?),
            Kind::Consumer => Pre::Consumer(consumer::ConsumerPre::new(pre)?),
            Kind::Sink => Pre::Sink(sink::SinkPre::new(pre)?),
            Kind::Source => Pre::Source(source::SourcePre::new(pre)?),
        })
    }

    pub(crate) fn instantiate(&self, store: &mut Store<State>) -> wasmtime::Result<Bindings> {
        Ok(match self {
            Pre::Transform(pre) => Bindings::Transform(pre.instantiate(store)?),
            Pre::Consumer(pre) => Bindings::Consumer(pre.instantiate(store)?),
            Pre::Sink(pre) => Bindings::Sink(pre.instantiate(store)?),
            Pre::Source(pre) => Bindings::Source(pre.instantiate(store)?),
        })
    }
}

/// An instance's exports.
pub(crate) enum Bindings {
    Transform(transform::Transform),
    Consumer(consumer::Consumer),
    Sink(sink::Sink),
    Source(source::Source),
}

impl Bindings {
    /// `process` on `batch`: the transform's outputs, or nothing for a consumer or sink.
    pub(crate) fn process(
        &self,
        store: &mut Store<State>,
        batch: &[u8],
    ) -> wasmtime::Result<Result<Vec<u8>, String>> {
        match self {
            Bindings::Transform(bindings) => bindings.call_process(store, batch),
            Bindings::Consumer(bindings) => {
                Ok(bindings.call_process(store, batch)?.map(|()| Vec::new()))
            }
            Bindings::Sink(bindings) => {
                Ok(bindings.call_process(store, batch)?.map(|()| Vec::new()))
            }
            Bindings::Source(_) => Ok(Err("a source has no `process`".to_string())),
        }
    }

    /// A source's `poll`.
    pub(crate) fn poll(
        &self,
        store: &mut Store<State>,
        cursor: Option<&[u8]>,
        max_records: u32,
    ) -> wasmtime::Result<Result<Polled, String>> {
        match self {
            Bindings::Source(bindings) => bindings.call_poll(store, cursor, max_records),
            _ => Ok(Err("only a source has `poll`".to_string())),
        }
    }
}
