//! Running a target: under AFL++ (persistent mode, one process for many test
//! cases), or over files.

use std::io::Read;
use std::path::{Path, PathBuf};

/// AFL++'s runtime (afl-compiler-rt.o, linked in by `fuzz/run`).
#[cfg(gridfn_afl)]
mod afl {
    unsafe extern "C" {
        /// Starts the fork server here, after the process has set itself up.
        pub fn __afl_manual_init();
        /// True while AFL has another test case for this process (at most
        /// `max` before a fresh process).
        pub fn __afl_persistent_loop(max: u32) -> i32;
    }

    /// afl-fuzz scans the binary for these markers to use persistent mode and
    /// the deferred fork server; read at run time so the linker keeps them.
    pub static PERSISTENT: &[u8] = b"##SIG_AFL_PERSISTENT##\0";
    pub static DEFERRED: &[u8] = b"##SIG_AFL_DEFER_FORKSRV##\0";
}

/// Runs `target` on each test case AFL++ sends. A panic aborts the process,
/// which is how AFL tells a crash.
#[cfg(gridfn_afl)]
pub fn fuzz(target: fn(&[u8])) {
    std::panic::set_hook(Box::new(|info| {
        eprintln!("{info}");
        std::process::abort();
    }));
    // SAFETY: reading the markers' slices; calling into AFL++'s runtime,
    // which is linked in, as its documentation prescribes.
    unsafe {
        std::ptr::read_volatile(&afl::PERSISTENT);
        std::ptr::read_volatile(&afl::DEFERRED);
        afl::__afl_manual_init();
    }
    let mut input = Vec::new();
    while unsafe { afl::__afl_persistent_loop(10_000) } != 0 {
        input.clear();
        std::io::stdin().lock().read_to_end(&mut input).expect("reading the test case from stdin");
        target(&input);
    }
}

/// Without AFL's runtime there is nothing to fuzz with: one test case from
/// standard input.
#[cfg(not(gridfn_afl))]
pub fn fuzz(target: fn(&[u8])) {
    let mut input = Vec::new();
    std::io::stdin().read_to_end(&mut input).expect("reading a test case from stdin");
    target(&input);
}

/// Runs `target` once on every file under `paths`; on a panic, names the
/// file and exits with status 1.
pub fn replay(target: fn(&[u8]), paths: &[String]) {
    let mut files = Vec::new();
    for path in paths {
        collect(Path::new(path), &mut files);
    }
    files.sort();
    for file in &files {
        let input = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        if std::panic::catch_unwind(|| target(&input)).is_err() {
            eprintln!("{}: the target panicked", file.display());
            std::process::exit(1);
        }
    }
    eprintln!("replayed {} inputs, no panic", files.len());
}

fn collect(path: &Path, files: &mut Vec<PathBuf>) {
    match std::fs::read_dir(path) {
        Ok(entries) => entries.flatten().for_each(|entry| collect(&entry.path(), files)),
        Err(_) if path.is_file() => files.push(path.to_owned()),
        Err(e) => panic!("{}: {e}", path.display()),
    }
}
