//! `gridfn up`'s first step, as `spin up --build` does: every handler's
//! `build` command (`[[handler]] build`, run by `sh -c` in its `workdir`),
//! each distinct one once, in manifest order, with its output streamed to
//! stderr under the names of the handlers it builds. The first that fails
//! stops `gridfn up`, naming them.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::bail;

use crate::config::{Build, Manifest};

/// The Rust target handlers are built for.
const WASM_TARGET: &str = "wasm32-wasip2";

/// rustc's note when a crate is built for a target the toolchain lacks.
const TARGET_MISSING: &str = "target may not be installed";

/// One build command and the handlers it builds.
#[derive(Debug, PartialEq)]
struct Step {
    build: Build,
    handlers: Vec<String>,
}

impl Step {
    fn label(&self) -> String {
        self.handlers.join(", ")
    }
}

/// Runs the build commands of the manifest at `config`.
pub fn run(config: &Path) -> anyhow::Result<()> {
    let steps = steps(Manifest::load_builds(config)?);
    let rust: Vec<&Step> = steps.iter().filter(|step| step.build.command.contains(WASM_TARGET)).collect();
    if let Some(first) = rust.first() {
        let names: Vec<String> = rust.iter().map(|step| step.label()).collect();
        check_wasm_target(&first.build.workdir, &names.join(", "))?;
    }
    for step in &steps {
        run_step(step)?;
    }
    Ok(())
}

/// The distinct builds, in the order their first handler is listed.
fn steps(builds: Vec<(String, Option<Build>)>) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    for (handler, build) in builds {
        let Some(build) = build else { continue };
        match steps.iter_mut().find(|step| step.build == build) {
            Some(step) => step.handlers.push(handler),
            None => steps.push(Step { build, handlers: vec![handler] }),
        }
    }
    steps
}

/// Fails, with the command that fixes it, when rustup manages the Rust
/// toolchain in `workdir` and it lacks `wasm32-wasip2`. Without rustup
/// there is nothing to ask; the build says so itself.
fn check_wasm_target(workdir: &Path, handlers: &str) -> anyhow::Result<()> {
    let Ok(output) = Command::new("rustup").args(["target", "list", "--installed"]).current_dir(workdir).output()
    else {
        return Ok(());
    };
    let installed = String::from_utf8_lossy(&output.stdout);
    if output.status.success() && !installed.lines().any(|line| line.trim() == WASM_TARGET) {
        bail!(
            "the build of {handlers} is for {WASM_TARGET}, which this Rust toolchain does not have; \
             add it with:\n\n    rustup target add {WASM_TARGET}\n"
        );
    }
    Ok(())
}

fn run_step(step: &Step) -> anyhow::Result<()> {
    let Build { command, workdir } = &step.build;
    let label = step.label();
    if !workdir.is_dir() {
        bail!("cannot build {label}: its workdir {} is not a folder", workdir.display());
    }
    tracing::info!("building {label}: {command} (in {})", workdir.display());
    let started = Instant::now();
    let mut child = Command::new("sh")
        .args(["-c", command])
        .current_dir(workdir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot start the build of {label} (sh -c {command:?}): {e}"))?;
    let target_missing = AtomicBool::new(false);
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let status = std::thread::scope(|scope| {
        for output in [stdout.map(|o| Box::new(o) as Box<dyn Read + Send>), stderr.map(|e| Box::new(e) as _)] {
            let (label, target_missing) = (&label, &target_missing);
            scope.spawn(move || {
                for line in output.into_iter().flat_map(|o| BufReader::new(o).lines().map_while(Result::ok)) {
                    if line.contains(TARGET_MISSING) {
                        target_missing.store(true, Ordering::Relaxed);
                    }
                    eprintln!("[{label}] {line}");
                }
            });
        }
        child.wait()
    })?;
    if !status.success() {
        let hint = match target_missing.load(Ordering::Relaxed) {
            true => {
                format!("\nthe {WASM_TARGET} target is missing; add it with:\n\n    rustup target add {WASM_TARGET}\n")
            }
            false => String::new(),
        };
        bail!("the build of {label} failed ({status}): {command} (in {}){hint}", workdir.display());
    }
    tracing::info!("built {label} in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(command: &str, workdir: &str) -> Option<Build> {
        Some(Build { command: command.into(), workdir: workdir.into() })
    }

    #[test]
    fn handlers_sharing_a_command_and_workdir_share_one_build_in_manifest_order() {
        let steps = steps(vec![
            ("audit".into(), build("cargo build -p a", "/app")),
            ("plain".into(), None),
            ("flagged".into(), build("make", "/app")),
            ("approved".into(), build("make", "/app")),
            ("elsewhere".into(), build("make", "/other")),
        ]);
        let runs: Vec<(&str, &str, String)> =
            steps.iter().map(|s| (s.build.command.as_str(), s.build.workdir.to_str().unwrap(), s.label())).collect();
        assert_eq!(
            runs,
            [
                ("cargo build -p a", "/app", "audit".to_owned()),
                ("make", "/app", "flagged, approved".to_owned()),
                ("make", "/other", "elsewhere".to_owned()),
            ]
        );
    }

    #[test]
    fn a_failing_build_names_its_handlers_and_the_next_is_not_run() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = dir.path().join("gridfn.toml");
        std::fs::write(
            &manifest,
            "[[handler]]\nname = \"ok\"\nmodule = \"ok.wasm\"\nbuild = \"touch ran-ok\"\n\
             [[handler]]\nname = \"broken\"\nmodule = \"b.wasm\"\nbuild = \"echo oops >&2; exit 3\"\n\
             [[handler]]\nname = \"later\"\nmodule = \"l.wasm\"\nbuild = \"touch ran-later\"\n",
        )
        .unwrap();
        let error = run(&manifest).unwrap_err().to_string();
        assert!(error.starts_with("the build of broken failed (exit status: 3): echo oops"), "{error}");
        assert!(dir.path().join("ran-ok").exists(), "builds run in the manifest's folder");
        assert!(!dir.path().join("ran-later").exists(), "nothing runs after a failure");
    }
}
