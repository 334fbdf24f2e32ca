//! What the sandbox costs per event: a trivial handler (tests/bench/handler:
//! parse BlobCreated data, succeed) run through `LoadedHandler::invoke` with a
//! fresh instance per event and with instance reuse, against the same parse
//! as a plain Rust function, all measured in this run on this machine.
//!
//! `cargo bench -p gridfn --bench sandbox` (build the component first:
//! `scripts/components`). Prints median and p99 µs per event, events/s on one
//! core, and each mode's cost as a multiple of the native function's.

use std::time::{Duration, Instant};

use gridfn::config::Manifest;
use gridfn::event::DeliveryInfo;
use gridfn::event::decode_event_grid;
use gridfn::sandbox::{LoadedHandler, Outcome, Sandbox};

const WARMUP: usize = 2_000;
const EVENTS: usize = 20_000;

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
struct BlobCreated<'a> {
    api: &'a str,
    content_length: u64,
    url: &'a str,
}

/// The same work as the component, natively.
fn native(data: &[u8]) -> bool {
    serde_json::from_slice::<BlobCreated>(data).is_ok_and(|blob| !blob.url.is_empty())
}

struct Timing {
    median_us: f64,
    p99_us: f64,
}

fn measure(mut run: impl FnMut(usize)) -> Timing {
    for i in 0..WARMUP {
        run(i);
    }
    let mut samples: Vec<Duration> = (0..EVENTS)
        .map(|i| {
            let started = Instant::now();
            run(i);
            started.elapsed()
        })
        .collect();
    samples.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    Timing { median_us: us(samples[EVENTS / 2]), p99_us: us(samples[EVENTS * 99 / 100]) }
}

fn main() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let module = root.join("target/wasm32-wasip2/release/bench_handler.wasm");
    assert!(module.is_file(), "{} is missing: run scripts/components first", module.display());
    let dir = tempfile::tempdir().unwrap();
    let manifest = format!(
        "[server]\nallow_anonymous = true\n\
         [[handler]]\nname = \"fresh\"\nmodule = {module:?}\n\
         [[handler]]\nname = \"reuse\"\nmodule = {module:?}\ninstance_reuse = 1000000\n"
    );
    let manifest = Manifest::parse(&manifest, dir.path(), &|_| None).expect("bench manifest");
    let sandbox = Sandbox::new(64 << 20, false, &dir.path().join("cache"), None).unwrap();
    let fresh = sandbox.load(&manifest.handlers[0]).unwrap();
    let reuse = sandbox.load(&manifest.handlers[1]).unwrap();

    let body = std::fs::read(root.join("tests/vectors/eventgrid/StorageBlobCreatedEvent.json")).unwrap();
    let event = decode_event_grid(&body).unwrap().remove(0);
    let delivery = DeliveryInfo { attempt: 0, subscription: None, replay: false, traceparent: None };
    // Handlers run on async tasks; here, one task on a one-thread runtime.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let run = |handler: &LoadedHandler| runtime.block_on(handler.invoke(&event, &delivery)).outcome;
    assert!(native(&event.data));
    assert_eq!(run(&fresh), Outcome::Success);

    let baseline = measure(|_| assert!(std::hint::black_box(native(std::hint::black_box(&event.data)))));
    let rows = [
        ("native fn", baseline),
        ("gridfn fresh", measure(|_| assert_eq!(run(&fresh), Outcome::Success))),
        ("gridfn reuse", measure(|_| assert_eq!(run(&reuse), Outcome::Success))),
    ];
    let native_median = rows[0].1.median_us;
    println!("{EVENTS} events per mode, one core, after {WARMUP} warm-up events\n");
    println!("| mode | median µs | p99 µs | events/s (1 core) | median × native |");
    println!("|---|---:|---:|---:|---:|");
    for (mode, timing) in &rows {
        println!(
            "| {mode} | {:.2} | {:.2} | {:.0} | {:.1}× |",
            timing.median_us,
            timing.p99_us,
            1e6 / timing.median_us,
            timing.median_us / native_median
        );
    }
    println!(
        "\nsandbox cost per event (median): fresh {:.2} µs, reuse {:.2} µs",
        rows[1].1.median_us - native_median,
        rows[2].1.median_us - native_median
    );
}
