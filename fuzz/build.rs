//! Lists gridfn's modules for `src/main.rs` (each a `#[path]` into
//! runtime/src, read from runtime/src/lib.rs so a new module needs no edit
//! here), and refuses to build when this crate's dependencies are not
//! gridfn's: the modules are compiled here, against these dependencies.

use std::path::Path;

/// The lines of a manifest's section `header`, up to the next section,
/// without comments and blank lines.
fn section(manifest: &str, header: &str) -> String {
    let start =
        manifest.find(&format!("\n{header}\n")).unwrap_or_else(|| panic!("no {header} section")) + header.len() + 2;
    let rest = &manifest[start..];
    // Up to the next table header.
    let end = rest.find("\n[").map_or(rest.len(), |i| i + 1);
    let body = &rest[..end];
    let lines = body.lines().filter(|line| !line.trim_start().starts_with('#') && !line.trim().is_empty());
    lines.collect::<Vec<_>>().join("\n")
}

fn main() {
    let fuzz = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let runtime = Path::new(&fuzz).join("../runtime");
    for file in ["../runtime/Cargo.toml", "../runtime/src/lib.rs", "Cargo.toml"] {
        println!("cargo::rerun-if-changed={file}");
    }
    // Set by fuzz/run for the AFL++ build.
    println!("cargo::rustc-check-cfg=cfg(gridfn_afl)");

    let ours = std::fs::read_to_string(Path::new(&fuzz).join("Cargo.toml")).expect("fuzz/Cargo.toml");
    let gridfn = std::fs::read_to_string(runtime.join("Cargo.toml")).expect("runtime/Cargo.toml");
    let copies = [("[dependencies]", "[dependencies]"), ("[target.'cfg(all())'.dependencies]", "[dev-dependencies]")];
    for (ours_header, gridfn_header) in copies {
        if section(&ours, ours_header) != section(&gridfn, gridfn_header) {
            panic!(
                "fuzz/Cargo.toml's {ours_header} differ from runtime/Cargo.toml's {gridfn_header}; copy \
                 gridfn's over (the fuzz binary compiles gridfn's source against them; see fuzz/Cargo.toml)"
            );
        }
    }

    let lib = std::fs::read_to_string(runtime.join("src/lib.rs")).expect("runtime/src/lib.rs");
    let mut modules = String::new();
    for name in lib.lines().filter_map(|line| line.trim().strip_prefix("pub mod ")?.strip_suffix(';')) {
        let file = runtime.join(format!("src/{name}.rs"));
        let file = if file.exists() { file } else { runtime.join(format!("src/{name}/mod.rs")) };
        let file = file.canonicalize().unwrap_or_else(|e| panic!("gridfn module {name}: {e}"));
        modules.push_str(&format!("#[path = {:?}]\npub mod {name};\n", file.display().to_string()));
    }
    let out = Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("gridfn_modules.rs");
    std::fs::write(out, modules).expect("writing gridfn_modules.rs");
}
