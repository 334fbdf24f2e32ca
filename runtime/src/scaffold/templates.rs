//! The handler templates (`runtime/templates/`), embedded in the binary so
//! `gridfn new` works wherever gridfn is installed, and the one rule that
//! fills them in: every `{{key}}` is replaced by its value.

use super::Lang;

/// One file of a template: where it goes in the new project (itself a
/// template: `{{module}}.py`) and its text.
pub struct File {
    pub path: &'static str,
    pub text: &'static str,
}

macro_rules! file {
    ($path:literal, $source:literal) => {
        File { path: $path, text: include_str!(concat!("../../templates/", $source)) }
    };
}

/// Every project's sample event: an Event Grid delivery its test reads and
/// its README POSTs.
const SAMPLE: File = file!("events/sample.json", "events/sample.json");

const RUST: &[File] = &[
    file!("Cargo.toml", "rust/Cargo.toml.template"),
    file!("src/lib.rs", "rust/src/lib.rs"),
    file!("README.md", "rust/README.md"),
    file!(".gitignore", "rust/gitignore"),
    SAMPLE,
];

const PYTHON: &[File] = &[
    file!("{{module}}.py", "python/handler.py"),
    file!("test_{{module}}.py", "python/test_handler.py"),
    file!("README.md", "python/README.md"),
    file!(".gitignore", "python/gitignore"),
    SAMPLE,
];

const JS: &[File] = &[
    file!("handler.js", "js/handler.js"),
    file!("test/handler.test.js", "js/test/handler.test.js"),
    file!("package.json", "js/package.json"),
    file!("README.md", "js/README.md"),
    file!(".gitignore", "js/gitignore"),
    SAMPLE,
];

pub fn files(lang: Lang) -> &'static [File] {
    match lang {
        Lang::Rust => RUST,
        Lang::Python => PYTHON,
        Lang::Js => JS,
    }
}

/// `text` with each `{{key}}` replaced by its value. A placeholder without a
/// value is a mistake in a template, caught by the tests below, so it is
/// left as it is rather than guessed.
pub fn render(text: &str, values: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let (before, after) = rest.split_at(start);
        out.push_str(before);
        let value = after.find("}}").and_then(|end| {
            let key = &after[2..end];
            values.iter().find(|(k, _)| *k == key).map(|(_, value)| (*value, end + 2))
        });
        match value {
            Some((value, consumed)) => {
                out.push_str(value);
                rest = &after[consumed..];
            }
            None => {
                out.push_str("{{");
                rest = &after[2..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_replaced_and_unknown_ones_kept() {
        let values = [("name", "order-log"), ("module", "order_log")];
        assert_eq!(render("{{name}}: {{module}}.wasm", &values), "order-log: order_log.wasm");
        assert_eq!(render("{{other}} {{name", &values), "{{other}} {{name");
    }
}
