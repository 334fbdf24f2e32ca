//! Packaging: `cargo install`, the Dockerfile, the Kubernetes manifests in
//! deploy/, and the spans gridfn exports over OTLP.
//!
//! The Python tools (tests/packaging/requirements.txt: Kubernetes' schemas,
//! a Dockerfile parser, the OTLP protobuf definitions) are installed into
//! target/venv-packaging by tests/python/setup.sh, once per test process.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::observability::handler_line;
use crate::support::{Gridfn, KEY, batch, component, event, repo};

/// The packaging venv's python.
fn python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let output = Command::new("bash")
            .arg(repo("tests/python/setup.sh"))
            .arg(repo("tests/packaging/requirements.txt"))
            .arg(repo("target/venv-packaging"))
            .output()
            .expect("running tests/python/setup.sh");
        assert!(
            output.status.success(),
            "tests/python/setup.sh (packaging) failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        PathBuf::from(String::from_utf8(output.stdout).unwrap().trim())
    })
}

/// Runs tests/packaging/check_deploy.py with `args`.
fn check_deploy(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(python()).arg(repo("tests/packaging/check_deploy.py")).args(args).output().unwrap()
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// The target folder this test binary was built in (`cargo install` reuses
/// its dependencies).
fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).parent().unwrap().to_owned()
}

#[test]
fn cargo_install_puts_a_working_gridfn_on_the_path() {
    // `cargo install` builds without gridfn's dev-dependencies, so the
    // first run compiles the dependencies whose features they change
    // (wasmtime among them) once; later runs only link.
    let root = tempfile::tempdir().unwrap();
    let mut install = Command::new(env!("CARGO"));
    // What cargo sets for this test process, it would hand to build scripts
    // (ring's reruns when CARGO_MANIFEST_DIR changes): then the install and
    // the next `cargo test` would each rebuild the other's dependencies.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let set_for_tests = ["CARGO_MANIFEST_", "CARGO_PKG_", "CARGO_CRATE_", "CARGO_BIN_", "CARGO_PRIMARY_"]
            .iter()
            .any(|prefix| name.starts_with(prefix))
            || ["CARGO_TARGET_TMPDIR", "CARGO_RUSTC_CURRENT_DIR"].contains(&&*name);
        if set_for_tests {
            install.env_remove(&*name);
        }
    }
    let install = install
        .args(["install", "--path"])
        .arg(repo("runtime"))
        .args(["--debug", "--offline", "--locked", "--root"])
        .arg(root.path())
        .env("CARGO_TARGET_DIR", target_dir())
        .output()
        .unwrap();
    assert!(install.status.success(), "cargo install failed:\n{}", text(&install));
    let gridfn = root.path().join("bin/gridfn");

    let version = Command::new(&gridfn).arg("--version").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&version.stdout).trim(), format!("gridfn {}", env!("CARGO_PKG_VERSION")));

    // The installed binary reads the sample manifest as the built one does.
    let check = Command::new(&gridfn)
        .args(["check", "--config"])
        .arg(repo("samples/gridfn.toml"))
        .env("GRIDFN_KEY", "k")
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", text(&check));
    assert!(text(&check).contains(": ok, 3 handler(s)\n"), "{}", text(&check));
}

#[test]
fn the_kubernetes_manifests_pass_the_schema_check_and_a_broken_copy_does_not() {
    let checked = check_deploy(&["manifests".as_ref(), repo("deploy").as_os_str()]);
    assert!(checked.status.success(), "deploy/ fails the check:\n{}", text(&checked));

    // A misspelled field (kubectl would refuse it), a wrong type, and a file
    // kustomization.yaml does not list.
    let broken = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(repo("deploy")).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, broken.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    let gridfn = broken.path().join("gridfn.yaml");
    let yaml = std::fs::read_to_string(&gridfn).unwrap();
    std::fs::write(&gridfn, yaml.replace("readinessProbe:", "readinesProbe:")).unwrap();
    let redis = broken.path().join("redis.yaml");
    let yaml = std::fs::read_to_string(&redis).unwrap();
    std::fs::write(&redis, yaml.replace("containerPort: 6379", "containerPort: \"6379\"")).unwrap();
    std::fs::copy(repo("deploy/redis.yaml"), broken.path().join("extra.yaml")).unwrap();

    let checked = check_deploy(&["manifests".as_ref(), broken.path().as_os_str()]);
    let problems = text(&checked);
    assert!(!checked.status.success(), "a broken copy passed:\n{problems}");
    assert!(problems.contains("'readinesProbe' was unexpected"), "{problems}");
    assert!(problems.contains("containerPort: '6379' is not of type 'integer'"), "{problems}");
    assert!(problems.contains("kustomization.yaml: does not list extra.yaml"), "{problems}");
}

#[test]
fn the_configmap_manifest_passes_gridfn_check_with_the_deployments_environment() {
    let dir = tempfile::tempdir().unwrap();
    let (config, env) = (dir.path().join("gridfn.toml"), dir.path().join("env.json"));
    let extracted = check_deploy(&[
        "manifests".as_ref(),
        repo("deploy").as_os_str(),
        "--config-out".as_ref(),
        config.as_os_str(),
        "--env-out".as_ref(),
        env.as_os_str(),
    ]);
    assert!(extracted.status.success(), "{}", text(&extracted));
    // The environment the gridfn container gets, each secretKeyRef resolved
    // from the Secret: every env: name in the manifest must be there.
    let env: std::collections::BTreeMap<String, String> =
        serde_json::from_str(&std::fs::read_to_string(&env).unwrap()).unwrap();
    assert!(env.contains_key("GRIDFN_KEY"), "{env:?}");

    let manifests = [("ConfigMap", config.clone()), ("image", repo("deploy/image/gridfn.toml"))];
    for (name, path) in manifests {
        // The image's /opt/gridfn/handlers holds the components built here.
        let manifest = std::fs::read_to_string(path).unwrap();
        assert!(manifest.contains("module = \"/opt/gridfn/handlers/"), "{name}: {manifest}");
        let handlers = component("audit-log").parent().unwrap().display().to_string();
        let manifest = manifest.replace("/opt/gridfn/handlers", &handlers);
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, manifest).unwrap();
        let check = Command::new(env!("CARGO_BIN_EXE_gridfn"))
            .args(["check", "--config"])
            .arg(&path)
            .env_clear()
            .envs(&env)
            .output()
            .unwrap();
        assert!(check.status.success(), "the {name}'s gridfn.toml fails gridfn check:\n{}", text(&check));
        assert!(text(&check).contains(": ok, 3 handler(s)\n"), "{}", text(&check));
    }

    // Without the Secret's values the same manifest is refused: the check
    // above read them.
    let check = Command::new(env!("CARGO_BIN_EXE_gridfn"))
        .args(["check", "--config"])
        .arg(dir.path().join("ConfigMap.toml"))
        .env_clear()
        .output()
        .unwrap();
    assert!(!check.status.success());
    assert!(text(&check).contains("AZURE_STORAGE_CONNECTION_STRING is not set"), "{}", text(&check));
}

#[test]
fn the_dockerfile_builds_in_stages_and_runs_gridfn_as_a_non_root_user() {
    let dockerfile = repo("Dockerfile");
    let context = repo("");
    let args = |file: &Path| -> Vec<std::ffi::OsString> {
        vec!["dockerfile".into(), file.into(), "--context".into(), context.clone().into()]
    };
    let checked =
        Command::new(python()).arg(repo("tests/packaging/check_deploy.py")).args(args(&dockerfile)).output().unwrap();
    assert!(checked.status.success(), "{}", text(&checked));

    let broken = tempfile::tempdir().unwrap();
    let file = broken.path().join("Dockerfile");
    let original = std::fs::read_to_string(&dockerfile).unwrap();
    assert!(original.contains("\nUSER 65532:65532\n"));
    let text_of_broken = original
        .replace("\nUSER 65532:65532\n", "\n")
        .replace("COPY deploy/image/gridfn.toml", "COPY deploy/image/missing.toml")
        .replace("\nEXPOSE 7071\n", "\nEXPOSE 7071\nHEALTHCHECK CMD [\"/usr/local/bin/gridfn\", \"--version\"]\n")
        .replace("ARG RUST_IMAGE=rust:1.95-bookworm", "ARG RUST_IMAGE=rust:1.80-bookworm");
    std::fs::write(&file, text_of_broken).unwrap();
    let checked =
        Command::new(python()).arg(repo("tests/packaging/check_deploy.py")).args(args(&file)).output().unwrap();
    let problems = text(&checked);
    assert!(!checked.status.success(), "a broken Dockerfile passed:\n{problems}");
    assert!(problems.contains("the image runs as root"), "{problems}");
    assert!(problems.contains("HEALTHCHECK present"), "{problems}");
    assert!(problems.contains("COPY deploy/image/missing.toml: not in the build context"), "{problems}");
    assert!(problems.contains("the builder is not the Rust 1.95 image: FROM rust:1.80-bookworm"), "{problems}");
}

/// tests/packaging/image --prebuilt: the Dockerfile's runtime stage, built
/// with podman on a local equivalent of distroless cc around this build's
/// gridfn and sample handlers, then run. The full build (the builder stage's
/// release build takes many minutes) is `tests/packaging/image`, run by hand.
/// Skipped where podman is not installed (no machine kind ships it).
#[test]
fn the_image_serves_and_runs_a_pushed_event_as_a_non_root_user() {
    let podman = Command::new("podman").arg("--version").output();
    if !podman.is_ok_and(|output| output.status.success()) {
        eprintln!("skipped: podman is not installed");
        return;
    }
    let handlers = component("audit-log").parent().unwrap().to_owned();
    let run = Command::new("bash")
        .arg(repo("tests/packaging/image"))
        .arg("--prebuilt")
        .arg(env!("CARGO_BIN_EXE_gridfn"))
        .arg(handlers)
        .output()
        .unwrap();
    let report = text(&run);
    assert!(run.status.success(), "tests/packaging/image --prebuilt failed:\n{report}");
    assert!(report.contains("healthz: ok (200)"), "{report}");
    assert!(report.contains("readyz: {\"ready\":true,\"handlers\":3} (200)"), "{report}");
    assert!(report.contains("/usr/local/bin/gridfn serve --config /etc/gridfn/gridfn.toml (uid 65532)"), "{report}");
    assert!(report.contains("\"validationResponse\":\"512d38b6-c7b8-40c8-89fe-f46f9e9622b6\""), "{report}");
    assert!(report.contains("audit: Microsoft.Storage.BlobCreated sample-0001"), "{report}");
}

/// tests/packaging/otlp_receiver.py: an OTLP/HTTP traces endpoint that
/// decodes what it receives with opentelemetry-proto; killed when dropped.
struct OtlpReceiver {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl OtlpReceiver {
    fn start() -> OtlpReceiver {
        let dir = tempfile::tempdir().unwrap();
        let port_file = dir.path().join("port");
        let child = Command::new(python())
            .arg(repo("tests/packaging/otlp_receiver.py"))
            .arg(&port_file)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let port = loop {
            if let Ok(port) = std::fs::read_to_string(&port_file) {
                break port.parse().unwrap();
            }
            assert!(Instant::now() < deadline, "the OTLP receiver did not start");
            std::thread::sleep(Duration::from_millis(50));
        };
        OtlpReceiver { child, port, _dir: dir }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/v1/traces", self.port)
    }

    /// Every span received, as otlp_receiver.py lists them.
    fn spans(&self) -> Vec<Value> {
        let url = format!("http://127.0.0.1:{}/spans", self.port);
        reqwest::blocking::get(url).unwrap().json().unwrap()
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";
const UNSAMPLED: &str = "0af7651916cd43dd8448eb211c80319c";

fn scripted(name: &str, rest: &str) -> String {
    format!("[[handler]]\nname = \"{name}\"\nmodule = {:?}\n{rest}\n", component("scripted"))
}

#[test]
fn otlp_export_sends_the_delivery_and_pair_spans_in_the_requests_trace() {
    let receiver = OtlpReceiver::start();
    let mut gridfn = Gridfn::start_with_args(
        &["--log-format", "json", "--otlp-endpoint", &receiver.url()],
        "",
        &format!(
            "{}{}",
            scripted(
                "worker",
                "[handler.filter]\nincludedEventTypes = [\"Microsoft.Storage.BlobCreated\"]\n\
                 [handler.capabilities]\npublish = \"local\""
            ),
            scripted("follower", "[handler.filter]\nincludedEventTypes = [\"Test.Next\"]"),
        ),
    );
    let published = json!([{"type": "Test.Next", "data": {"act": "ok"}}]);
    let response = gridfn.post(
        "/api/events",
        batch(&[
            event("ok-1", json!({"act": "ok"})),
            event("pub-1", json!({"act": "publish", "events": published})),
            event("bad-1", json!({"act": "reject"})),
        ]),
        &[
            ("aeg-event-type", "Notification"),
            ("aeg-sas-key", KEY),
            ("traceparent", &format!("00-{TRACE_ID}-{PARENT}-01")),
        ],
    );
    assert_eq!(response.status(), 200, "{}", gridfn.log_text());
    // A sender that did not sample its trace (flags 00) gets no spans.
    let unsampled = gridfn.post(
        "/api/events",
        batch(&[event("quiet-1", json!({"act": "ok"}))]),
        &[
            ("aeg-event-type", "Notification"),
            ("aeg-sas-key", KEY),
            ("traceparent", &format!("00-{UNSAMPLED}-{PARENT}-00")),
        ],
    );
    assert_eq!(unsampled.status(), 200, "{}", gridfn.log_text());
    // Stopping gridfn sends what the exporter still holds.
    gridfn.terminate();
    assert!(gridfn.wait_exit(Duration::from_secs(20)).is_some_and(|status| status.success()), "{}", gridfn.log_text());

    let spans = receiver.spans();
    let named = |name: &str| spans.iter().filter(|span| span["name"] == name).collect::<Vec<_>>();
    assert!(spans.iter().all(|span| span["service"] == "gridfn"), "{spans:#?}");
    assert!(spans.iter().all(|span| span["trace_id"] == TRACE_ID), "only the sampled trace: {spans:#?}");

    // The delivery: a child of the request's traceparent.
    let deliveries = named("delivery");
    assert_eq!(deliveries.len(), 1, "{spans:#?}");
    let delivery = deliveries[0];
    assert_eq!(
        (&delivery["trace_id"], &delivery["parent_span_id"]),
        (&json!(TRACE_ID), &json!(PARENT)),
        "{delivery:#}"
    );
    assert_eq!(delivery["attributes"]["events"], "3", "{delivery:#}");

    // Each of the worker's pairs: event, handler, outcome, in the request's
    // trace under the sender's span, with the span id the JSON log shows.
    let pairs = named("pair");
    let worker: Vec<_> = pairs.iter().filter(|span| span["attributes"]["handler"] == "worker").collect();
    let mut outcomes: Vec<_> = worker
        .iter()
        .map(|span| (span["attributes"]["event_id"].as_str().unwrap(), span["attributes"]["outcome"].as_str().unwrap()))
        .collect();
    outcomes.sort();
    assert_eq!(outcomes, [("bad-1", "reject"), ("ok-1", "success"), ("pub-1", "success")], "{spans:#?}");
    for span in &worker {
        assert_eq!((&span["trace_id"], &span["parent_span_id"]), (&json!(TRACE_ID), &json!(PARENT)), "{span:#}");
        let event_id = span["attributes"]["event_id"].as_str().unwrap();
        let logged = handler_line(&gridfn, &format!("scripted ran {event_id} "));
        assert_eq!(span["span_id"], logged["span"]["span_id"], "the exported span is the logged pair: {logged}");
    }

    // The event the worker published ran as the child of the worker's pair:
    // the traceparent it carried names the exported span.
    let publisher = worker.iter().find(|span| span["attributes"]["event_id"] == "pub-1").unwrap();
    let follower: Vec<_> = pairs.iter().filter(|span| span["attributes"]["handler"] == "follower").collect();
    assert_eq!(follower.len(), 1, "{spans:#?}");
    assert_eq!(
        (&follower[0]["trace_id"], &follower[0]["parent_span_id"], &follower[0]["attributes"]["outcome"]),
        (&json!(TRACE_ID), &publisher["span_id"], &json!("success")),
        "{spans:#?}"
    );
}
