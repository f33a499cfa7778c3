//! The Wasm host of Runnel functions (DESIGN §5): compiles components of the
//! `runnel:functions` worlds (`schemas/wit`) once, instantiates them with limits, and calls
//! their `process` on batches in the batch encoding of `sdk/runnel-abi`.
//!
//! Containment, per instance:
//! - memory: at most [`Limits::memory_bytes`] of linear memory and tables; a guest that
//!   grows past it traps;
//! - time: each call gets [`Limits::call_timeout`], enforced by epoch interruption (a
//!   ticker thread moves the engine's epoch every [`EPOCH_TICK`]);
//! - size: a component larger than [`Limits::component_bytes`] is refused before
//!   compiling;
//! - state: a kv `set` that would take its keys and values past [`Limits::kv_bytes`] traps;
//! - capabilities: only the imports of its world and WASI without files, sockets or
//!   environment; a component that imports anything else fails at deploy.
//!
//! A call that traps or times out poisons its instance; the next call starts a fresh one
//! from the compiled component (tens of microseconds), keeping the function's kv state.
//!
//! Deployed functions: [`service::Functions`] stores components in the object store
//! ([`store`]), keeps specs in the metadata log and runs an executor per input partition
//! this node leads ([`executor`]), with kv state and progress in a compacted topic and
//! failed batches in a dead-letter topic (see `docs/functions.md`).

mod crash;
pub mod executor;
mod host;
pub mod http;
pub mod logs;
pub mod service;
mod source;
pub mod store;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, Store};

pub use host::{LogLine, Polled, State};
pub use http::HttpAccess;
pub use logs::{LogEntry, logs_topic_of};
pub use service::{
    Deploy, Description, Functions, FunctionsError, FunctionsSettings, PartitionState,
};
pub use store::{ComponentStore, ComponentStoreError};

/// How often the engine's epoch moves; call timeouts are counted in these ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The kinds of function (the worlds of `runnel:functions`): functions, and connectors
/// (sources and sinks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Transform,
    Consumer,
    Source,
    Sink,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Transform => "transform",
            Kind::Consumer => "consumer",
            Kind::Source => "source",
            Kind::Sink => "sink",
        }
    }

    /// Sources and sinks: they may import `wasi:http`.
    pub fn is_connector(self) -> bool {
        matches!(self, Kind::Source | Kind::Sink)
    }

    pub fn parse(name: &str) -> Option<Kind> {
        match name {
            "transform" => Some(Kind::Transform),
            "consumer" => Some(Kind::Consumer),
            "source" => Some(Kind::Source),
            "sink" => Some(Kind::Sink),
            _ => None,
        }
    }

    /// The host interfaces of the kind's world, every one grantable (`http`:
    /// `wasi:http/outgoing-handler`).
    pub fn interfaces(self) -> &'static [&'static str] {
        match self {
            Kind::Transform => &["log", "config", "kv", "metrics"],
            Kind::Consumer => &["log", "config", "kv", "metrics", "produce"],
            Kind::Source | Kind::Sink => &["log", "config", "kv", "metrics", "http"],
        }
    }
}

/// Resource limits of one function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Linear memory and tables of an instance.
    pub memory_bytes: usize,
    /// Time for one call of `process`.
    pub call_timeout: Duration,
    /// The largest component taken.
    pub component_bytes: usize,
    /// Keys and values of an instance's kv state; a set past it traps.
    pub kv_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 64 << 20,
            call_timeout: Duration::from_secs(1),
            component_bytes: 16 << 20,
            kv_bytes: 64 << 20,
        }
    }
}

/// Why a function could not be deployed or a call failed.
#[derive(Debug, thiserror::Error)]
pub enum FunctionError {
    #[error("the component is {size} bytes, more than the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    /// Not a component, or not one of this kind's world (a missing export, an import
    /// that is not granted).
    #[error("not a valid {kind} component: {reason}")]
    Invalid { kind: &'static str, reason: String },
    /// The function returned an error for the batch.
    #[error("the function failed: {0}")]
    Failed(String),
    #[error("the call took longer than {0:?}")]
    Timeout(Duration),
    #[error("the function trapped: {0}")]
    Trap(String),
    /// The function's outputs do not decode.
    #[error("the function returned outputs that do not decode: {0}")]
    BadOutput(runnel_abi::AbiError),
}

/// The engine and linkers, shared by every function of a node.
pub struct FunctionHost {
    engine: Engine,
    transform: Linker<State>,
    consumer: Linker<State>,
    source: Linker<State>,
    sink: Linker<State>,
    stop_ticker: Arc<AtomicBool>,
}

impl FunctionHost {
    pub fn new() -> wasmtime::Result<FunctionHost> {
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            // Component-model async is not used; with it on, every call costs ~3x more.
            .concurrency_support(false)
            .max_wasm_stack(1 << 20);
        let engine = Engine::new(&config)?;
        let mut transform = Linker::new(&engine);
        host::link(&mut transform, Kind::Transform)?;
        let mut consumer = Linker::new(&engine);
        host::link(&mut consumer, Kind::Consumer)?;
        let mut source = Linker::new(&engine);
        host::link(&mut source, Kind::Source)?;
        let mut sink = Linker::new(&engine);
        host::link(&mut sink, Kind::Sink)?;
        let stop_ticker = Arc::new(AtomicBool::new(false));
        let ticking = engine.weak();
        let stop = stop_ticker.clone();
        std::thread::Builder::new()
            .name("runnel-fn-epoch".to_string())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    match ticking.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => return,
                    }
                }
            })?;
        Ok(FunctionHost {
            engine,
            transform,
            consumer,
            source,
            sink,
            stop_ticker,
        })
    }

    /// Validates and compiles a component of `kind`: its size, that it is a component,
    /// and that its imports and exports are those of the kind's world. Every interface of
    /// the world is granted.
    pub fn compile(
        &self,
        kind: Kind,
        bytes: &[u8],
        limits: Limits,
    ) -> Result<Function, FunctionError> {
        self.compile_granted(kind, bytes, limits, kind.interfaces(), None)
    }

    /// As [`FunctionHost::compile`], with only the host interfaces in `grants` allowed (a
    /// component importing another is refused), and with the compiled form cached in
    /// `cache` (a directory) if given: a component compiled before by this build of the
    /// engine is loaded from there instead of compiled again.
    pub fn compile_granted(
        &self,
        kind: Kind,
        bytes: &[u8],
        limits: Limits,
        grants: &[&str],
        cache: Option<&Path>,
    ) -> Result<Function, FunctionError> {
        if bytes.len() > limits.component_bytes {
            return Err(FunctionError::TooLarge {
                size: bytes.len(),
                limit: limits.component_bytes,
            });
        }
        let invalid = |error: wasmtime::Error| FunctionError::Invalid {
            kind: kind.name(),
            reason: format!("{error:#}"),
        };
        if let Some(unknown) = grants.iter().find(|g| !kind.interfaces().contains(g)) {
            return Err(FunctionError::Invalid {
                kind: kind.name(),
                reason: format!(
                    "`{unknown}` is not an interface of the {} world (those are {})",
                    kind.name(),
                    kind.interfaces().join(", ")
                ),
            });
        }
        let component = match cache {
            Some(dir) => self.compile_cached(bytes, dir).map_err(invalid)?,
            None => Component::new(&self.engine, bytes).map_err(invalid)?,
        };
        check_grants(&self.engine, &component, kind, grants)?;
        let linker = match kind {
            Kind::Transform => &self.transform,
            Kind::Consumer => &self.consumer,
            Kind::Source => &self.source,
            Kind::Sink => &self.sink,
        };
        let pre = linker.instantiate_pre(&component).map_err(invalid)?;
        let pre = host::Pre::new(kind, pre).map_err(invalid)?;
        Ok(Function {
            compiled: Arc::new(Compiled {
                engine: self.engine.clone(),
                kind,
                pre,
                limits,
            }),
        })
    }

    /// The component from the cache in `dir`, or compiled and then stored there. The
    /// cache key is the component's SHA-256 and the engine's compatibility hash, so a
    /// file is only ever loaded by an engine that can run what it holds.
    fn compile_cached(&self, bytes: &[u8], dir: &Path) -> wasmtime::Result<Component> {
        use std::hash::{Hash as _, Hasher as _};
        let mut engine_hash = std::collections::hash_map::DefaultHasher::new();
        self.engine
            .precompile_compatibility_hash()
            .hash(&mut engine_hash);
        let name = format!("{}-{:016x}.cwasm", digest(bytes), engine_hash.finish());
        let path = dir.join(name);
        if path.exists() {
            // SAFETY: the file was written by `Component::serialize` of an engine with the
            // same compatibility hash (it is in the name), into the node's own data
            // directory, and renamed into place only once complete.
            match unsafe { Component::deserialize_file(&self.engine, &path) } {
                Ok(component) => return Ok(component),
                Err(error) => {
                    tracing::warn!(path = %path.display(), error = %format!("{error:#}"), "a cached compiled component does not load; compiling again");
                }
            }
        }
        let component = Component::new(&self.engine, bytes)?;
        let serialized = component.serialize()?;
        let stored = std::fs::create_dir_all(dir).and_then(|()| {
            let partial = path.with_extension("partial");
            std::fs::write(&partial, &serialized)?;
            std::fs::rename(&partial, &path)
        });
        if let Err(error) = stored {
            tracing::warn!(path = %path.display(), %error, "cannot cache a compiled component");
        }
        Ok(component)
    }
}

/// The SHA-256 of `bytes`, in hex: a component's name in the object store and the cache.
pub fn digest(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    use std::fmt::Write as _;
    let hash = sha2::Sha256::digest(bytes);
    let mut hex = String::with_capacity(64);
    for byte in hash {
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

/// Refuses a component that imports a host interface of `runnel:functions` not in
/// `grants`, or `wasi:http` without the grant `http`.
fn check_grants(
    engine: &Engine,
    component: &Component,
    kind: Kind,
    grants: &[&str],
) -> Result<(), FunctionError> {
    for (name, _) in component.component_type().imports(engine) {
        let interface = if name.starts_with("wasi:http/") {
            "http"
        } else if let Some(interface) = name.strip_prefix("runnel:functions/") {
            interface.split('@').next().unwrap_or(interface)
        } else {
            continue;
        };
        if !grants.contains(&interface) {
            return Err(FunctionError::Invalid {
                kind: kind.name(),
                reason: format!(
                    "it imports `{name}`, which was not granted (granted: {})",
                    if grants.is_empty() {
                        "nothing".to_string()
                    } else {
                        grants.join(", ")
                    }
                ),
            });
        }
    }
    Ok(())
}

impl Drop for FunctionHost {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

/// A compiled component, ready to instantiate; cheap to clone.
#[derive(Clone)]
pub struct Function {
    compiled: Arc<Compiled>,
}

struct Compiled {
    engine: Engine,
    kind: Kind,
    pre: host::Pre,
    limits: Limits,
}

impl Compiled {
    /// The call timeout in epoch ticks (at least one).
    fn timeout_ticks(&self) -> u64 {
        let ticks = self.limits.call_timeout.as_millis() / EPOCH_TICK.as_millis();
        u64::try_from(ticks).unwrap_or(u64::MAX).max(1)
    }
}

impl Function {
    pub fn kind(&self) -> Kind {
        self.compiled.kind
    }

    /// An instance for one partition, with the function's configuration and (restored)
    /// kv state, and no outgoing HTTP.
    pub fn instantiate(
        &self,
        config: BTreeMap<String, String>,
        kv: BTreeMap<Vec<u8>, Vec<u8>>,
    ) -> Result<Instance, FunctionError> {
        self.instantiate_with(config, kv, HttpAccess::none())
    }

    /// As [`Function::instantiate`], with outgoing HTTP as `http` allows (connectors).
    pub fn instantiate_with(
        &self,
        config: BTreeMap<String, String>,
        kv: BTreeMap<Vec<u8>, Vec<u8>>,
        http: HttpAccess,
    ) -> Result<Instance, FunctionError> {
        let state = State::new(config, kv, self.compiled.limits, http);
        let mut instance = Instance {
            function: self.compiled.clone(),
            live: None,
            spare: Some(state),
        };
        instance.start()?;
        Ok(instance)
    }
}

/// An instance of a function; it outlives traps by starting afresh.
pub struct Instance {
    function: Arc<Compiled>,
    live: Option<(Store<State>, host::Bindings)>,
    /// The state of a poisoned instance, carried to the next one.
    spare: Option<State>,
}

impl Instance {
    /// An instance of the same function that is not started: it holds an executor's
    /// place while the real one is out on a blocking thread.
    pub(crate) fn placeholder(&self) -> Instance {
        Instance {
            function: self.function.clone(),
            live: None,
            spare: None,
        }
    }

    fn start(&mut self) -> Result<(), FunctionError> {
        let state = self.spare.take().unwrap_or_default();
        let mut store = Store::new(&self.function.engine, state);
        store.limiter(|state| state.limits());
        // Instantiating runs the component's start code: it gets a call's time too.
        store.set_epoch_deadline(self.function.timeout_ticks());
        match self.function.pre.instantiate(&mut store) {
            Ok(bindings) => {
                self.live = Some((store, bindings));
                Ok(())
            }
            Err(error) => {
                // The state (config, kv, allow-list) waits for the next attempt.
                self.spare = Some(store.into_data());
                Err(FunctionError::Trap(format!("{error:#}")))
            }
        }
    }

    /// Calls `process` on `batch` (batch encoding). A transform's outputs come back in
    /// the output encoding, checked; a consumer's or sink's are empty.
    pub fn process(&mut self, batch: &[u8]) -> Result<Vec<u8>, FunctionError> {
        let outputs = self.call(|store, bindings| bindings.process(store, batch))?;
        if self.function.kind == Kind::Transform {
            runnel_abi::Outputs::parse(&outputs).map_err(FunctionError::BadOutput)?;
        }
        Ok(outputs)
    }

    /// Calls a source's `poll`: its records (output encoding, checked) and its new
    /// cursor.
    pub fn poll(
        &mut self,
        cursor: Option<&[u8]>,
        max_records: u32,
    ) -> Result<Polled, FunctionError> {
        let polled = self.call(|store, bindings| bindings.poll(store, cursor, max_records))?;
        runnel_abi::Outputs::parse(&polled.records).map_err(FunctionError::BadOutput)?;
        Ok(polled)
    }

    /// One call of an export, with the call timeout; a trap poisons the instance.
    fn call<T>(
        &mut self,
        call: impl FnOnce(&mut Store<State>, &host::Bindings) -> wasmtime::Result<Result<T, String>>,
    ) -> Result<T, FunctionError> {
        if self.live.is_none() {
            self.start()?;
        }
        let timeout = self.function.limits.call_timeout;
        let Some((store, bindings)) = self.live.as_mut() else {
            return Err(FunctionError::Trap("no instance".to_string()));
        };
        store.set_epoch_deadline(self.function.timeout_ticks());
        let started = Instant::now();
        // Epochs do not interrupt the host while it waits on HTTP: the deadline does.
        store.data_mut().set_call_deadline(started + timeout);
        let result = call(store, bindings);
        match result {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(message)) => Err(FunctionError::Failed(message)),
            Err(error) => {
                // A trapped instance cannot be entered again: keep its state, drop it.
                if let Some((store, _)) = self.live.take() {
                    self.spare = Some(store.into_data());
                }
                let timed_out = error
                    .downcast_ref::<wasmtime::Trap>()
                    .is_some_and(|trap| *trap == wasmtime::Trap::Interrupt);
                if timed_out {
                    tracing::debug!(elapsed = ?started.elapsed(), "a function call timed out");
                    Err(FunctionError::Timeout(timeout))
                } else {
                    Err(FunctionError::Trap(format!("{error:#}")))
                }
            }
        }
    }

    /// The function's state as of now (its kv entries, log lines, metrics); `None` only
    /// if a fresh instance could not be started.
    pub fn state(&mut self) -> Option<&mut State> {
        match (&mut self.live, &mut self.spare) {
            (Some((store, _)), _) => Some(store.data_mut()),
            (None, spare) => spare.as_mut(),
        }
    }
}
