//! Starts `gridfn serve` on port 0 with a manifest written for the test, and
//! speaks to it over HTTP.

use std::cell::Cell;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::time::Duration;

use reqwest::blocking::{Client, Response};

pub const KEY: &str = "test-key";

/// A built handler component, by crate name.
pub fn component(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let path = target.join("wasm32-wasip2/release").join(format!("{}.wasm", name.replace('-', "_")));
    assert!(
        path.is_file(),
        "{} is missing: build the components first (scripts/test does), e.g. \
         cargo build --release --target wasm32-wasip2 -p audit-log -p scripted",
        path.display()
    );
    path
}

/// The test vectors (`tests/vectors`, copied from Azure's SDKs and docs; see its README).
pub fn vector(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/vectors").join(relative)
}

/// One compile cache for every test's gridfn, so each start after the first
/// loads compiled handlers instead of compiling them.
fn shared_cache() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("gridfn-e2e-cache");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Every gridfn a test starts holds a share of the machine; a test that
/// measures latency takes it whole ([`alone`]), so other tests' servers are
/// not part of what it measures. (Not an `RwLock`: a test holding a share may
/// start a second gridfn while the latency test waits, which must not block.)
static MACHINE: Mutex<Machine> = Mutex::new(Machine { shares: 0, alone: false });
static MACHINE_CHANGED: Condvar = Condvar::new();

struct Machine {
    shares: usize,
    alone: bool,
}

thread_local! {
    static ALONE: Cell<bool> = const { Cell::new(false) };
}

fn machine() -> std::sync::MutexGuard<'static, Machine> {
    MACHINE.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running gridfn's share of the machine.
struct Share;

impl Share {
    /// None on the thread that holds the machine alone.
    fn take() -> Option<Share> {
        if ALONE.with(Cell::get) {
            return None;
        }
        let mut machine = machine();
        while machine.alone {
            machine = MACHINE_CHANGED.wait(machine).unwrap_or_else(|e| e.into_inner());
        }
        machine.shares += 1;
        Some(Share)
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        machine().shares -= 1;
        MACHINE_CHANGED.notify_all();
    }
}

/// Waits until no other test's gridfn is running, and keeps new ones from
/// starting until dropped; this thread's own gridfns may start.
pub struct Alone;

pub fn alone() -> Alone {
    let mut machine = machine();
    while machine.shares > 0 || machine.alone {
        machine = MACHINE_CHANGED.wait(machine).unwrap_or_else(|e| e.into_inner());
    }
    machine.alone = true;
    ALONE.with(|alone| alone.set(true));
    Alone
}

impl Drop for Alone {
    fn drop(&mut self) {
        ALONE.with(|alone| alone.set(false));
        machine().alone = false;
        MACHINE_CHANGED.notify_all();
    }
}

pub struct Gridfn {
    child: Child,
    pub base: String,
    pub dir: tempfile::TempDir,
    config: PathBuf,
    log: Arc<Mutex<Vec<String>>>,
    client: Client,
    _share: Option<Share>,
}

impl Gridfn {
    /// Starts gridfn with `[server] keys = [KEY]` and the given `[[handler]]`
    /// tables (and any other sections), and waits until it listens.
    pub fn start(manifest_tail: &str) -> Gridfn {
        Self::start_with_server("", manifest_tail)
    }

    /// Like [`Gridfn::start`], with more `[server]` keys.
    pub fn start_with_server(server: &str, manifest_tail: &str) -> Gridfn {
        Self::start_with_args(&[], server, manifest_tail)
    }

    /// Like [`Gridfn::start_with_server`], with more `gridfn serve` arguments.
    pub fn start_with_args(args: &[&str], server: &str, manifest_tail: &str) -> Gridfn {
        let dir = tempfile::tempdir().unwrap();
        let manifest = format!(
            "[server]\nkeys = [\"{KEY}\"]\ncache_dir = {:?}\nstate_dir = {:?}\n{server}\n\n{manifest_tail}",
            shared_cache(),
            dir.path().join("state")
        );
        let config = dir.path().join("gridfn.toml");
        std::fs::write(&config, manifest).unwrap();
        Self::spawn_in(dir, config, "127.0.0.1:0", None, args)
    }

    /// Starts `gridfn serve --config CONFIG` from the working directory
    /// `cwd`, as a person would type it (`config` may be relative to `cwd`),
    /// with the manifest used as written: its own state and cache folders.
    pub fn start_in(dir: tempfile::TempDir, cwd: &Path, config: &Path) -> Gridfn {
        Self::spawn_in(dir, config.to_owned(), "127.0.0.1:0", Some(cwd), &[])
    }

    /// Kills this gridfn with SIGKILL (no graceful anything) and starts a new
    /// one on the same manifest, state and port; the log carries on.
    pub fn crash_and_restart(mut self) -> Gridfn {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        let listen = self.base.trim_start_matches("http://").to_owned();
        let dir = tempfile::Builder::new().tempdir().unwrap();
        let old_dir = std::mem::replace(&mut self.dir, dir);
        let restarted = Self::spawn(old_dir, self.config.clone(), &listen);
        restarted.log.lock().unwrap().splice(0..0, self.log.lock().unwrap().drain(..));
        restarted
    }

    fn spawn(dir: tempfile::TempDir, config: PathBuf, listen: &str) -> Gridfn {
        Self::spawn_in(dir, config, listen, None, &[])
    }

    fn spawn_in(dir: tempfile::TempDir, config: PathBuf, listen: &str, cwd: Option<&Path>, args: &[&str]) -> Gridfn {
        let share = Share::take();
        let mut command = Command::new(env!("CARGO_BIN_EXE_gridfn"));
        if let Some(cwd) = cwd {
            command.current_dir(cwd);
        }
        let mut child = command
            .args(["serve", "--listen", listen, "--config"])
            .arg(&config)
            .args(args)
            // The log a user sees: gridfn's default filter, not the caller's RUST_LOG.
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting gridfn");
        let (log, ready_rx) = follow_log(child.stderr.take().unwrap());
        let addr = match ready_rx.recv_timeout(Duration::from_secs(120)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!("gridfn did not start; its log:\n{}", log.lock().unwrap().join("\n"));
            }
        };
        let client = Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
        Gridfn { child, base: format!("http://{addr}"), dir, config, log, client, _share: share }
    }

    /// Kills it with SIGKILL (`kill -9`: no drain, no release of anything)
    /// and reaps it; its log so far stays readable.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// The address it listens on, for raw sockets.
    pub fn addr(&self) -> &str {
        self.base.trim_start_matches("http://")
    }

    /// Sends SIGTERM, as Kubernetes or systemd would to stop it.
    pub fn terminate(&self) {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(status.success(), "kill -TERM failed");
    }

    /// Waits up to `limit` for the process to exit; its exit status if it did.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// POSTs an Event Grid notification with the key, as Event Grid would.
    pub fn notify(&self, path: &str, body: impl Into<Vec<u8>>) -> Response {
        self.post(path, body, &[("aeg-event-type", "Notification"), ("aeg-sas-key", KEY)])
    }

    pub fn post(&self, path: &str, body: impl Into<Vec<u8>>, headers: &[(&str, &str)]) -> Response {
        let mut request = self.client.post(self.url(path)).body(body.into());
        if !headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("content-type")) {
            request = request.header("content-type", "application/json");
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().expect("gridfn answers")
    }

    pub fn get(&self, path: &str) -> Response {
        self.client.get(self.url(path)).send().expect("gridfn answers")
    }

    /// The value of one metric sample, e.g.
    /// `gridfn_events_total{handler="h",outcome="success"}`; 0 when absent.
    pub fn metric(&self, sample: &str) -> f64 {
        let text = self.get("/metrics").text().unwrap();
        text.lines().find_map(|line| line.strip_prefix(sample).and_then(|rest| rest.trim().parse().ok())).unwrap_or(0.0)
    }

    pub fn events(&self, handler: &str, outcome: &str) -> f64 {
        self.metric(&format!("gridfn_events_total{{handler=\"{handler}\",outcome=\"{outcome}\"}}"))
    }

    /// Log lines containing `needle`, once the log has caught up.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log_lines().iter().filter(|line| line.contains(needle)).count()
    }

    /// Waits until gridfn's log has been quiet for a moment: what it wrote
    /// before answering is in the pipe, but the reader thread may not have
    /// taken it in yet.
    fn settle(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut seen = usize::MAX;
        loop {
            let now = self.log.lock().unwrap().len();
            if now == seen || std::time::Instant::now() > deadline {
                return;
            }
            seen = now;
            std::thread::sleep(Duration::from_millis(60));
        }
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// The log lines so far, once the log has caught up.
    pub fn log_lines(&self) -> Vec<String> {
        self.settle();
        self.log.lock().unwrap().clone()
    }
}

/// Collects a gridfn's log lines as they come; the receiver gets the address
/// it listens on once it says so, and disconnects when the log ends first.
pub fn follow_log(stderr: std::process::ChildStderr) -> (Arc<Mutex<Vec<String>>>, mpsc::Receiver<String>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let (ready_tx, ready_rx) = mpsc::channel();
    std::thread::spawn({
        let log = log.clone();
        move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or_default().to_owned();
                    let _ = ready_tx.send(addr);
                }
                log.lock().unwrap().push(line);
            }
        }
    });
    (log, ready_rx)
}

impl Drop for Gridfn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An Event Grid schema event with the given id and data.
pub fn event(id: &str, data: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "id": id,
        "topic": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/acct",
        "subject": format!("/blobServices/default/containers/docs/blobs/{id}.md"),
        "eventType": "Microsoft.Storage.BlobCreated",
        "eventTime": "2026-11-21T10:00:00Z",
        "data": data,
        "dataVersion": "1",
        "metadataVersion": "1"
    })
}

pub fn batch(events: &[serde_json::Value]) -> Vec<u8> {
    serde_json::to_vec(events).unwrap()
}

/// The repository's own folder (for samples/).
pub fn repo(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(relative)
}

/// Starts the sample app (samples/gridfn.toml) as written, except for the
/// test's key, port, cache and state folder.
pub fn start_sample() -> Gridfn {
    start_manifest("samples/gridfn.toml", "")
}

/// Starts a manifest of the repository (e.g. a sample's) as written, except
/// for its `[server]` table: the test's key, port, cache and state folder,
/// plus the `[server]` keys in `server`.
pub fn start_manifest(relative: &str, server: &str) -> Gridfn {
    let path = repo(relative);
    let text = std::fs::read_to_string(&path).unwrap();
    let mut manifest: toml::Table = toml::from_str(&text).unwrap();
    manifest.remove("server");
    for handler in manifest["handler"].as_array_mut().unwrap() {
        let module = handler["module"].as_str().unwrap();
        let absolute = path.parent().unwrap().join(module);
        handler.as_table_mut().unwrap().insert("module".into(), absolute.to_string_lossy().into_owned().into());
    }
    Gridfn::start_with_server(server, &toml::to_string(&manifest).unwrap())
}

/// Runs a gridfn subcommand to completion.
pub fn gridfn_command(args: &[&std::ffi::OsStr]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_gridfn")).args(args).output().expect("running gridfn")
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A server process the test owns; killed when dropped.
pub struct Service {
    child: Child,
    pub url: String,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for_port(port: u16, what: &str) {
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} did not start listening on port {port}");
}

/// A real `redis-server` (Debian's `redis-server` package; `scripts/test`
/// installs it) on a free loopback port, without persistence.
pub fn redis_server() -> Service {
    let port = free_port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server is not installed: run scripts/test, or apt-get install redis-server");
    wait_for_port(port, "redis-server");
    Service { child, url: format!("redis://127.0.0.1:{port}") }
}

/// A real haproxy (Debian's `haproxy` package; `scripts/test` installs it)
/// running the configuration at `config` in the foreground, once it listens
/// on `port` (which the configuration binds).
pub fn haproxy(config: &Path, port: u16) -> Service {
    // Debian installs it in /usr/sbin, which not every PATH holds.
    let bin = if Path::new("/usr/sbin/haproxy").exists() { "/usr/sbin/haproxy" } else { "haproxy" };
    let child = Command::new(bin)
        .arg("-db")
        .arg("-f")
        .arg(config)
        .stdout(Stdio::null())
        .spawn()
        .expect("haproxy is not installed: run scripts/test, or apt-get install haproxy");
    wait_for_port(port, "haproxy");
    Service { child, url: format!("http://127.0.0.1:{port}") }
}

/// Azurite's blob service (npm `azurite`; `scripts/test` installs it and sets
/// GRIDFN_AZURITE_BIN) on a free loopback port, in memory.
pub fn azurite() -> Service {
    let installed = repo("target/azurite/node_modules/.bin/azurite-blob");
    let bin = std::env::var("GRIDFN_AZURITE_BIN").unwrap_or_else(|_| {
        if installed.exists() { installed.to_string_lossy().into_owned() } else { "azurite-blob".into() }
    });
    let port = free_port();
    let child = Command::new(&bin)
        .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string(), "--inMemoryPersistence"])
        .args(["--skipApiVersionCheck", "--loose", "--disableTelemetry", "--silent"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start Azurite ({bin}: {e}): run scripts/test, which installs it"));
    wait_for_port(port, "Azurite");
    Service { child, url: format!("http://127.0.0.1:{port}/devstoreaccount1") }
}

/// The Python venv with wordllama and chromadb (samples/embeddings/requirements.txt),
/// made by `tests/python/setup.sh` (scripts/test runs it; so does the first
/// test that needs it, once per test process, so parallel tests never race pip).
fn ai_venv() -> &'static Path {
    static VENV: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    VENV.get_or_init(|| {
        let venv = repo("target/ai-venv");
        let output = Command::new("bash")
            .arg(repo("tests/python/setup.sh"))
            .arg(repo("samples/embeddings/requirements.txt"))
            .arg(&venv)
            .output()
            .expect("running tests/python/setup.sh");
        assert!(
            output.status.success(),
            "tests/python/setup.sh (embeddings) failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        venv
    })
}

/// A real Chroma (`chroma run`, PyPI `chromadb`) on a free loopback port, with
/// its data in a temporary folder; killed when dropped. Telemetry is off, and
/// tests only hand it embeddings, so it never reaches the network.
pub struct Chroma {
    service: Service,
    _data: tempfile::TempDir,
}

impl Chroma {
    /// e.g. `http://127.0.0.1:PORT`; the REST API v2 is under `/api/v2`.
    pub fn url(&self) -> &str {
        &self.service.url
    }
}

pub fn chroma() -> Chroma {
    let bin = ai_venv().join("bin/chroma");
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let child = Command::new(&bin)
        .args(["run", "--host", "127.0.0.1", "--port", &port.to_string(), "--path"])
        .arg(data.path())
        .env("ANONYMIZED_TELEMETRY", "False")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    let mut chroma = Chroma { service: Service { child, url: format!("http://127.0.0.1:{port}") }, _data: data };
    let heartbeat = format!("{}/api/v2/heartbeat", chroma.url());
    let client = Client::new();
    for _ in 0..300 {
        if client.get(&heartbeat).send().is_ok_and(|r| r.status().is_success()) {
            return chroma;
        }
        if let Ok(Some(status)) = chroma.service.child.try_wait() {
            panic!("chroma run exited ({status}) before answering {heartbeat}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("Chroma did not answer {heartbeat} within 30 s");
}

/// The OpenAI-compatible embeddings server (`samples/embeddings/server.py`,
/// wordllama, 256 dimensions) on a free loopback port, demanding
/// [`EMBEDDINGS_KEY`]; killed when dropped.
pub struct EmbeddingsServer {
    service: Service,
    client: Client,
}

/// The API key the test embeddings server demands (Bearer for `/v1`, `api-key` for Azure's shape).
pub const EMBEDDINGS_KEY: &str = "embeddings-test-key";

/// One embeddings call the server answered, from `GET /_control/calls`.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct Call {
    /// When it arrived, unix seconds.
    pub time: f64,
    pub status: u16,
    /// How many texts it asked to embed.
    pub inputs: usize,
}

impl EmbeddingsServer {
    /// `http://127.0.0.1:PORT`; append `/v1/embeddings` or
    /// `/openai/deployments/{d}/embeddings?api-version=...`.
    pub fn url(&self) -> &str {
        &self.service.url
    }

    /// The next `count` embedding calls answer `status` (with `Retry-After` when given).
    pub fn fail(&self, status: u16, count: u32, retry_after: Option<u64>) {
        let mut fail = serde_json::json!({"status": status, "count": count});
        if let Some(seconds) = retry_after {
            fail["retry_after"] = seconds.into();
        }
        self.control(serde_json::json!({ "fail": fail }));
    }

    /// Clears the failure switch and the call log.
    pub fn reset(&self) {
        self.control(serde_json::json!({"reset": true}));
    }

    /// Every embeddings call since the start (or the last reset), in order.
    pub fn calls(&self) -> Vec<Call> {
        let response = self.client.get(format!("{}/_control/calls", self.url())).send().unwrap();
        assert!(response.status().is_success(), "GET /_control/calls: {}", response.status());
        response.json().unwrap()
    }

    fn control(&self, command: serde_json::Value) {
        let response = self.client.post(format!("{}/_control", self.url())).json(&command).send().unwrap();
        assert!(response.status().is_success(), "POST /_control {command}: {}", response.status());
    }
}

pub fn embeddings_server() -> EmbeddingsServer {
    let python = ai_venv().join("bin/python");
    // Port 0: the server binds a free port itself and names it on its first
    // line, so no other process can take the port between choosing and binding.
    let mut child = Command::new(&python)
        .arg(repo("samples/embeddings/server.py"))
        .args(["--host", "127.0.0.1", "--port", "0", "--key", EMBEDDINGS_KEY, "--quiet"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", python.display()));
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let Some(url) = line.trim().strip_prefix("listening on ") else {
        let _ = child.kill();
        panic!("samples/embeddings/server.py did not start (first line: {line:?}; its stderr is above)");
    };
    EmbeddingsServer { service: Service { child, url: url.to_owned() }, client: Client::new() }
}
