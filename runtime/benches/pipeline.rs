//! What gridfn costs per event around the sandbox: a pushed body decoded
//! ([`gridfn::webhook::decode`]), dispatched through the whole pipeline
//! (route, dedup claim and record, admission, metrics, spans, a fresh
//! instance of the trivial handler tests/bench/handler), and its verdict
//! encoded as the answer, against the same handler's call alone
//! (`LoadedHandler::invoke`, as `benches/sandbox.rs` measures it), all in this
//! run, so the split between the sandbox and the rest is visible.
//!
//! `cargo bench -p gridfn --bench pipeline` (build the component first:
//! `scripts/components`). The dedup store is the in-memory one: this measures
//! CPU per event, not the disk's fsyncs (tests/bench/run measures those with
//! the default, durable store). One task on a one-thread runtime, as one core
//! of a loaded server sees it.
//!
//! `GRIDFN_BENCH_EVENTS` (default 20,000) sets the events per mode and
//! `GRIDFN_BENCH_MODES` (comma-separated names of the rows below) picks
//! modes: with `valgrind --tool=callgrind`, two runs with different event
//! counts give the instructions per event, which are deterministic where wall
//! times on a shared machine are not.

use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue};
use gridfn::config::Manifest;
use gridfn::event::DeliveryInfo;
use gridfn::host::Host;
use gridfn::pipeline::{Target, Verdict};
use gridfn::sandbox::Outcome;

/// One BlobCreated event (as tests/bench/eventgrid.lua sends it) with `id`
/// in its id, subject and url: every event of the bench is new to dedup.
fn event_json(id: &str) -> String {
    format!(
        r#"{{"topic":"/subscriptions/319a9601-1ec0-0000-aebc-8fe82724c81e/resourceGroups/benchrg/providers/Microsoft.Storage/storageAccounts/benchaccount","subject":"/blobServices/default/containers/uploads/blobs/{id}.json","eventType":"Microsoft.Storage.BlobCreated","eventTime":"2025-11-21T09:57:26.005121Z","id":"{id}","data":{{"api":"PutBlockList","clientRequestId":"799304a4-bbc5-45b6-9849-ec2c66be800a","requestId":"602a88ef-0001-00e6-1233-164607000000","eTag":"0x8D4E44A24ABE7F1","contentType":"application/json","contentLength":524288,"blobType":"BlockBlob","url":"https://benchaccount.blob.core.windows.net/uploads/{id}.json","sequencer":"00000000000000EB000000000000C65A","storageDiagnostics":{{"batchId":"b68529f3-68cd-4744-baa4-3c0498ec19f0"}}}},"dataVersion":"","metadataVersion":"1"}}"#
    )
}

/// A delivery body of `batch` new events.
fn body(mode: &str, request: usize, batch: usize) -> Vec<u8> {
    let events: Vec<String> = (0..batch).map(|i| event_json(&format!("{mode}-{request}-{i}"))).collect();
    format!("[{}]", events.join(",")).into_bytes()
}

/// The headers Event Grid (and the bench's wrk script) sends.
fn headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("content-type", "application/json"),
        ("aeg-event-type", "Notification"),
        ("aeg-subscription-name", "BENCH"),
        ("aeg-delivery-count", "0"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers
}

/// CPU time per event of one mode: the mean over every event (what a
/// saturated core sustains), and the median and p99 of one request.
struct Timing {
    per_event_us: f64,
    median_request_us: f64,
    p99_request_us: f64,
}

/// Runs `requests` requests (after a tenth as many to warm up), timing
/// only `run` (the bodies are built outside the clock).
fn measure(
    requests: usize,
    mut prepare: impl FnMut(usize) -> Vec<u8>,
    mut run: impl FnMut(Vec<u8>),
    batch: usize,
) -> Timing {
    let warmup = (requests / 10).max(1);
    for i in 0..warmup {
        run(prepare(i));
    }
    let mut samples: Vec<Duration> = (warmup..warmup + requests)
        .map(|i| {
            let body = prepare(i);
            let started = Instant::now();
            run(body);
            started.elapsed()
        })
        .collect();
    let total: Duration = samples.iter().sum();
    samples.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    Timing {
        per_event_us: us(total) / (requests * batch) as f64,
        median_request_us: us(samples[requests / 2]),
        p99_request_us: us(samples[requests * 99 / 100]),
    }
}

fn main() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let module = root.join("target/wasm32-wasip2/release/bench_handler.wasm");
    assert!(module.is_file(), "{} is missing: run scripts/components first", module.display());
    let events: usize = std::env::var("GRIDFN_BENCH_EVENTS").ok().and_then(|n| n.parse().ok()).unwrap_or(20_000);
    let modes = std::env::var("GRIDFN_BENCH_MODES").ok();
    let wanted = |mode: &str| modes.as_deref().is_none_or(|modes| modes.split(',').any(|m| m == mode));

    let dir = tempfile::tempdir().unwrap();
    let manifest = format!(
        "[server]\nallow_anonymous = true\nstate_dir = {state:?}\n\
         [dedup]\nstore = \"memory\"\nmax_records = 10000000\n\
         [[handler]]\nname = \"fresh\"\nmodule = {module:?}\nqueue = 100000\n\
         [[handler]]\nname = \"batch\"\nmodule = {module:?}\nbatch = true\nqueue = 100000\n\
         [[handler]]\nname = \"reuse\"\nmodule = {module:?}\ninstance_reuse = 64\nqueue = 100000\n",
        state = dir.path()
    );
    let manifest = Manifest::parse(&manifest, dir.path(), &|_| None).expect("bench manifest");
    // Handlers run on async tasks; here, one task on a one-thread runtime.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let host = runtime.block_on(Host::start(&manifest)).expect("bench host");
    let pipeline = host.pipeline.clone();
    let fresh = host.registry.route("fresh").unwrap().handler();
    let headers = headers();

    // The push path without HTTP: decode, dispatch, the verdict as the answer's body.
    let push = |target: Target<'_>, body: Vec<u8>, batch: usize| {
        let events = gridfn::webhook::decode(&headers, &body).expect("a valid body");
        let delivery = gridfn::webhook::delivery_info(&headers);
        let verdict: Verdict = runtime.block_on(pipeline.dispatch(events, &delivery, target)).unwrap();
        assert_eq!(verdict.succeeded, batch, "every event runs once: {verdict:?}");
        std::hint::black_box(serde_json::to_vec(&verdict).unwrap());
    };
    let delivery = DeliveryInfo { subscription: Some("BENCH".into()), ..Default::default() };
    let one = gridfn::event::decode_event_grid(&body("sandbox", 0, 1)).unwrap().remove(0);

    let mut rows: Vec<(&str, usize, Timing)> = Vec::new();
    if wanted("sandbox") {
        let run = |_| assert_eq!(runtime.block_on(fresh.invoke(&one, &delivery)).outcome, Outcome::Success);
        rows.push(("sandbox", 1, measure(events, |_| Vec::new(), run, 1)));
    }
    for (mode, target, batch) in [
        ("push-b1", Target::Handler("fresh"), 1),
        ("push-b100", Target::Handler("fresh"), 100),
        ("push-batch-b100", Target::Handler("batch"), 100),
        // `instance_reuse = 64`, as tests/bench/run's gridfn-reuse rows.
        ("push-reuse-b100", Target::Handler("reuse"), 100),
    ] {
        if wanted(mode) {
            let requests = (events / batch).max(1);
            let timing = measure(requests, |i| body(mode, i, batch), |body| push(target, body, batch), batch);
            rows.push((mode, batch, timing));
        }
    }

    println!("{events} events per mode, one core, in-memory dedup, after a tenth as many to warm up\n");
    println!(
        "| mode | events/request | µs per event | median µs per request | p99 µs per request | events/s (1 core) | outside the sandbox |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let sandbox = rows.iter().find(|(mode, ..)| *mode == "sandbox").map(|(.., t)| t.per_event_us);
    for (mode, batch, timing) in &rows {
        // Only a fresh instance per event splits as the sandbox row does: handle-batch has one
        // instance per request, reuse one per 64 events.
        let outside = match sandbox {
            Some(sandbox) if matches!(*mode, "push-b1" | "push-b100") => format!(
                "{:.2} µs ({:.0} %)",
                timing.per_event_us - sandbox,
                100.0 * (timing.per_event_us - sandbox) / timing.per_event_us
            ),
            _ => "–".into(),
        };
        println!(
            "| {mode} | {batch} | {:.2} | {:.1} | {:.1} | {:.0} | {outside} |",
            timing.per_event_us,
            timing.median_request_us,
            timing.p99_request_us,
            1e6 / timing.per_event_us
        );
    }
}
