//! `gridfn new`: a handler project in Rust, Python or JavaScript, from the
//! templates in `runtime/templates/`, that builds to a component and passes
//! its own test unedited; and the `[[handler]]` lines (with the `build`
//! command `gridfn up` runs) that put it in a manifest.
//!
//! The SDKs are not published to any registry, so a project points at the
//! gridfn checkout's `sdk/` folder (found through the path this binary was
//! built from, or `--sdk`), and builds with the toolchains that checkout
//! installs for its own handlers: Cargo's `wasm32-wasip2` target,
//! componentize-py in `sdk/python/venv.sh`'s venv, and the pinned JavaScript
//! toolchain of `sdk/js/toolchain/install.sh`.
//!
//! [`build`] is `gridfn up`'s first step: running those build commands.

pub mod build;
mod templates;

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

use crate::config::HandlerName;

/// `gridfn new`'s arguments.
#[derive(clap::Args, Debug)]
pub struct Options {
    /// The handler's name, as gridfn.toml will call it: lowercase letters,
    /// digits, `-` and `_`, starting with a letter (it also names the crate,
    /// module or package, and the `.wasm`).
    pub name: String,
    /// The language to write it in.
    #[arg(long, value_enum, default_value_t = Lang::Rust)]
    pub lang: Lang,
    /// The folder to create; default `./NAME`. It must not exist, or be empty.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// gridfn's `sdk/` folder, which the project depends on (the SDKs are
    /// not on crates.io, PyPI or npm); default: that of the checkout this
    /// gridfn was built from.
    #[arg(long)]
    pub sdk: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    Rust,
    Python,
    Js,
}

impl fmt::Display for Lang {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Lang::Rust => "Rust",
            Lang::Python => "Python",
            Lang::Js => "JavaScript",
        })
    }
}

/// A new handler's name: a [`HandlerName`] that is also a crate, Python
/// module and npm package name once `-` becomes `_` where needed, so it
/// starts with a letter; and not `gridfn`, which would hide the SDK's
/// package from a Python handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectName(HandlerName);

impl ProjectName {
    pub fn parse(name: &str) -> Result<ProjectName, String> {
        let handler = HandlerName::parse(name)?;
        if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
            return Err("start it with a letter (it also names a crate, a Python module or an npm package)".into());
        }
        if name == "gridfn" {
            return Err("`gridfn` is the SDK's own name; choose another".into());
        }
        Ok(ProjectName(handler))
    }

    /// As gridfn.toml, Cargo and npm call it.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// As an identifier: the Python module and the `.wasm` file.
    pub fn module(&self) -> String {
        self.0.replace('-', "_")
    }
}

/// Where the project will be, and what it is built with.
struct Project {
    name: ProjectName,
    lang: Lang,
    /// The folder as the user named it: manifest paths are written with it.
    dir: PathBuf,
    /// The `sdk/` folder, absolute.
    sdk: PathBuf,
}

impl Project {
    /// The command that runs its unit tests, in its folder.
    fn test_command(&self) -> String {
        match self.lang {
            Lang::Rust => "cargo test".into(),
            Lang::Python => format!(
                "PYTHONPATH={} \"$(bash {})\" -m pytest -q",
                self.sdk_path("python/src"),
                self.sdk_path("python/venv.sh")
            ),
            Lang::Js => "npm install --no-audit --no-fund && node --test".into(),
        }
    }

    /// The command that builds its component, in its folder.
    fn build_command(&self) -> String {
        let module = self.name.module();
        match self.lang {
            Lang::Rust => "cargo build --release --target wasm32-wasip2".into(),
            Lang::Python => format!(
                "PYTHONPATH={} \"$(bash {})\" -m gridfn.build {module} -p . -o {module}.wasm",
                self.sdk_path("python/src"),
                self.sdk_path("python/venv.sh")
            ),
            Lang::Js => format!(
                "node {} build . -o {module}.wasm --toolchain \"$(bash {})\"",
                self.sdk_path("js/bin/gridfn-js.js"),
                self.sdk_path("js/toolchain/install.sh")
            ),
        }
    }

    /// The component its build writes, relative to its folder.
    fn module_path(&self) -> String {
        match self.lang {
            Lang::Rust => format!("target/wasm32-wasip2/release/{}.wasm", self.name.module()),
            Lang::Python | Lang::Js => format!("{}.wasm", self.name.module()),
        }
    }

    /// A path in the SDK, quoted for `sh` when it needs to be.
    fn sdk_path(&self, relative: &str) -> String {
        shell_word(&self.sdk.join(relative).to_string_lossy())
    }

    /// What each placeholder of the templates stands for (see
    /// `runtime/templates/README.md`).
    fn values(&self) -> Vec<(&'static str, String)> {
        let sdk = self.sdk.to_string_lossy();
        vec![
            ("name", self.name.as_str().to_owned()),
            ("module", self.name.module()),
            ("sdk_toml", toml_string(&sdk)),
            ("sdk_js_json", serde_json::Value::String(format!("file:{}", self.sdk.join("js").display())).to_string()),
            ("test", self.test_command()),
            ("build", self.build_command()),
        ]
    }

    /// The `[[handler]]` table for a gridfn.toml in the working directory
    /// (the folder as the user named it is relative to it).
    fn manifest_lines(&self) -> String {
        let dir = self.dir.to_string_lossy();
        let dir = dir.trim_end_matches('/');
        format!(
            "[[handler]]\nname = {}\nmodule = {}\nbuild = {}\nworkdir = {}\n",
            toml_string(self.name.as_str()),
            toml_string(&format!("{dir}/{}", self.module_path())),
            toml_string(&self.build_command()),
            toml_string(dir),
        )
    }
}

/// The start of a gridfn.toml, for when there is none yet.
const NEW_MANIFEST: &str = "\
# gridfn.toml (README \"Configuration reference\" lists every key).
[server]
# The key senders must present (?code=KEY, aeg-sas-key or x-functions-key).
keys = [\"env:GRIDFN_KEY\"]

";

/// `gridfn new`: writes the project, then prints the manifest lines on
/// stdout (so `gridfn new NAME >> gridfn.toml` adds them) and what to do
/// next on stderr.
pub fn command(options: Options) -> anyhow::Result<()> {
    let name = ProjectName::parse(&options.name).map_err(|why| anyhow::anyhow!("{:?}: {why}", options.name))?;
    let sdk = locate_sdk(options.sdk.as_deref(), options.lang)?;
    let dir = options.dir.unwrap_or_else(|| PathBuf::from(name.as_str()));
    let project = Project { name, lang: options.lang, dir, sdk };
    create(&project)?;

    // Empty counts as none: `gridfn new NAME > gridfn.toml` makes it first.
    let manifest_exists = std::fs::metadata("gridfn.toml").is_ok_and(|file| file.len() > 0);
    eprintln!(
        "created {}: a gridfn handler in {} (its README.md says what is where)",
        project.dir.display(),
        project.lang
    );
    eprintln!(
        "\n{}\n",
        match manifest_exists {
            true => "add these lines to gridfn.toml (they are all of stdout: `gridfn new ... >> gridfn.toml`):",
            false =>
                "there is no gridfn.toml here; this one serves the handler (it is all of stdout: `gridfn new ... > gridfn.toml`):",
        }
    );
    let mut stdout = std::io::stdout().lock();
    if !manifest_exists {
        stdout.write_all(NEW_MANIFEST.as_bytes())?;
    }
    stdout.write_all(project.manifest_lines().as_bytes())?;
    stdout.flush()?;
    drop(stdout);
    let dir = shell_word(&project.dir.to_string_lossy());
    eprintln!("\nthen:\n");
    eprintln!("  (cd {dir} && {})   # its unit tests", project.test_command());
    if project.lang == Lang::Rust {
        eprintln!("  rustup target add wasm32-wasip2   # once, if `gridfn up` says it is missing");
    }
    eprintln!("  GRIDFN_KEY=dev-key gridfn up   # builds every handler in gridfn.toml, then serves it");
    eprintln!(
        "  curl -H 'aeg-event-type: Notification' -H 'aeg-sas-key: dev-key' -d @{}/events/sample.json \
         http://127.0.0.1:7071/api/events/{}",
        project.dir.display(),
        project.name.as_str()
    );
    Ok(())
}

/// Writes the project's files into its folder, which must not exist or be
/// empty: `gridfn new` never overwrites anything.
fn create(project: &Project) -> anyhow::Result<()> {
    let dir = &project.dir;
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                bail!(
                    "{} already exists and is not empty; gridfn new writes only into a new or empty folder",
                    dir.display()
                );
            }
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => bail!("cannot use {} for the project: {error}", dir.display()),
    }
    let values = project.values();
    let values: Vec<(&str, &str)> = values.iter().map(|(key, value)| (*key, value.as_str())).collect();
    for file in templates::files(project.lang) {
        let path = dir.join(templates::render(file.path, &values));
        std::fs::create_dir_all(path.parent().unwrap_or(dir))
            .with_context(|| format!("cannot create {}", path.display()))?;
        std::fs::write(&path, templates::render(file.text, &values))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    // The versions gridfn's own handlers build with, so the first build uses
    // crates Cargo already has (Cargo drops the entries the project does not use).
    let lock = project.sdk.join("../Cargo.lock");
    if project.lang == Lang::Rust && lock.is_file() {
        std::fs::copy(&lock, dir.join("Cargo.lock")).with_context(|| format!("cannot copy {}", lock.display()))?;
    }
    Ok(())
}

/// The SDK folder a project of `lang` depends on: `--sdk`, else the
/// checkout this binary was built from (its source path, kept at compile
/// time), if it is still there. Absolute, since the project may be anywhere.
fn locate_sdk(given: Option<&Path>, lang: Lang) -> anyhow::Result<PathBuf> {
    let (sdk, whence) = match given {
        Some(path) => (path.to_owned(), "given with --sdk"),
        None => {
            (Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk"), "where the checkout gridfn was built from had it")
        }
    };
    let needs = match lang {
        Lang::Rust => "Cargo.toml",
        Lang::Python => "python/src/gridfn/__init__.py",
        Lang::Js => "js/package.json",
    };
    if !sdk.join(needs).is_file() {
        bail!(
            "gridfn's SDK is not at {} ({whence}: no {needs} there); the SDKs are not published to a registry, \
             so pass --sdk PATH with the sdk/ folder of a gridfn checkout",
            sdk.display()
        );
    }
    std::fs::canonicalize(&sdk).with_context(|| format!("cannot resolve {}", sdk.display()))
}

/// `text` as a TOML string.
fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

/// `word` as one `sh` word: as it is when that is safe, else single-quoted.
fn shell_word(word: &str) -> String {
    let safe = !word.is_empty() && word.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-+,:=@%".contains(&b));
    match safe {
        true => word.to_owned(),
        false => format!("'{}'", word.replace('\'', r"'\''")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_must_suit_a_handler_a_crate_a_module_and_a_package() {
        assert_eq!(ProjectName::parse("order-log").unwrap().module(), "order_log");
        assert!(ProjectName::parse("h2").is_ok());
        for (bad, why) in [
            ("Order", "use lowercase letters"),
            ("order log", "use lowercase letters"),
            ("", "use lowercase letters"),
            ("2fast", "start it with a letter"),
            ("-x", "start it with a letter"),
            ("gridfn", "the SDK's own name"),
        ] {
            let error = ProjectName::parse(bad).unwrap_err();
            assert!(error.contains(why), "{bad:?}: {error}");
        }
    }

    #[test]
    fn the_manifest_lines_parse_and_name_the_folder_as_given() {
        let project = Project {
            name: ProjectName::parse("order-log").unwrap(),
            lang: Lang::Python,
            dir: PathBuf::from("handlers/order-log/"),
            sdk: PathBuf::from("/src/grid fn/sdk"),
        };
        let table: toml::Table = toml::from_str(&project.manifest_lines()).unwrap();
        let handler = &table["handler"][0];
        assert_eq!(handler["name"].as_str(), Some("order-log"));
        assert_eq!(handler["module"].as_str(), Some("handlers/order-log/order_log.wasm"));
        assert_eq!(handler["workdir"].as_str(), Some("handlers/order-log"));
        assert_eq!(
            handler["build"].as_str(),
            Some(
                "PYTHONPATH='/src/grid fn/sdk/python/src' \"$(bash '/src/grid fn/sdk/python/venv.sh')\" \
                 -m gridfn.build order_log -p . -o order_log.wasm"
            )
        );
    }

    /// Every placeholder in every template is one `gridfn new` fills in.
    #[test]
    fn every_template_uses_only_placeholders_gridfn_new_fills() {
        for lang in [Lang::Rust, Lang::Python, Lang::Js] {
            let project = Project { name: ProjectName::parse("h").unwrap(), lang, dir: "h".into(), sdk: "/sdk".into() };
            let values = project.values();
            for file in templates::files(lang) {
                for text in [file.path, file.text] {
                    for piece in text.split("{{").skip(1) {
                        let key = piece.split("}}").next().unwrap();
                        assert!(values.iter().any(|(k, _)| *k == key), "{lang} {}: unknown {{{{{key}}}}}", file.path);
                    }
                }
            }
        }
    }

    #[test]
    fn shell_words_are_quoted_only_when_needed() {
        assert_eq!(shell_word("/work/sdk/python/src"), "/work/sdk/python/src");
        assert_eq!(shell_word("/my files/sdk"), "'/my files/sdk'");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
    }

    #[test]
    fn an_sdk_folder_without_the_languages_sdk_is_refused_with_what_to_do() {
        let empty = tempfile::tempdir().unwrap();
        let error = locate_sdk(Some(empty.path()), Lang::Js).unwrap_err().to_string();
        assert!(error.contains("no js/package.json there"), "{error}");
        assert!(error.contains("pass --sdk PATH"), "{error}");
    }
}
