//! The `gridfn` command line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use gridfn::config::Manifest;
use gridfn::host::Host;

/// Every event allocates small, short-lived values on many threads at once;
/// glibc's malloc spent a quarter of the CPU on that under load (its arenas
/// and consolidation), mimalloc's thread-local free lists do not.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `purge_delay` option: how long freed memory stays resident
/// before it goes back to the system (its index in mimalloc v3's
/// `mi_option_e`; `purge_delay_is_option_15` checks it against the default).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// gridfn's purge delay, in milliseconds. mimalloc's default, a second, kept
/// a second's worth of freed buffers resident: about 17 MB at batch 100
/// (peak RSS 98-106 MB; 81-85 MB at 50 ms) and 15 MB with `handle-batch`, in
/// alternating runs with no difference in events/s or CPU beyond noise. At 0
/// (purge at once) it gave back a few MB more and lost a fifth of the
/// throughput in the one run tried. `MIMALLOC_PURGE_DELAY` still overrides it.
const PURGE_DELAY_MS: std::ffi::c_long = 50;

fn tune_allocator() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one of mimalloc's global options (a plain integer it
        // reads when it next purges); called before any other thread exists.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
    }
}

#[derive(Parser)]
#[command(name = "gridfn", version, about = "Runs Azure Event Grid deliveries through sandboxed WebAssembly handlers")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// How log lines are written to stderr: `pretty` (one line per event,
    /// coloured on a terminal) or `json` (one JSON object per line, each in
    /// its delivery's and (event, handler) pair's spans with their trace ids,
    /// plus a line as each span ends, with the pair's outcome and timing; for
    /// log collectors).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Pretty, env = "GRIDFN_LOG_FORMAT")]
    log_format: LogFormat,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Pretty,
    Json,
}

/// What `gridfn serve` and `gridfn up` serve, and how.
#[derive(clap::Args)]
struct ServeArgs {
    /// The manifest listing the handlers.
    #[arg(long, short, default_value = "gridfn.toml")]
    config: PathBuf,
    /// Address to listen on; overrides `server.listen` (default 127.0.0.1:7071).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Also export the delivery and (event, handler) spans over OTLP
    /// (HTTP/protobuf) to this collector URL, e.g.
    /// http://otel-collector:4318/v1/traces, in the trace of each
    /// request's `traceparent`. Off by default.
    #[arg(long, env = "GRIDFN_OTLP_ENDPOINT")]
    otlp_endpoint: Option<url::Url>,
}

#[derive(Subcommand)]
enum Command {
    /// Receive Event Grid deliveries over HTTP and run them through the handlers.
    Serve(ServeArgs),
    /// Build every handler whose manifest entry has a `build` command (each
    /// distinct command once), then serve as `gridfn serve` does.
    Up {
        #[command(flatten)]
        serve: ServeArgs,
        /// Serve the modules as they are, without building.
        #[arg(long)]
        no_build: bool,
    },
    /// Create a handler project (Rust, Python or JavaScript) that builds and
    /// passes its own test, and print its gridfn.toml lines.
    New(gridfn::scaffold::Options),
    /// Check a manifest and print every problem with its key, without serving;
    /// compile each module and say which contract version and exports it has.
    Check {
        #[arg(long, short, default_value = "gridfn.toml")]
        config: PathBuf,
    },
    /// Deploy a new version of a handler to a running gridfn (admin API).
    Deploy {
        /// The component (`.wasm`).
        module: PathBuf,
        #[arg(long)]
        handler: String,
        #[command(flatten)]
        admin: Admin,
    },
    /// List a running gridfn's handlers with version hash and deploy time.
    Handlers {
        #[command(flatten)]
        admin: Admin,
    },
    /// Put a handler's previous version back.
    Rollback {
        #[arg(long)]
        handler: String,
        #[command(flatten)]
        admin: Admin,
    },
    /// Read a running gridfn's handler state (admin API).
    #[command(subcommand)]
    Kv(KvCommand),
    /// Say, for each event in a file and each handler, whether the handler's
    /// filter matches and, if not, the first condition that failed.
    Explain {
        #[arg(long, short, default_value = "gridfn.toml")]
        config: PathBuf,
        /// Event Grid or CloudEvents JSON: one event or an array.
        event_file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Put dead-lettered events back through the handlers they were
    /// dead-lettered from, once each: exit 0 when every replayed event
    /// succeeded (or had before), 2 when some failed or were rejected again.
    Replay(Box<gridfn::replay::Options>),
    /// Deliver events from files to a webhook as an Event Grid subscription
    /// does (handshake, batching, retries, dead-lettering), once or as a
    /// load: exit 0 when every event was delivered, 2 when some were not.
    Send(Box<gridfn::send::Options>),
}

#[derive(Subcommand)]
enum KvCommand {
    /// List a handler's kv entries in key order, one `KEY VALUE` line each
    /// (a value that is not UTF-8 is shown as `base64:…`).
    List {
        /// The handler whose key space to list.
        handler: String,
        /// Only keys that start with it, e.g. `trail/` for the audit log's trail.
        #[arg(long, default_value = "")]
        prefix: String,
        /// At most this many entries (the server's default is 1000, its maximum 10000).
        #[arg(long)]
        limit: Option<usize>,
        /// Print the admin API's JSON answer instead.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: Admin,
    },
}

/// Where the admin API is, and the key for it.
#[derive(clap::Args)]
struct Admin {
    /// gridfn's base URL, e.g. http://127.0.0.1:7071
    #[arg(long)]
    to: String,
    /// One of `server.admin_keys`.
    #[arg(long, env = "GRIDFN_ADMIN_KEY", hide_env_values = true)]
    admin_key: String,
}

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    let otlp_endpoint = match &cli.command {
        Command::Serve(args) | Command::Up { serve: args, .. } => args.otlp_endpoint.as_ref(),
        _ => None,
    };
    // Kept to the end of main: dropping it sends the spans still queued.
    let _otlp = match init_logging(cli.log_format, otlp_endpoint) {
        Ok(exporter) => exporter,
        Err(error) => {
            eprintln!("error: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Serve(args) => serve(args.config, args.listen),
        Command::Up { serve: args, no_build } => {
            let built = if no_build { Ok(()) } else { gridfn::scaffold::build::run(&args.config) };
            built.and_then(|()| serve(args.config, args.listen))
        }
        Command::New(options) => gridfn::scaffold::command(options),
        Command::Check { config } => check(&config),
        Command::Explain { config, event_file, json } => explain(&config, &event_file, json),
        Command::Deploy { module, handler, admin } => std::fs::read(&module)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", module.display()))
            .and_then(|bytes| admin_call(&admin, reqwest::Method::PUT, &format!("/admin/handlers/{handler}"), bytes)),
        Command::Handlers { admin } => admin_call(&admin, reqwest::Method::GET, "/admin/handlers", Vec::new()),
        Command::Rollback { handler, admin } => {
            admin_call(&admin, reqwest::Method::POST, &format!("/admin/handlers/{handler}/rollback"), Vec::new())
        }
        Command::Kv(KvCommand::List { handler, prefix, limit, json, admin }) => {
            kv_list(&admin, &handler, &prefix, limit, json)
        }
        Command::Replay(options) => match gridfn::replay::command(*options) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::from(2),
            Err(error) => Err(error),
        },
        Command::Send(options) => match gridfn::send::command(*options) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::from(2),
            Err(error) => Err(error),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat, otlp_endpoint: Option<&url::Url>) -> anyhow::Result<Option<gridfn::otlp::Exporter>> {
    use tracing_subscriber::prelude::*;
    // gridfn's own lines and its handlers' (targets `handler`, `handler::stdio`)
    // at info; dependencies only when something is wrong. For collectors
    // (json) also the delivery and pair spans (target `gridfn::spans`): the
    // fmt layer formats a span's fields when it opens, a few microseconds per
    // span, which the terminal log does without. RUST_LOG overrides.
    let default = match format {
        LogFormat::Pretty => "warn,gridfn=info,handler=info",
        LogFormat::Json => "warn,gridfn=info,gridfn::spans=debug,handler=info",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default.into());
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    // The filter is the log's own, so OTLP export (which needs the spans)
    // does not put spans into the terminal log.
    let logs = match format {
        LogFormat::Pretty => {
            logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).with_filter(filter).boxed()
        }
        // A line also when each delivery and (event, handler) span closes:
        // the pair's outcome and attempt, and how long it took, for collectors.
        LogFormat::Json => logs
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
            .with_filter(filter)
            .boxed(),
    };
    let (otlp, exporter) = match otlp_endpoint {
        Some(endpoint) => gridfn::otlp::layer(endpoint).map(|(layer, exporter)| (Some(layer), Some(exporter)))?,
        None => (None, None),
    };
    tracing_subscriber::registry().with(logs).with(otlp).init();
    Ok(exporter)
}

fn check(config: &Path) -> anyhow::Result<()> {
    let manifest = Manifest::load(config)?;
    // Each module compiled and linked as `serve` would (into the compile cache it uses).
    let sandbox = gridfn::sandbox::Sandbox::for_manifest(&manifest, None)?;
    let loaded = manifest.handlers.iter().map(|handler| sandbox.load(handler)).collect::<anyhow::Result<Vec<_>>>()?;
    println!("{}: ok, {} handler(s)", config.display(), manifest.handlers.len());
    for (handler, loaded) in manifest.handlers.iter().zip(loaded) {
        println!("  {}: {}", handler.name, loaded.contract);
        if let Some(build) = &handler.build {
            println!("  {}: built by `{}` in {}", handler.name, build.command, build.workdir.display());
        }
    }
    Ok(())
}

fn explain(config: &Path, event_file: &Path, json: bool) -> anyhow::Result<()> {
    let routes = Manifest::load_routes(config)?;
    let text = std::fs::read_to_string(event_file)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", event_file.display()))?;
    let events = gridfn::explain::parse_events(&text).map_err(|e| anyhow::anyhow!("{}: {e}", event_file.display()))?;
    let routings = gridfn::explain::explain(&routes, &events);
    if json {
        output(&format!("{}\n", serde_json::to_string_pretty(&routings)?))
    } else {
        output(&gridfn::explain::render_text(&routings))
    }
}

/// Calls the admin API and prints its JSON answer.
fn admin_call(admin: &Admin, method: reqwest::Method, path: &str, body: Vec<u8>) -> anyhow::Result<()> {
    output(&format!("{}\n", admin_request(admin, method, path, body)?))
}

/// `gridfn kv list`: the entries as lines, or the JSON as it came.
fn kv_list(admin: &Admin, handler: &str, prefix: &str, limit: Option<usize>, json: bool) -> anyhow::Result<()> {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    query.append_pair("prefix", prefix);
    if let Some(limit) = limit {
        query.append_pair("limit", &limit.to_string());
    }
    let path = format!("/admin/kv/{handler}?{}", query.finish());
    let answer = admin_request(admin, reqwest::Method::GET, &path, Vec::new())?;
    if json {
        return output(&format!("{answer}\n"));
    }
    let listing: gridfn::admin::KvListing = serde_json::from_str(&answer)?;
    let mut lines = String::new();
    for entry in &listing.entries {
        let marker = match entry.encoding {
            gridfn::admin::Encoding::Utf8 => "",
            gridfn::admin::Encoding::Base64 => "base64:",
        };
        lines.push_str(&format!("{} {marker}{}\n", entry.key, entry.value));
    }
    if listing.truncated {
        eprintln!("(more keys match; list with a longer --prefix or a larger --limit)");
    }
    output(&lines)
}

/// Writes a command's output to stdout. A reader that stopped early
/// (`gridfn kv list … | head`) is not an error: `println!` would panic there.
fn output(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => Err(error.into()),
        _ => Ok(()),
    }
}

/// Calls the admin API; its answer, pretty-printed when it is JSON.
fn admin_request(admin: &Admin, method: reqwest::Method, path: &str, body: Vec<u8>) -> anyhow::Result<String> {
    let url = format!("{}{path}", admin.to.trim_end_matches('/'));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (status, text) = runtime.block_on(async {
        let response = reqwest::Client::new()
            .request(method, &url)
            .header(gridfn::admin::ADMIN_KEY_HEADER, &admin.admin_key)
            .body(body)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach {url}: {e}"))?;
        anyhow::Ok((response.status(), response.text().await?))
    })?;
    let pretty = serde_json::from_str::<serde_json::Value>(&text)
        .map(|json| serde_json::to_string_pretty(&json).unwrap_or_default())
        .unwrap_or(text);
    if status.is_success() { Ok(pretty) } else { anyhow::bail!("{url} answered {status}: {pretty}") }
}

fn serve(config: PathBuf, listen: Option<SocketAddr>) -> anyhow::Result<()> {
    let manifest = Manifest::load(&config)?;
    let started = std::time::Instant::now();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let host = Arc::new(Host::start(&manifest).await?);
        let addr = listen.unwrap_or(manifest.server.listen);
        let listener =
            tokio::net::TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
        let handlers: Vec<_> = host.handler_names().collect();
        tracing::info!(
            "gridfn listening on http://{} with handlers [{}] (ready in {} ms)",
            listener.local_addr()?,
            handlers.join(", "),
            started.elapsed().as_millis()
        );
        gridfn::server::serve(listener, host, shutdown_signal()).await?;
        tracing::info!("gridfn stopped");
        Ok(())
    })
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The option index is mimalloc's enum order, which a new mimalloc may
    /// change: option 15 must be the one whose default is 1,000 ms.
    #[test]
    fn purge_delay_is_option_15() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            // SAFETY: reads a global option; nothing in this test binary sets it.
            assert_eq!(unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) }, 1000);
        }
    }
}
