//! The WebAssembly sandbox: everything expensive is built once (engine,
//! linker, one pre-instantiated component per handler, the epoch ticker), and
//! each event gets a fresh instance with a deadline and a memory cap, called
//! on the async task that delivers the event ([`LoadedHandler::invoke`]); a
//! handler configured with `batch` gets one fresh instance per call of
//! `handle-batch` instead ([`LoadedHandler::invoke_batch`]).
//!
//! A handler cannot hurt the host: a trap, a timeout or a memory grab ends its
//! instance and becomes a [`Outcome::Retry`], logged with the event id; it
//! yields to other tasks at every epoch tick; and it reaches nothing its
//! manifest does not grant ([`Grants`]).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use wasmtime::component::{
    Component, ComponentExportIndex, ComponentType, Func, HasSelf, Linker, Lower, ResourceTable, TypedFunc,
};
use wasmtime::{
    Cache, CacheConfig, Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap,
    UpdateDeadline,
};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::config;
use crate::event::{DeliveryInfo, Event};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../sdk/wit",
        world: "handler",
        // `handle` runs on the delivery's own task. `kv` waits for a store
        // (a Redis round trip, an fsync), so it is async: the instance is
        // suspended meanwhile and the worker thread runs other tasks. The
        // other gridfn imports answer at once and stay synchronous.
        imports: { "gridfn:handler/kv": async },
        exports: { default: async },
    });

    /// The `batch-handler` world: `handle-batch` besides `handle`, over the
    /// very same imports (and their `Host` implementations below).
    pub mod batch {
        wasmtime::component::bindgen!({
            path: "../sdk/wit",
            world: "batch-handler",
            with: { "gridfn:handler": super::gridfn::handler },
            exports: { default: async },
        });
    }
}

use bindings::gridfn::handler::{
    config as config_capability, kv as kv_capability, log, publish as publish_capability, types as wit,
};

use crate::kv::{self, KvStore, KvWrites};
use crate::outbound::{AllowedHost, OutboundPolicy};
use crate::publish::{Draft, Outbox, Published, Refused};

/// How often the deadline clock ticks: deadlines are rounded up to it, and a
/// running handler yields to the other tasks on its thread at every tick (so
/// a spinning handler delays its neighbours by at most this much).
const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Concurrent instances the pooling allocator reserves room for.
pub const MAX_INSTANCES: u32 = 256;

/// Bytes of log output (log import plus stdout/stderr) kept per event; the
/// rest is counted and dropped, so a chatty handler cannot flood the host log.
const LOG_BUDGET: usize = 64 * 1024;

/// What a handler made of an event (or what gridfn made of its failure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// Transient: run it again later, no sooner than `after` if given.
    Retry {
        reason: String,
        after: Option<Duration>,
    },
    /// Permanent: dead-letter it.
    Reject {
        reason: String,
    },
}

/// One call of a handler: its outcome, and the events it published (to be
/// sent only if the outcome is success).
#[derive(Debug)]
pub struct Invocation {
    pub outcome: Outcome,
    pub published: Vec<Published>,
    /// Its kv writes, to apply when the pair is recorded; empty unless the
    /// outcome is final (success or rejection): a retried run leaves none.
    pub writes: KvWrites,
    /// How long creating a fresh instance took; `None` when a warm one ran
    /// it (or none could be created).
    pub instantiation: Option<Duration>,
}

impl Invocation {
    /// A call that never got to run the handler.
    pub fn failed(outcome: Outcome) -> Self {
        Invocation { outcome, published: Vec::new(), writes: KvWrites::default(), instantiation: None }
    }
}

/// One call of `handle-batch`: an outcome per event given, in order.
#[derive(Debug)]
pub struct BatchInvocation {
    pub outcomes: Vec<Outcome>,
    /// The call's kv writes, to apply with the first of its events that is
    /// recorded done; empty when the call ended without outcomes (trap,
    /// timeout, a wrong number of them).
    pub writes: KvWrites,
    /// How long creating its fresh instance took; `None` when none could be.
    pub instantiation: Option<Duration>,
}

impl BatchInvocation {
    /// A call that ended without an outcome per event: each of its `events`
    /// is retried, for the same `reason`.
    pub fn failed(events: usize, reason: String, instantiation: Option<Duration>) -> Self {
        let retry = Outcome::Retry { reason, after: None };
        BatchInvocation { outcomes: vec![retry; events], writes: KvWrites::default(), instantiation }
    }
}

/// The package every version of the contract is in.
const CONTRACT: &str = "gridfn:handler";

/// What a component implements of the contract, as `gridfn check` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contract {
    /// The `gridfn:handler` version its imports name (e.g. `0.1.0`); `None`
    /// when it imports nothing from the contract.
    pub version: Option<String>,
    /// Its top-level exports, e.g. `handle`, `handle-batch`.
    pub exports: Vec<String>,
}

/// The engine and linker shared by every handler.
pub struct Sandbox {
    engine: Engine,
    linker: Linker<HostState>,
    /// Storage for handlers granted `kv`.
    kv: Option<Arc<dyn KvStore>>,
    ticker: EpochTicker,
}

/// What a handler's manifest grants it, beyond WASI with nothing in it.
/// Everything else is denied: `config` answers `none`, `kv` and `publish`
/// answer `denied`, `wasi:http` answers `HTTP-request-denied`.
#[derive(Default)]
pub struct Grants {
    /// `capabilities.config`: values it may read.
    pub config: Option<HashMap<String, String>>,
    /// `capabilities.kv`: its key space.
    pub kv: Option<Arc<dyn KvStore>>,
    /// `capabilities.log`: whether its log calls, stdout and stderr reach
    /// the host log.
    pub log: bool,
    /// `capabilities.allowed_outbound_hosts`: where `wasi:http` may go.
    pub outbound: Arc<[AllowedHost]>,
    /// `capabilities.publish`: whether it may publish (where to is the
    /// delivery path's business).
    pub publish: bool,
}

/// One version of a handler, compiled and linked, ready to instantiate per
/// event.
pub struct LoadedHandler {
    pub name: Arc<str>,
    /// Short SHA-256 of the module.
    pub version: String,
    /// Where the module came from: its path, or `deploy`.
    pub source: String,
    grants: Arc<Grants>,
    pub loaded_at: chrono::DateTime<chrono::Utc>,
    pre: bindings::HandlerPre<HostState>,
    /// Its `handle` export, called with the event borrowed ([`EventRef`]).
    handle: ComponentExportIndex,
    /// Its `handle-batch` export, when `batch` is set.
    handle_batch: Option<ComponentExportIndex>,
    /// The same component seen as a `batch-handler`, when the manifest sets
    /// `batch` (loading fails if it does not export `handle-batch`).
    batch: Option<bindings::batch::BatchHandlerPre<HostState>>,
    /// What it implements, for `gridfn check`.
    pub contract: Contract,
    timeout: Duration,
    memory: usize,
    fuel: Option<u64>,
    /// Events one instance may serve in sequence (1: a fresh instance each).
    reuse: u32,
    /// Ticks while this handler runs.
    clock: Arc<Clock>,
    /// Instances kept between events when `reuse` > 1; one is never used by
    /// two events at once, and is dropped after any failure or retry.
    warm: Mutex<Vec<Instance>>,
}

/// A live instance and what it needs between calls.
struct Instance {
    store: Store<HostState>,
    /// Its `handle`, type-checked against [`Handle`] when instantiated.
    handle: Func,
    output: CapturedOutput,
    served: u32,
}

impl Sandbox {
    /// Builds the engine: pooling allocator sized for `max_memory` per
    /// instance (falling back to on-demand allocation where the machine
    /// refuses the reservation), epoch deadlines, and a compile cache in
    /// `cache_dir` so restarts skip compilation.
    pub fn new(
        max_memory: usize,
        fuel: bool,
        cache_dir: &Path,
        kv: Option<Arc<dyn KvStore>>,
    ) -> anyhow::Result<Sandbox> {
        let mut config = Config::new();
        // Handlers run on the async tasks that deliver their events (no
        // hand-off to another thread per event); a long call yields to the
        // executor at every epoch tick.
        config.epoch_interruption(true);
        // Fuel metering slows every call a little, so only when some handler asks for it.
        config.consume_fuel(fuel);
        std::fs::create_dir_all(cache_dir)
            .with_context(|| format!("creating the compile cache {}", cache_dir.display()))?;
        let cache_dir = std::path::absolute(cache_dir)?;
        let cache = Cache::new(CacheConfig::new().with_directory(cache_dir).clone())
            .map_err(|e| anyhow!("setting up the compile cache: {e}"))?;
        config.cache(Some(cache));

        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(MAX_INSTANCES)
            // A Rust component instantiates 3 core modules, a Python one
            // (componentize-py: CPython, libc and their shims) 14: room for
            // MAX_INSTANCES of either.
            .total_core_instances(MAX_INSTANCES * 16)
            .total_memories(MAX_INSTANCES * 2)
            .total_tables(MAX_INSTANCES * 4)
            .max_memory_size(max_memory)
            // Keeping the first pages of a slot resident spares fresh
            // instances the page faults that dominate a short call.
            .linear_memory_keep_resident(4 << 20)
            .table_keep_resident(64 << 10)
            // Where the kernel can say which pages an instance dirtied (Linux
            // 6.7+), only those are reset, not the whole kept-resident prefix.
            .pagemap_scan(wasmtime::Enabled::Auto);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = match Engine::new(&config) {
            Ok(engine) => engine,
            Err(e) => {
                tracing::warn!("pooling allocator unavailable ({e}); allocating instances on demand");
                config.allocation_strategy(InstanceAllocationStrategy::OnDemand);
                Engine::new(&config).map_err(|e| anyhow!("creating the wasmtime engine: {e}"))?
            }
        };

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|e| anyhow!("linking WASI: {e}"))?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(|e| anyhow!("linking wasi:http: {e}"))?;
        bindings::Handler::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)
            .map_err(|e| anyhow!("linking the gridfn imports: {e}"))?;

        let ticker = EpochTicker::start(engine.clone());
        Ok(Sandbox { engine, linker, kv, ticker })
    }

    /// The sandbox `manifest`'s handlers need: memory for the largest, fuel
    /// metering if any asks for it, its compile cache.
    pub fn for_manifest(manifest: &config::Manifest, kv: Option<Arc<dyn KvStore>>) -> anyhow::Result<Sandbox> {
        let max_memory = manifest.handlers.iter().map(|h| h.memory).max().unwrap_or(64 << 20);
        let fuel = manifest.handlers.iter().any(|h| h.fuel.is_some());
        Sandbox::new(max_memory, fuel, &manifest.server.cache_dir, kv)
    }

    /// Compiles a handler's component from its manifest path (or takes it
    /// from the cache) and checks that it implements the `gridfn:handler` world.
    pub fn load(&self, handler: &config::Handler) -> anyhow::Result<LoadedHandler> {
        let bytes = std::fs::read(&handler.module)
            .map_err(|e| anyhow!("handler {}: cannot read {}: {e}", handler.name, handler.module.display()))?;
        self.load_bytes(handler, &bytes, &handler.module.display().to_string())
    }

    /// Compiles `bytes` as a version of `handler`; `source` says where it
    /// came from, for listings and errors. CPU-heavy on a cache miss: call it
    /// from a blocking thread when serving.
    pub fn load_bytes(&self, handler: &config::Handler, bytes: &[u8], source: &str) -> anyhow::Result<LoadedHandler> {
        let component = Component::new(&self.engine, bytes)
            .map_err(|e| anyhow!("handler {}: {source} is not a WebAssembly component: {e:#}", handler.name))?;
        let instance_pre = self.linker.instantiate_pre(&component).map_err(|e| {
            anyhow!(
                "handler {}: {source} does not fit gridfn's handler contract (gridfn:handler@0.1): {e:#}",
                handler.name
            )
        })?;
        let batch = match handler.batch {
            None => None,
            Some(_) => Some(bindings::batch::BatchHandlerPre::new(instance_pre.clone()).map_err(|e| {
                anyhow!(
                    "handler {}: the manifest sets `batch` but {source} does not export `handle-batch` \
                     (gridfn:handler@0.1.1's batch-handler world; Rust: gridfn_sdk::export_batch_handler!): {e:#}",
                    handler.name
                )
            })?),
        };
        let export = |name: &str| component.get_export_index(None, name);
        let handle = export("handle").expect("HandlerPre::new below checks that `handle` is exported");
        let handle_batch = batch.as_ref().and_then(|_| export("handle-batch"));
        let pre = bindings::HandlerPre::new(instance_pre).map_err(|e| {
            anyhow!("handler {}: {source} does not export `handle` from gridfn:handler@0.1: {e:#}", handler.name)
        })?;
        let grants = Grants {
            config: handler.capabilities.config.clone(),
            kv: if handler.capabilities.kv { self.kv.clone() } else { None },
            log: handler.capabilities.log,
            outbound: handler.capabilities.allowed_outbound_hosts.clone().into(),
            publish: handler.capabilities.publish.is_some(),
        };
        Ok(LoadedHandler {
            name: handler.name.as_str().into(),
            grants: Arc::new(grants),
            version: version_of(bytes),
            source: source.to_owned(),
            loaded_at: chrono::Utc::now(),
            contract: contract_of(&self.engine, &component),
            pre,
            handle,
            handle_batch,
            batch,
            timeout: handler.timeout,
            memory: handler.memory,
            fuel: handler.fuel,
            reuse: handler.instance_reuse,
            clock: self.ticker.clock.clone(),
            warm: Mutex::new(Vec::new()),
        })
    }
}

impl std::fmt::Display for Contract {
    /// `gridfn:handler@0.1.1, exports handle, handle-batch`
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.version {
            Some(version) => write!(f, "{CONTRACT}@{version}")?,
            None => write!(f, "{CONTRACT} (no version imported)")?,
        }
        write!(f, ", exports {}", self.exports.join(", "))
    }
}

/// The contract version a component's imports name, and its exports.
fn contract_of(engine: &Engine, component: &Component) -> Contract {
    let ty = component.component_type();
    let version = ty
        .imports(engine)
        .filter_map(|(name, _)| name.strip_prefix(CONTRACT)?.strip_prefix('/')?.split_once('@'))
        .map(|(_, version)| version.to_owned())
        .max();
    let exports = ty.exports(engine).map(|(name, _)| name.to_owned()).collect();
    Contract { version, exports }
}

/// A module's version: the start of its SHA-256, as `gridfn handlers` shows it.
pub fn version_of(bytes: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(bytes);
    digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

impl LoadedHandler {
    /// The handler's deadline per event.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Runs one event: in a fresh instance, or a warm one when the handler
    /// opted into reuse. Takes up to the handler's timeout, yielding to the
    /// executor every epoch tick.
    pub async fn invoke(&self, event: &Event, delivery: &DeliveryInfo) -> Invocation {
        let _running = self.clock.start_running();
        let warm = self.warm.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut instantiation = None;
        let instance = match warm {
            Some(instance) => Ok(instance),
            None => {
                let started = Instant::now();
                let instance = self.instantiate().await;
                instantiation = Some(started.elapsed());
                instance
            }
        };
        let mut instance = match instance {
            Ok(instance) => instance,
            Err(error) => {
                let reason = format!("handler failed to start: {error:?}");
                return Invocation::failed(Outcome::Retry { reason, after: None });
            }
        };
        instance.store.data_mut().start_event(&event.id, Instant::now() + self.timeout);
        instance.store.set_epoch_deadline(1);
        if let Some(fuel) = self.fuel {
            instance.store.set_fuel(fuel).expect("fuel is enabled when a handler sets it");
        }
        // SAFETY: `instantiate` checked `handle` against this very type.
        let handle: Handle<'_> = unsafe { TypedFunc::new_unchecked(instance.handle) };
        let result = handle
            .call_async(&mut instance.store, (EventRef::from(event), self.delivery_ref(delivery)))
            .await
            .map(|(outcome,)| outcome);
        instance.output.flush_to_log(&instance.store.data().log);
        instance.served += 1;
        let outcome = match result {
            Ok(outcome) => from_wit_outcome(outcome),
            // The delivery path logs it with the event id.
            Err(error) => {
                Outcome::Retry { reason: self.failure_reason(&error, &instance.store.data().memory), after: None }
            }
        };
        let published = std::mem::take(&mut instance.store.data_mut().outbox.events);
        let published = if outcome == Outcome::Success { published } else { Vec::new() };
        let healthy = matches!(outcome, Outcome::Success | Outcome::Reject { .. });
        let writes = std::mem::take(&mut instance.store.data_mut().writes);
        let writes = if healthy { writes } else { KvWrites::default() };
        if healthy && instance.served < self.reuse {
            instance.store.data_mut().outbox = Outbox::default();
            self.warm.lock().unwrap_or_else(|e| e.into_inner()).push(instance);
        }
        Invocation { outcome, published, writes, instantiation }
    }

    /// Runs `events` in one call of `handle-batch`, in a fresh instance, with
    /// the handler's timeout for the whole call: one outcome per event, in
    /// order. A trap, a timeout, or an answer with the wrong number of
    /// outcomes retries every event of the call. Only for a handler whose
    /// manifest sets `batch`.
    pub async fn invoke_batch(&self, events: &[Arc<Event>], delivery: &DeliveryInfo) -> BatchInvocation {
        let pre = self.batch.as_ref().expect("handle-batch is called only for handlers loaded with `batch`");
        let _running = self.clock.start_running();
        let started = Instant::now();
        let instance = self.instantiate_batch(pre).await;
        let instantiation = Some(started.elapsed());
        let (mut store, output, handler) = match instance {
            Ok(instance) => instance,
            Err(error) => {
                let reason = format!("handler failed to start: {error:?}");
                return BatchInvocation::failed(events.len(), reason, instantiation);
            }
        };
        store.data_mut().start_event(&batch_label(events), Instant::now() + self.timeout);
        store.set_epoch_deadline(1);
        if let Some(fuel) = self.fuel {
            // `fuel` is per event.
            store.set_fuel(fuel.saturating_mul(events.len() as u64)).expect("fuel is enabled when a handler sets it");
        }
        let events_ref: Vec<EventRef> = events.iter().map(|event| EventRef::from(&**event)).collect();
        // SAFETY: `instantiate_batch` checked `handle_batch` against this very type.
        let handler: HandleBatch<'_> = unsafe { TypedFunc::new_unchecked(handler) };
        let result = handler
            .call_async(&mut store, (&events_ref, self.delivery_ref(delivery)))
            .await
            .map(|(outcomes,)| outcomes);
        output.flush_to_log(&store.data().log);
        match result {
            Ok(outcomes) if outcomes.len() == events.len() => BatchInvocation {
                outcomes: outcomes.into_iter().map(from_wit_outcome).collect(),
                writes: std::mem::take(&mut store.data_mut().writes),
                instantiation,
            },
            Ok(outcomes) => {
                let reason = format!("handle-batch answered {} outcomes for {} events", outcomes.len(), events.len());
                tracing::error!(handler = %self.name, "{reason}; every event of the call will be retried");
                BatchInvocation::failed(events.len(), reason, instantiation)
            }
            // The delivery path logs it with each event id.
            Err(error) => {
                let reason = self.failure_reason(&error, &store.data().memory);
                BatchInvocation::failed(events.len(), reason, instantiation)
            }
        }
    }

    /// A fresh instance of the `batch-handler` world.
    async fn instantiate_batch(
        &self,
        pre: &bindings::batch::BatchHandlerPre<HostState>,
    ) -> wasmtime::Result<(Store<HostState>, CapturedOutput, Func)> {
        let (mut store, output) = self.new_store()?;
        let instance = pre.instance_pre().instantiate_async(&mut store).await?;
        let index = self.handle_batch.as_ref().expect("found at load for a handler with `batch`");
        // The type check that makes `invoke_batch`'s unchecked `HandleBatch` sound.
        let handle_batch: HandleBatch<'_> = instance.get_typed_func(&mut store, index)?;
        Ok((store, output, *handle_batch.func()))
    }

    /// A fresh instance of `handle`'s world.
    async fn instantiate(&self) -> wasmtime::Result<Instance> {
        let (mut store, output) = self.new_store()?;
        let instance = self.pre.instance_pre().instantiate_async(&mut store).await?;
        // The type check that makes `invoke`'s unchecked `Handle` sound.
        let handle: Handle<'_> = instance.get_typed_func(&mut store, self.handle)?;
        Ok(Instance { store, handle: *handle.func(), output, served: 0 })
    }

    /// A fresh store: WASI with nothing granted, stdout and stderr captured
    /// for the log, the memory cap and the deadline installed.
    fn new_store(&self) -> wasmtime::Result<(Store<HostState>, CapturedOutput)> {
        let output = CapturedOutput::default();
        let wasi = WasiCtx::builder().stdout(output.clone()).stderr(output.clone()).build();
        let state = HostState {
            wasi,
            table: ResourceTable::new(),
            memory: MemoryCap { limit: self.memory, exceeded: false },
            log: GuestLog {
                handler: self.name.clone(),
                event_id: String::new(),
                allowance: if self.grants.log { LOG_BUDGET } else { 0 },
                budget: 0,
            },
            http: WasiHttpCtx::new(),
            outbound: OutboundPolicy {
                allowed: self.grants.outbound.clone(),
                handler: self.name.clone(),
                deadline: Instant::now() + self.timeout,
            },
            outbox: Outbox::default(),
            writes: KvWrites::new(self.name.clone()),
            deadline: Instant::now() + self.timeout,
            grants: self.grants.clone(),
        };
        let mut store = Store::new(self.pre.engine(), state);
        store.limiter(|state| &mut state.memory);
        // At every tick: past the deadline, stop; otherwise let other tasks run.
        store.epoch_deadline_callback(|store| match Instant::now() >= store.data().deadline {
            true => Ok(UpdateDeadline::Interrupt),
            // tokio's own yield: to the back of the queue, not the LIFO slot,
            // so a spinning handler cannot starve the tasks beside it.
            false => Ok(UpdateDeadline::YieldCustom(1, Box::pin(tokio::task::yield_now()))),
        });
        store.set_epoch_deadline(1);
        if let Some(fuel) = self.fuel {
            store.set_fuel(fuel)?;
        }
        Ok((store, output))
    }

    /// Says why an instance failed, in words a handler author can act on.
    fn failure_reason(&self, error: &wasmtime::Error, memory: &MemoryCap) -> String {
        if memory.exceeded {
            return format!("handler exceeded its memory limit of {} MiB", self.memory >> 20);
        }
        match error.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => {
                format!("handler timed out after {}", humantime::format_duration(self.timeout))
            }
            Some(Trap::OutOfFuel) => format!("handler ran out of fuel ({} units)", self.fuel.unwrap_or_default()),
            _ => format!("handler trapped: {error:?}"),
        }
    }

    fn delivery_ref<'a>(&'a self, delivery: &'a DeliveryInfo) -> DeliveryRef<'a> {
        DeliveryRef {
            attempt: delivery.attempt,
            handler: &self.name,
            subscription: delivery.subscription.as_deref(),
            replay: delivery.replay,
        }
    }
}

/// How a batch call's log lines name its events: `first…last (n events)`.
fn batch_label(events: &[Arc<Event>]) -> String {
    match events {
        [] => String::new(),
        [only] => only.id.clone(),
        [first, .., last] => format!("{}…{} ({} events)", first.id, last.id, events.len()),
    }
}

/// `gridfn:handler/types.event`, borrowed from the host's [`Event`]: the
/// call lowers it into the instance's memory straight from there, with no
/// owned copy per call. Field for field the WIT record (wasmtime checks the
/// names and types against the component's at each instantiation).
#[derive(ComponentType, Lower)]
#[component(record)]
struct EventRef<'a> {
    id: &'a str,
    #[component(name = "event-type")]
    event_type: &'a str,
    source: &'a str,
    subject: Option<&'a str>,
    time: Option<&'a str>,
    #[component(name = "data-content-type")]
    data_content_type: Option<&'a str>,
    #[component(name = "data-version")]
    data_version: Option<&'a str>,
    data: &'a [u8],
    extensions: &'a [(String, String)],
}

impl<'a> From<&'a Event> for EventRef<'a> {
    fn from(event: &'a Event) -> Self {
        EventRef {
            id: &event.id,
            event_type: &event.event_type,
            source: &event.source,
            subject: event.subject.as_deref(),
            time: event.time.as_deref(),
            data_content_type: event.data_content_type.as_deref(),
            data_version: event.data_version.as_deref(),
            data: &event.data,
            extensions: &event.extensions,
        }
    }
}

/// `gridfn:handler/types.delivery`, borrowed like [`EventRef`].
#[derive(ComponentType, Lower)]
#[component(record)]
struct DeliveryRef<'a> {
    attempt: u32,
    handler: &'a str,
    subscription: Option<&'a str>,
    replay: bool,
}

/// `handle: func(event, delivery) -> outcome`, with borrowed arguments.
type Handle<'a> = TypedFunc<(EventRef<'a>, DeliveryRef<'a>), (wit::Outcome,)>;

/// `handle-batch: func(list<event>, delivery) -> list<outcome>`, likewise.
type HandleBatch<'a> = TypedFunc<(&'a [EventRef<'a>], DeliveryRef<'a>), (Vec<wit::Outcome>,)>;

fn from_wit_outcome(outcome: wit::Outcome) -> Outcome {
    match outcome {
        wit::Outcome::Success => Outcome::Success,
        wit::Outcome::Retry(retry) => {
            Outcome::Retry { reason: retry.reason, after: retry.after_ms.map(Duration::from_millis) }
        }
        wit::Outcome::Reject(reason) => Outcome::Reject { reason },
    }
}

/// Per-instance state: WASI with nothing granted, the memory cap, the log
/// context, `wasi:http` behind the allow-list, and what the handler published.
struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    memory: MemoryCap,
    log: GuestLog,
    http: WasiHttpCtx,
    outbound: OutboundPolicy,
    outbox: Outbox,
    /// The current run's kv writes, applied only when its pair is recorded.
    writes: KvWrites,
    /// When the current event's time is up.
    deadline: Instant,
    grants: Arc<Grants>,
}

impl HostState {
    /// Tags what follows with this event, with a fresh log budget and its
    /// deadline (for the epoch check and for outbound requests).
    fn start_event(&mut self, event_id: &str, deadline: Instant) {
        self.log.start_event(event_id);
        self.writes = KvWrites::new(self.log.handler.clone());
        self.deadline = deadline;
        self.outbound.deadline = deadline;
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.outbound }
    }
}

/// Caps linear memory, and remembers that it did, so the failure is reported
/// as "out of memory" rather than as an anonymous trap.
struct MemoryCap {
    limit: usize,
    exceeded: bool,
}

impl wasmtime::ResourceLimiter for MemoryCap {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.limit {
            self.exceeded = true;
            return Err(wasmtime::format_err!("memory limit of {} bytes exceeded", self.limit));
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// Where a handler's log lines go: the host log, tagged with handler and
/// event, within a byte budget.
struct GuestLog {
    handler: Arc<str>,
    event_id: String,
    /// Bytes per event: [`LOG_BUDGET`], or 0 when `log = false`.
    allowance: usize,
    /// What is left of it for this event.
    budget: usize,
}

impl GuestLog {
    /// Tags what follows with this event, with a fresh budget.
    fn start_event(&mut self, event_id: &str) {
        self.event_id.clear();
        self.event_id.push_str(event_id);
        self.budget = self.allowance;
    }

    fn emit(&mut self, level: log::Level, message: &str, fields: &[(String, String)]) {
        if self.budget == 0 {
            return;
        }
        let with_fields;
        let message = match fields {
            [] => message,
            fields => {
                with_fields = logfmt(message, fields);
                &with_fields
            }
        };
        let message = truncate(message, self.budget);
        self.budget -= message.len();
        let (handler, event_id) = (&*self.handler, &self.event_id);
        match level {
            log::Level::Trace => tracing::trace!(target: "handler", handler, event_id, "{message}"),
            log::Level::Debug => tracing::debug!(target: "handler", handler, event_id, "{message}"),
            log::Level::Info => tracing::info!(target: "handler", handler, event_id, "{message}"),
            log::Level::Warn => tracing::warn!(target: "handler", handler, event_id, "{message}"),
            log::Level::Error => tracing::error!(target: "handler", handler, event_id, "{message}"),
        }
        if self.budget == 0 {
            tracing::warn!(
                handler,
                event_id,
                "handler log budget of {LOG_BUDGET} bytes used up; further output dropped"
            );
        }
    }
}

/// `message key=value key2="a value"`: fields after the message, quoted when
/// they hold spaces, quotes or nothing, so log search can pick them out.
fn logfmt(message: &str, fields: &[(String, String)]) -> String {
    let mut line = message.to_owned();
    for (key, value) in fields {
        let key: String =
            key.chars().map(|c| if c.is_alphanumeric() || matches!(c, '_' | '-' | '.') { c } else { '_' }).collect();
        let plain = !value.is_empty() && !value.chars().any(|c| c.is_whitespace() || c == '"' || c == '=');
        match plain {
            true => line.push_str(&format!(" {key}={value}")),
            false => line.push_str(&format!(" {key}={value:?}")),
        }
    }
    line
}

fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

impl log::Host for HostState {
    fn log(&mut self, level: log::Level, message: String, fields: Vec<(String, String)>) {
        self.log.emit(level, &message, &fields);
    }
}

impl wit::Host for HostState {}

impl config_capability::Host for HostState {
    fn get(&mut self, key: String) -> Option<String> {
        self.grants.config.as_ref()?.get(&key).cloned()
    }
}

impl HostState {
    /// The handler's key space, if granted, after checking the key's size.
    fn kv(&self, key: &str) -> Result<Arc<dyn KvStore>, kv_capability::Error> {
        let store = self.grants.kv.clone().ok_or(kv_capability::Error::Denied)?;
        if key.len() > kv::MAX_KEY {
            return Err(kv_capability::Error::TooLarge);
        }
        Ok(store)
    }
}

/// Waits for a kv read, but not past the event's deadline: the epoch check
/// that enforces it fires only while the handler's code runs, not while its
/// instance waits here.
async fn until_deadline<T>(
    deadline: Instant,
    call: impl std::future::Future<Output = Result<T, kv::Refused>>,
) -> Result<T, kv_capability::Error> {
    match tokio::time::timeout_at(deadline.into(), call).await {
        Ok(result) => result.map_err(refused),
        Err(_) => Err(kv_capability::Error::Store("the handler's deadline passed during the kv call".into())),
    }
}

fn refused(refused: kv::Refused) -> kv_capability::Error {
    match refused {
        kv::Refused::TooLarge => kv_capability::Error::TooLarge,
        kv::Refused::Store(reason) => kv_capability::Error::Store(reason),
    }
}

/// Reads go to the store through the run's own writes; writes stay with the
/// run until its pair is recorded ([`crate::kv`]).
impl kv_capability::Host for HostState {
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, kv_capability::Error> {
        let store = self.kv(&key)?;
        until_deadline(self.deadline, self.writes.get(&*store, &key)).await
    }

    async fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), kv_capability::Error> {
        if value.len() > kv::MAX_VALUE {
            return Err(kv_capability::Error::TooLarge);
        }
        self.kv(&key)?;
        self.writes.set(&key, value).map_err(refused)
    }

    async fn delete(&mut self, key: String) -> Result<(), kv_capability::Error> {
        self.kv(&key)?;
        self.writes.delete(&key).map_err(refused)
    }

    async fn increment(&mut self, key: String, delta: i64) -> Result<i64, kv_capability::Error> {
        let store = self.kv(&key)?;
        until_deadline(self.deadline, self.writes.increment(&*store, &key, delta)).await
    }
}

impl publish_capability::Host for HostState {
    fn publish(&mut self, event: publish_capability::OutgoingEvent) -> Result<(), publish_capability::Error> {
        if !self.grants.publish {
            return Err(publish_capability::Error::Denied);
        }
        let draft = Draft {
            id: event.id,
            event_type: event.event_type,
            source: event.source,
            subject: event.subject,
            data_content_type: event.data_content_type,
            data: event.data,
        };
        self.outbox.push(draft, &self.log.handler, &self.log.event_id).map_err(|refused| match refused {
            Refused::TooLarge => publish_capability::Error::TooLarge,
            Refused::Invalid(reason) => publish_capability::Error::Invalid(reason),
        })
    }
}

/// A guest's stdout and stderr, captured (up to the log budget) and written to
/// the host log after the call.
#[derive(Clone, Default)]
struct CapturedOutput(Arc<Mutex<Vec<u8>>>);

impl CapturedOutput {
    fn append(&self, bytes: &[u8]) {
        let mut buffer = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let room = LOG_BUDGET.saturating_sub(buffer.len());
        buffer.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    fn flush_to_log(&self, log: &GuestLog) {
        let buffer = std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()));
        if buffer.is_empty() || log.allowance == 0 {
            return;
        }
        let (handler, event_id) = (&*log.handler, &log.event_id);
        for line in String::from_utf8_lossy(&buffer).lines() {
            tracing::info!(target: "handler::stdio", handler, event_id, "{line}");
        }
    }
}

impl wasmtime_wasi::cli::IsTerminal for CapturedOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl wasmtime_wasi::cli::StdoutStream for CapturedOutput {
    fn p2_stream(&self) -> Box<dyn wasmtime_wasi::p2::OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl wasmtime_wasi::p2::OutputStream for CapturedOutput {
    fn write(&mut self, bytes: bytes::Bytes) -> wasmtime_wasi::p2::StreamResult<()> {
        self.append(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> wasmtime_wasi::p2::StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> wasmtime_wasi::p2::StreamResult<usize> {
        Ok(LOG_BUDGET)
    }
}

#[wasmtime_wasi::async_trait]
impl wasmtime_wasi::p2::Pollable for CapturedOutput {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for CapturedOutput {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.append(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// Advances the engine's epoch every [`EPOCH_TICK`] while any handler runs,
/// which is what makes deadlines fire and handlers yield; asleep while none
/// does, so an idle gridfn costs nothing. Stops when dropped.
struct EpochTicker {
    clock: Arc<Clock>,
    thread: Option<JoinHandle<()>>,
}

/// What the ticker thread and the running handlers share.
struct Clock {
    running: AtomicUsize,
    stop: AtomicBool,
    thread: std::sync::OnceLock<std::thread::Thread>,
}

/// A handler running: the clock ticks while one of these exists.
struct Running(Arc<Clock>);

impl Clock {
    fn start_running(self: &Arc<Self>) -> Running {
        if self.running.fetch_add(1, Ordering::AcqRel) == 0
            && let Some(thread) = self.thread.get()
        {
            thread.unpark();
        }
        Running(self.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::AcqRel);
    }
}

impl EpochTicker {
    fn start(engine: Engine) -> Self {
        let clock =
            Arc::new(Clock { running: AtomicUsize::new(0), stop: AtomicBool::new(false), thread: Default::default() });
        let thread = std::thread::Builder::new()
            .name("gridfn-epoch".into())
            .spawn({
                let clock = clock.clone();
                move || {
                    let mut next = Instant::now();
                    while !clock.stop.load(Ordering::Relaxed) {
                        if clock.running.load(Ordering::Acquire) == 0 {
                            // An unpark that came first makes this return at once.
                            std::thread::park();
                            next = Instant::now();
                            continue;
                        }
                        next += EPOCH_TICK;
                        std::thread::sleep(next.saturating_duration_since(Instant::now()));
                        engine.increment_epoch();
                    }
                }
            })
            .expect("spawning the epoch thread");
        let _ = clock.thread.set(thread.thread().clone());
        EpochTicker { clock, thread: Some(thread) }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.clock.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}
