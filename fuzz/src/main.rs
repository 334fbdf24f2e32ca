//! gridfn's fuzz targets, in one binary: `gridfn-fuzz TARGET [PATH...]`.
//!
//! `fuzz/run` builds it with AFL++'s coverage instrumentation
//! (`--cfg gridfn_afl`); then, given no path, it is AFL's persistent-mode
//! target and reads each test case from standard input. Given paths (files,
//! or folders of files), any build replays them once each and reports the
//! first one that panics: `cargo run -p gridfn-fuzz -- webhook CRASH` is how
//! a crash is reproduced under a debugger.
//!
//! gridfn's modules are compiled into this crate (see Cargo.toml for why),
//! so `crate::event` here is gridfn's `event` module, unchanged.

// Most of gridfn is unused by the targets.
#![allow(dead_code)]

include!(concat!(env!("OUT_DIR"), "/gridfn_modules.rs"));

mod harness;
mod targets;

fn main() {
    let mut args = std::env::args().skip(1);
    let names = || targets::TARGETS.map(|(name, _)| name).join(", ");
    let Some(name) = args.next() else {
        eprintln!("usage: gridfn-fuzz TARGET [PATH...]   (targets: {})", names());
        std::process::exit(2);
    };
    let Some((_, target)) = targets::TARGETS.into_iter().find(|(n, _)| *n == name) else {
        eprintln!("no target {name:?}; the targets are {}", names());
        std::process::exit(2);
    };
    let paths: Vec<String> = args.collect();
    if paths.is_empty() {
        harness::fuzz(target);
    } else {
        harness::replay(target, &paths);
    }
}
