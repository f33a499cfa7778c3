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
//! Not here yet: deploy and placement, executors per partition, kv persisted in a
//! compacted topic, dead-letter topics (see `docs/functions.md`).

mod host;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, Store};

pub use host::{LogLine, State};

/// How often the engine's epoch moves; call timeouts are counted in these ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The kinds of function (the worlds of `runnel:functions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Transform,
    Consumer,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Transform => "transform",
            Kind::Consumer => "consumer",
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
            stop_ticker,
        })
    }

    /// Validates and compiles a component of `kind`: its size, that it is a component,
    /// and that its imports and exports are those of the kind's world.
    pub fn compile(
        &self,
        kind: Kind,
        bytes: &[u8],
        limits: Limits,
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
        let component = Component::new(&self.engine, bytes).map_err(invalid)?;
        let linker = match kind {
            Kind::Transform => &self.transform,
            Kind::Consumer => &self.consumer,
        };
        let pre = linker.instantiate_pre(&component).map_err(invalid)?;
        let pre = host::Pre::new(kind, pre).map_err(invalid)?;
        Ok(Function {
            engine: self.engine.clone(),
            kind,
            pre,
            limits,
        })
    }
}

impl Drop for FunctionHost {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

/// A compiled component, ready to instantiate.
pub struct Function {
    engine: Engine,
    kind: Kind,
    pre: host::Pre,
    limits: Limits,
}

impl Function {
    /// The call timeout in epoch ticks (at least one).
    fn timeout_ticks(&self) -> u64 {
        let ticks = self.limits.call_timeout.as_millis() / EPOCH_TICK.as_millis();
        u64::try_from(ticks).unwrap_or(u64::MAX).max(1)
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// An instance for one partition, with the function's configuration and (restored)
    /// kv state.
    pub fn instantiate(
        &self,
        config: BTreeMap<String, String>,
        kv: BTreeMap<Vec<u8>, Vec<u8>>,
    ) -> Result<Instance<'_>, FunctionError> {
        let state = State::new(config, kv, self.limits);
        let mut instance = Instance {
            function: self,
            live: None,
            spare: Some(state),
        };
        instance.start()?;
        Ok(instance)
    }
}

/// An instance of a function; it outlives traps by starting afresh.
pub struct Instance<'f> {
    function: &'f Function,
    live: Option<(Store<State>, host::Bindings)>,
    /// The state of a poisoned instance, carried to the next one.
    spare: Option<State>,
}

impl Instance<'_> {
    fn start(&mut self) -> Result<(), FunctionError> {
        let state = self.spare.take().unwrap_or_default();
        let mut store = Store::new(&self.function.engine, state);
        store.limiter(|state| state.limits());
        // Instantiating runs the component's start code: it gets a call's time too.
        store.set_epoch_deadline(self.function.timeout_ticks());
        let bindings = self
            .function
            .pre
            .instantiate(&mut store)
            .map_err(|e| FunctionError::Trap(format!("{e:#}")))?;
        self.live = Some((store, bindings));
        Ok(())
    }

    /// Calls `process` on `batch` (batch encoding). A transform's outputs come back in
    /// the output encoding, checked; a consumer's are empty.
    pub fn process(&mut self, batch: &[u8]) -> Result<Vec<u8>, FunctionError> {
        if self.live.is_none() {
            self.start()?;
        }
        let timeout = self.function.limits.call_timeout;
        let Some((store, bindings)) = self.live.as_mut() else {
            return Err(FunctionError::Trap("no instance".to_string()));
        };
        store.set_epoch_deadline(self.function.timeout_ticks());
        let started = Instant::now();
        let result = bindings.process(store, batch);
        match result {
            Ok(Ok(outputs)) => {
                if self.function.kind == Kind::Transform {
                    runnel_abi::Outputs::parse(&outputs).map_err(FunctionError::BadOutput)?;
                }
                Ok(outputs)
            }
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
