//! `gridfn new` and `gridfn up` as a new user meets them: a handler project
//! in each language, created in an empty folder, passes the unit test it
//! comes with (by the command `gridfn new` prints), and `gridfn up` on the
//! manifest lines it prints builds it and serves it, so its own sample event
//! runs; a failing build stops `gridfn up` naming the handler; `gridfn new`
//! refuses what it must not do.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::{KEY, follow_log, repo};

/// The line each template's handler logs for its sample event.
const SAMPLE_LINE: &str = "order o-1001 received, amount 42.50 (Contoso.Orders.OrderPlaced e-1001)";

/// Runs `gridfn ARGS` in `cwd` to completion.
fn gridfn_in(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gridfn")).args(args).current_dir(cwd).output().expect("running gridfn")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `gridfn new NAME --lang LANG` in a new empty folder: that folder, and
/// what it printed (the manifest on stdout, what to do next on stderr).
fn new_project(name: &str, lang: &str) -> (tempfile::TempDir, String, String) {
    let work = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let new = gridfn_in(work.path(), &["new", name, "--lang", lang]);
    let (stdout, stderr) = (text(&new.stdout), text(&new.stderr));
    assert!(new.status.success(), "gridfn new failed:\n{stderr}");
    eprintln!("gridfn new --lang {lang}: {:.1} s", started.elapsed().as_secs_f64());
    (work, stdout, stderr)
}

/// Runs the unit-test command `gridfn new` printed (`(cd DIR && COMMAND)`).
fn run_its_test(work: &Path, printed: &str, lang: &str) {
    let line = printed.lines().find(|line| line.contains("# its unit tests")).expect("a test command");
    let command = line.trim().strip_prefix('(').unwrap().split(")   #").next().unwrap();
    let started = Instant::now();
    let output = Command::new("sh").args(["-c", command]).current_dir(work).env_remove("CARGO_TARGET_DIR").output();
    let output = output.unwrap();
    assert!(output.status.success(), "{command}:\n{}\n{}", text(&output.stdout), text(&output.stderr));
    eprintln!("{lang} unit test: {:.1} s", started.elapsed().as_secs_f64());
}

/// A running `gridfn up` and its log.
struct Up {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Up {
    /// `gridfn up` in `cwd` on port 0, with the test's key; waits until it
    /// serves (builds included), or until it exits, for up to `limit`.
    fn start(cwd: &Path, limit: Duration) -> Result<(Up, String), (Up, String)> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_gridfn"))
            .args(["up", "--listen", "127.0.0.1:0"])
            .current_dir(cwd)
            .env("GRIDFN_KEY", KEY)
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting gridfn up");
        let (log, ready) = follow_log(child.stderr.take().unwrap());
        // The sender is dropped once the log has ended, every line in.
        let addr = ready.recv_timeout(limit);
        let up = Up { child, log };
        match addr {
            Ok(addr) => Ok((up, addr)),
            Err(_) => {
                let log = up.text();
                Err((up, log))
            }
        }
    }

    fn text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The manifest `gridfn new` printed, with the tests' compile cache (so a
/// later run does not compile the component again).
fn write_manifest(work: &Path, printed: &str) {
    let mut manifest: toml::Table = toml::from_str(printed).expect("gridfn new prints a manifest");
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("gridfn-e2e-cache");
    let server = manifest["server"].as_table_mut().unwrap();
    server.insert("cache_dir".into(), cache.to_string_lossy().into_owned().into());
    std::fs::write(work.join("gridfn.toml"), toml::to_string(&manifest).unwrap()).unwrap();
}

/// A new project in `lang` passes its test, and `gridfn up` builds it and
/// runs its sample event.
fn a_new_handler_serves_its_sample_event(name: &str, lang: &str) {
    let (work, printed_manifest, printed_steps) = new_project(name, lang);
    let project = work.path().join(name);
    assert!(project.join("README.md").is_file() && project.join("events/sample.json").is_file());
    if lang == "rust" {
        // The repository's target folder, where the SDK and its dependencies
        // are already built for gridfn's own handlers (the template builds
        // with the same profile): only the new crate is compiled.
        let shared = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| repo("target"), std::path::PathBuf::from);
        std::fs::create_dir_all(&shared).unwrap();
        std::os::unix::fs::symlink(&shared, project.join("target")).unwrap();
    }
    run_its_test(work.path(), &printed_steps, lang);
    write_manifest(work.path(), &printed_manifest);

    let started = Instant::now();
    let (up, addr) = Up::start(work.path(), Duration::from_secs(600)).unwrap_or_else(|(_, log)| panic!("{log}"));
    eprintln!("{lang}: gridfn up built and started in {:.1} s", started.elapsed().as_secs_f64());
    let built = up.text().lines().find(|line| line.contains(&format!("built {name} in "))).map(str::to_owned);
    eprintln!("{lang}: {}", built.unwrap_or_else(|| panic!("no build in the log:\n{}", up.text())));

    let response = reqwest::blocking::Client::new()
        .post(format!("http://{addr}/api/events/{name}"))
        .header("aeg-event-type", "Notification")
        .header("aeg-sas-key", KEY)
        .header("content-type", "application/json")
        .body(std::fs::read(project.join("events/sample.json")).unwrap())
        .timeout(Duration::from_secs(60))
        .send()
        .unwrap();
    assert_eq!(response.status(), 200, "{}", up.text());
    let deadline = Instant::now() + Duration::from_secs(5);
    while !up.text().contains(SAMPLE_LINE) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(up.text().contains(&format!("INFO handler: {SAMPLE_LINE}")), "{}", up.text());
}

#[test]
fn a_new_rust_handler_passes_its_test_and_gridfn_up_builds_and_serves_it() {
    a_new_handler_serves_its_sample_event("orders-rs", "rust");
}

#[test]
fn a_new_python_handler_passes_its_test_and_gridfn_up_builds_and_serves_it() {
    a_new_handler_serves_its_sample_event("orders-py", "python");
}

#[test]
fn a_new_javascript_handler_passes_its_test_and_gridfn_up_builds_and_serves_it() {
    a_new_handler_serves_its_sample_event("orders-js", "js");
}

#[test]
fn gridfn_up_stops_at_a_failing_build_and_names_its_handler() {
    let work = tempfile::tempdir().unwrap();
    std::fs::write(
        work.path().join("gridfn.toml"),
        "[server]\nkeys = [\"env:GRIDFN_KEY\"]\n\
         [[handler]]\nname = \"fine\"\nmodule = \"fine.wasm\"\nbuild = \"echo building fine\"\n\
         [[handler]]\nname = \"broken\"\nmodule = \"broken.wasm\"\nbuild = \"echo 'error: no such thing' >&2; exit 4\"\n",
    )
    .unwrap();
    let (mut up, log) = Up::start(work.path(), Duration::from_secs(60)).map(|_| panic!("it served")).unwrap_err();
    assert!(log.contains("[fine] building fine"), "{log}");
    assert!(log.contains("[broken] error: no such thing"), "each line under its handler's name: {log}");
    assert!(log.contains("error: the build of broken failed (exit status: 4)"), "{log}");
    assert!(!up.child.wait().unwrap().success());
}

#[test]
fn gridfn_up_says_how_to_add_a_missing_wasm_target_before_building() {
    let work = tempfile::tempdir().unwrap();
    // A toolchain without wasm32-wasip2, as `rustup target list --installed` shows it.
    let bin = work.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::fs::write(bin.join("rustup"), "#!/bin/sh\necho x86_64-unknown-linux-gnu\n").unwrap();
    std::process::Command::new("chmod").arg("+x").arg(bin.join("rustup")).status().unwrap();
    std::fs::write(
        work.path().join("gridfn.toml"),
        "[server]\nallow_anonymous = true\n\
         [[handler]]\nname = \"h\"\nmodule = \"h.wasm\"\nbuild = \"touch built; cargo build --release --target wasm32-wasip2\"\n",
    )
    .unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let output =
        Command::new(env!("CARGO_BIN_EXE_gridfn")).arg("up").current_dir(work.path()).env("PATH", path).output();
    let output = output.unwrap();
    let stderr = text(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("the build of h is for wasm32-wasip2"), "{stderr}");
    assert!(stderr.contains("\n    rustup target add wasm32-wasip2\n"), "{stderr}");
    assert!(!work.path().join("built").exists(), "nothing was built");
}

#[test]
fn gridfn_new_refuses_a_folder_in_use_a_bad_name_and_a_missing_sdk() {
    let work = tempfile::tempdir().unwrap();
    std::fs::create_dir(work.path().join("taken")).unwrap();
    std::fs::write(work.path().join("taken/notes.txt"), "mine").unwrap();
    let taken = gridfn_in(work.path(), &["new", "orders", "--dir", "taken"]);
    assert!(!taken.status.success());
    assert!(text(&taken.stderr).contains("taken already exists and is not empty"), "{}", text(&taken.stderr));
    assert_eq!(std::fs::read_dir(work.path().join("taken")).unwrap().count(), 1, "nothing written into it");

    for (name, why) in
        [("Orders", "use lowercase letters"), ("9lives", "start it with a letter"), ("a b", "use lowercase")]
    {
        let bad = gridfn_in(work.path(), &["new", name]);
        assert!(!bad.status.success(), "{name}");
        assert!(text(&bad.stderr).contains(why), "{name}: {}", text(&bad.stderr));
        assert!(!work.path().join(name).exists(), "{name}: no folder made");
    }

    let no_sdk = Command::new(env!("CARGO_BIN_EXE_gridfn"))
        .args(["new", "orders", "--lang", "python", "--sdk"])
        .arg(work.path().join("nowhere"))
        .current_dir(work.path())
        .output()
        .unwrap();
    assert!(!no_sdk.status.success());
    assert!(text(&no_sdk.stderr).contains("pass --sdk PATH with the sdk/ folder of a gridfn checkout"));
    assert!(!work.path().join("orders").exists());

    // An empty folder is fine; `gridfn new … > gridfn.toml` (the shell makes
    // the file first) writes a whole manifest, and `gridfn check` shows its build.
    std::fs::create_dir(work.path().join("empty")).unwrap();
    let made = Command::new("sh")
        .args(["-c", &format!("{:?} new orders --dir empty --lang js > gridfn.toml", env!("CARGO_BIN_EXE_gridfn"))])
        .current_dir(work.path())
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", text(&made.stderr));
    // `gridfn check` compiles each module, so a real component stands in for the build.
    std::fs::copy(crate::support::component("scripted"), work.path().join("empty/orders.wasm")).unwrap();
    let check = Command::new(env!("CARGO_BIN_EXE_gridfn"))
        .arg("check")
        .current_dir(work.path())
        .env("GRIDFN_KEY", KEY)
        .output();
    let check = check.unwrap();
    let shown = text(&check.stdout);
    assert!(check.status.success(), "{}", text(&check.stderr));
    assert!(
        shown.contains("orders: built by `node ")
            && shown.ends_with(&format!("in {}\n", work.path().join("empty").display())),
        "{shown}"
    );
}
