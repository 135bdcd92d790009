//! The `assay` command line. `main` builds the one runtime of the process, wires SIGINT and
//! SIGTERM to one shutdown token, and dispatches to library `run` functions.

use crate::api::SubmitRequest;
use crate::client::Client;
use crate::domain::{format_time, JobState};
use crate::progress::{self, Display};
use crate::server::{self, ServerConfig};
use crate::store::JobFilter;
use crate::worker::{self, WorkerConfig};
use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const DEFAULT_SERVER: &str = "http://127.0.0.1:7878";

#[derive(Parser)]
#[command(
    name = "assay",
    version,
    about = "Durable pipelines that generate apps with many LLMs and analyze them"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct ServerArg {
    /// URL of the Assay server.
    #[arg(long, env = "ASSAY_SERVER", default_value = DEFAULT_SERVER)]
    server: String,
    /// A file holding the API token to send (else the ASSAY_TOKEN variable, if set). There
    /// is no flag for the token itself: a command line is visible to every user.
    #[arg(long, env = "ASSAY_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// PEM certificates to trust for an HTTPS server whose certificate no public
    /// authority signed (e.g. the one given to `assay server --tls-cert`).
    #[arg(long, env = "ASSAY_CA_FILE")]
    ca_file: Option<PathBuf>,
}

impl ServerArg {
    /// The API token: from --token-file, else from ASSAY_TOKEN.
    fn token(&self) -> anyhow::Result<Option<String>> {
        if let Some(path) = &self.token_file {
            let text = std::fs::read_to_string(path).with_context(|| {
                format!(
                    "cannot read the token file {} (--token-file)",
                    path.display()
                )
            })?;
            let token = text.trim();
            if token.is_empty() {
                anyhow::bail!("the token file {} is empty (--token-file)", path.display());
            }
            return Ok(Some(token.to_string()));
        }
        Ok(std::env::var("ASSAY_TOKEN")
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty()))
    }

    fn ca(&self) -> anyhow::Result<Option<Vec<u8>>> {
        self.ca_file
            .as_ref()
            .map(|path| {
                std::fs::read(path).with_context(|| {
                    format!("cannot read the CA file {} (--ca-file)", path.display())
                })
            })
            .transpose()
    }

    fn client(&self) -> anyhow::Result<Client> {
        Client::with_options(
            &self.server,
            self.token()?.as_deref(),
            self.ca()?.as_deref(),
        )
        .context("--ca-file")
    }
}

#[derive(Subcommand)]
enum TokenAction {
    /// Create a token and print it (it is shown this once; only its hash is kept).
    Create {
        #[arg(long, default_value = ".assay")]
        data_dir: PathBuf,
        /// What it may do (comma-separated): read, submit (also read), admin (also
        /// submit), worker (a worker's rights only).
        #[arg(long, value_delimiter = ',', required = true)]
        scope: Vec<String>,
        /// Who or what it is for, shown by `assay token list`.
        #[arg(long, default_value = "unnamed")]
        name: String,
        /// The only job kinds it may use (comma-separated): a worker token's workers claim
        /// only these, a submit token's specs have stages of only these. Default: every kind.
        #[arg(long, value_delimiter = ',')]
        kinds: Option<Vec<String>>,
    },
    /// List tokens (never the tokens themselves).
    List {
        #[arg(long, default_value = ".assay")]
        data_dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by its id.
    Revoke {
        id: i64,
        #[arg(long, default_value = ".assay")]
        data_dir: PathBuf,
    },
}

/// `--providers`: the built-in providers, plus a file's.
fn load_providers(file: Option<&Path>) -> Result<crate::generation::providers::Providers> {
    use crate::generation::providers::Providers;
    Ok(match file {
        Some(path) => Providers::load(path).context("--providers")?,
        None => Providers::builtin(),
    })
}

/// `--allow-kinds`: known kinds, or `all`.
fn allowed_kinds(kinds: Vec<String>) -> Result<Vec<String>> {
    if kinds.iter().any(|k| k == "all") {
        return Ok(crate::kinds::KNOWN_KINDS
            .iter()
            .map(|k| k.to_string())
            .collect());
    }
    for k in &kinds {
        if !crate::kinds::KNOWN_KINDS.contains(&k.as_str()) {
            bail!(
                "--allow-kinds: unknown job kind `{k}`; known: {} (or `all`)",
                crate::kinds::KNOWN_KINDS.join(", ")
            );
        }
    }
    Ok(kinds)
}

async fn token_command(action: TokenAction) -> Result<u8> {
    use crate::domain::Scope;
    let data_dir = match &action {
        TokenAction::Create { data_dir, .. }
        | TokenAction::List { data_dir, .. }
        | TokenAction::Revoke { data_dir, .. } => data_dir.clone(),
    };
    // A typo must not create a new, empty database that no server reads.
    if !data_dir.join("assay.db").exists() {
        bail!(
            "no Assay database in {}: pass the --data-dir the server runs with (start the server once to create it)",
            data_dir.display()
        );
    }
    let store = server::open_store(&data_dir).await?;
    match action {
        TokenAction::Create {
            scope, name, kinds, ..
        } => {
            if let Some(unknown) = kinds
                .iter()
                .flatten()
                .find(|k| !crate::kinds::KNOWN_KINDS.contains(&k.as_str()))
            {
                bail!(
                    "--kinds: `{unknown}` is not a job kind (known: {})",
                    crate::kinds::KNOWN_KINDS.join(", ")
                );
            }
            let scopes = scope
                .iter()
                .map(|s| s.trim().parse::<Scope>())
                .collect::<Result<Vec<_>, _>>()
                .context("--scope")?;
            let token = server::auth::new_token();
            let id = store
                .create_token(
                    &name,
                    &server::auth::token_hash(&token),
                    &scopes,
                    crate::domain::now_micros(),
                )
                .await?;
            if let Some(kinds) = &kinds {
                store.limit_token_kinds(id, kinds).await?;
            }
            eprintln!("token {id} ({name}) created; it is shown only now:");
            println!("{token}");
        }
        TokenAction::List { json, .. } => {
            let tokens = store.tokens().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&tokens)?);
            } else {
                for t in tokens {
                    let scopes: Vec<&str> = t.scopes.iter().map(|s| s.as_str()).collect();
                    println!(
                        "{:>4}  {:<20} {:<24} {:<8} {}",
                        t.id,
                        t.name,
                        scopes.join(","),
                        if t.revoked_at.is_some() {
                            "revoked"
                        } else {
                            "active"
                        },
                        t.kinds
                            .as_ref()
                            .map(|k| format!("kinds: {}", k.join(",")))
                            .unwrap_or_default()
                    );
                }
            }
        }
        TokenAction::Revoke { id, .. } => {
            store.revoke_token(id, crate::domain::now_micros()).await?;
            println!("token {id} revoked");
        }
    }
    Ok(0)
}

#[derive(Subcommand)]
enum TemplatesAction {
    /// Make a template from an OpenAPI 3 or Swagger 2 document (YAML or JSON): its
    /// operations become endpoints, its schemas the data model. Writes `NAME.toml` into
    /// `--out` (an analysis stage takes that folder as its `templates` parameter), or
    /// prints it.
    Import {
        file: PathBuf,
        /// The template's name (default: from the file name).
        #[arg(long)]
        name: Option<String>,
        /// Folder to write `NAME.toml` into (default: print it).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Replace a template file of that name.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum ToolsAction {
    /// Install the pinned tools into Assay's cache dir (`ASSAY_TOOLS_DIR` to choose);
    /// does nothing when they are there already.
    Install,
    /// Each pinned tool: its pin, the version installed, where the analyzers find it.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline on the embedded default (SQLite, local workers) and follow it.
    /// Running it again resumes: finished jobs are not run again.
    Run {
        spec: PathBuf,
        /// Where the database, blobs and spool live.
        #[arg(long, default_value = ".assay")]
        data_dir: PathBuf,
        /// How many jobs run at once on this machine.
        #[arg(long, default_value_t = 4)]
        workers: usize,
        /// How many `generate` jobs run at once, apart from `--workers` (they mostly wait
        /// on the model provider, whose own limits the server enforces).
        #[arg(long, default_value_t = 8)]
        generate_workers: usize,
        /// Where the embedded server listens (port 0: any free port).
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// Start a new pipeline even if this spec already ran here.
        #[arg(long)]
        fresh: bool,
        /// Plain event lines instead of progress bars.
        #[arg(long)]
        plain: bool,
        /// Run every analysis again instead of reusing identical earlier ones.
        #[arg(long)]
        no_cache: bool,
        /// Start analyzed apps without the sandbox (for apps you trust only; see README,
        /// Security).
        #[arg(long)]
        no_sandbox: bool,
        /// Also allow apps (and template folders) named by path inside DIR (repeatable);
        /// the spec's folder and the current folder always are.
        #[arg(long = "app-root", value_name = "DIR")]
        app_roots: Vec<PathBuf>,
        /// Model providers by name (TOML: [providers.NAME] base_url, api_key_env,
        /// timeout): what a spec's `provider = "NAME"` may pick, and where its key goes.
        /// `openrouter` is built in.
        #[arg(long, env = "ASSAY_PROVIDERS")]
        providers: Option<PathBuf>,
    },
    /// Analyze a tree of apps someone else made (a folder per app, e.g. one per model
    /// and template): discover them, start each as it is, run the analyzers and follow
    /// the pipeline, as `assay run` does (resume, dashboard, progress).
    Analyze {
        /// The folder that holds the apps.
        dir: PathBuf,
        /// Which folder levels name what, below DIR: `{model}`, `{template}`, `{app}` or
        /// `*` (a name that is neither), or a literal folder name.
        #[arg(long, default_value = "{model}/{template}")]
        layout: String,
        /// The analyzers to run (comma-separated).
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "static,dynamic,performance,ai"
        )]
        analyzers: Vec<String>,
        /// A folder of catalog templates (e.g. made by `assay templates import`) the app
        /// analyzers look templates up in, besides the built-in ones.
        #[arg(long)]
        templates: Option<PathBuf>,
        /// Also generate apps with these models (provider model ids, comma-separated)
        /// for the tree's templates, analyzed as they come. Without it, generation joins
        /// in when the provider's key is set (models from `ASSAY_GENERATE_MODELS`, or
        /// `openai/gpt-4o-mini`).
        #[arg(long, value_delimiter = ',', conflicts_with = "no_generate")]
        generate: Vec<String>,
        /// Never generate, whatever keys are set.
        #[arg(long)]
        no_generate: bool,
        /// The provider apps are generated with (a name from the providers file).
        #[arg(long)]
        provider: Option<String>,
        /// Print the spec that would run, and stop (to `assay submit` it to a server).
        #[arg(long)]
        print_spec: bool,
        #[arg(long, default_value = ".assay")]
        data_dir: PathBuf,
        #[arg(long, default_value_t = 4)]
        workers: usize,
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        #[arg(long)]
        fresh: bool,
        #[arg(long)]
        plain: bool,
        #[arg(long)]
        no_cache: bool,
        #[arg(long)]
        no_sandbox: bool,
        #[arg(long, env = "ASSAY_PROVIDERS")]
        providers: Option<PathBuf>,
    },
    /// Run the server (API, reconciler, blob store) until SIGTERM.
    Server {
        #[arg(long, default_value = ".assay")]
        data_dir: PathBuf,
        #[arg(long, default_value = "127.0.0.1:7878")]
        listen: SocketAddr,
        /// How often workers heartbeat. A worker that stops is noticed, and its jobs are
        /// claimable again, within two of these intervals.
        #[arg(long, default_value = "2s", value_parser = parse_duration)]
        heartbeat: Duration,
        /// How long after a pipeline finished its events (its log and job timelines) are
        /// kept; `off` keeps them forever. A running pipeline keeps its whole history.
        #[arg(long, default_value = "30d", value_parser = parse_retention)]
        event_retention: Retention,
        /// Require API tokens also on loopback (beyond loopback they always are, unless
        /// --insecure-no-auth). Tokens: `assay token create`.
        #[arg(long, conflicts_with = "insecure_no_auth")]
        auth: bool,
        /// Serve beyond loopback without tokens: anyone who reaches the port can run jobs on
        /// the workers. Only for a network that is yours alone.
        #[arg(long)]
        insecure_no_auth: bool,
        /// A name this server is reached by (repeatable); IP addresses and `localhost`
        /// always work. Requests naming any other host are refused (DNS rebinding).
        #[arg(long)]
        public_host: Vec<String>,
        /// Serve HTTPS with this certificate (PEM: the server's certificate, then its
        /// chain); needs --tls-key.
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The certificate's private key (PEM).
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// The job kinds specs may use (comma-separated, or `all`). Default: every kind but
        /// `command`, which runs a program the spec chooses.
        #[arg(long, value_delimiter = ',')]
        allow_kinds: Option<Vec<String>>,
        /// The largest blob (an artifact, an app archive) the server stores, in bytes.
        #[arg(long, default_value_t = server::blobs::DEFAULT_MAX_BLOB_BYTES)]
        max_blob_bytes: u64,
        /// The most all blobs together may take, in bytes (0: no quota). An upload past it
        /// is refused with 507; blobs no artifact names are deleted after an hour.
        #[arg(long, default_value_t = server::blobs::DEFAULT_BLOB_QUOTA)]
        blob_quota: u64,
        /// The model providers specs may pick by name: the same providers file as the
        /// workers' (only its names are used here; `openrouter` is built in).
        #[arg(long, env = "ASSAY_PROVIDERS")]
        providers: Option<PathBuf>,
        /// Requests a second one token may make, in bursts of twice that (0: no limit).
        /// A token past it gets 429 and waits; the others are served as before.
        #[arg(long, default_value_t = server::auth::DEFAULT_REQUESTS_PER_SECOND)]
        rate_limit: u32,
        /// Worker ids one token may own. A worker without --id takes a new id at every
        /// start; those of workers stopped or silent for an hour make room for new ones.
        #[arg(long, default_value_t = server::auth::DEFAULT_WORKER_IDS_PER_TOKEN,
              value_parser = clap::value_parser!(i64).range(1..))]
        worker_ids_per_token: i64,
    },
    /// Create, list and revoke API tokens. Works on the data directory, also while the
    /// server runs (a revoked token stops working within 2 s).
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Run a worker that pulls jobs from a server until SIGTERM.
    Worker {
        #[command(flatten)]
        server: ServerArg,
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        /// Slots for `generate` jobs, apart from `--concurrency`.
        #[arg(long, default_value_t = 8)]
        generate_concurrency: usize,
        /// Where finished results wait until the server acknowledges them.
        #[arg(long, default_value = ".assay-worker")]
        spool_dir: PathBuf,
        /// A stable id lets a restarted worker take up its own spooled results.
        #[arg(long)]
        id: Option<String>,
        /// Job kinds this worker runs (comma-separated); default: all it knows.
        #[arg(long, value_delimiter = ',')]
        kinds: Option<Vec<String>>,
        /// How long running jobs may finish after SIGTERM before they are handed back.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        grace: Duration,
        /// Run every analysis again instead of reusing identical earlier ones.
        #[arg(long)]
        no_cache: bool,
        /// Start job programs without a PID namespace of their own (they see the machine's
        /// process ids). They still die with the worker, but one that kills its own
        /// supervisor can leave processes running until the worker sees it.
        #[arg(long)]
        no_pid_namespace: bool,
        /// Start analyzed apps without the sandbox: they then run as this worker's user,
        /// on the machine's network. For apps you trust only.
        #[arg(long)]
        no_sandbox: bool,
        /// A folder whose apps jobs may name by path (repeatable; ASSAY_APP_ROOTS takes a
        /// colon-separated list). A spec's `app` (and template folder) must resolve, links
        /// followed, inside one; without any, only apps fetched from upstream jobs
        /// (`app_from`) are analyzed.
        #[arg(
            long = "app-root",
            value_name = "DIR",
            env = "ASSAY_APP_ROOTS",
            value_delimiter = ':'
        )]
        app_roots: Vec<PathBuf>,
        /// Model providers by name (TOML: [providers.NAME] base_url, api_key_env,
        /// timeout): the only places this worker sends a key to, whatever a spec says.
        /// `openrouter` is built in.
        #[arg(long, env = "ASSAY_PROVIDERS")]
        providers: Option<PathBuf>,
    },
    /// Submit a pipeline spec to a server.
    Submit {
        spec: PathBuf,
        #[command(flatten)]
        server: ServerArg,
        /// Submitting again with the same key returns the same pipeline.
        #[arg(long)]
        idempotency_key: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Show pipelines, or one pipeline's stages.
    Status {
        pipeline: Option<i64>,
        #[command(flatten)]
        server: ServerArg,
        #[arg(long)]
        json: bool,
    },
    /// Follow a pipeline until it finishes; exits with its result code.
    Watch {
        pipeline: i64,
        #[command(flatten)]
        server: ServerArg,
        #[arg(long)]
        plain: bool,
        /// Print every event as a JSON line.
        #[arg(long)]
        json: bool,
    },
    /// Cancel a pipeline (or one job with --job).
    Cancel {
        pipeline: Option<i64>,
        #[arg(long)]
        job: Option<i64>,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Run dead jobs again: all of a pipeline's, or one with --job.
    Retry {
        pipeline: Option<i64>,
        #[arg(long)]
        job: Option<i64>,
        #[command(flatten)]
        server: ServerArg,
    },
    /// List jobs.
    Jobs {
        #[arg(long)]
        pipeline: Option<i64>,
        #[arg(long)]
        stage: Option<String>,
        #[arg(long)]
        state: Option<JobState>,
        /// Only jobs that have not started (waiting, available, retrying).
        #[arg(long, conflicts_with = "state")]
        pending: bool,
        /// Only the jobs of one app: those whose item names this model (and template).
        #[arg(long)]
        model: Option<String>,
        #[arg(long)]
        template: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: i64,
        #[command(flatten)]
        server: ServerArg,
        #[arg(long)]
        json: bool,
    },
    /// Why a job is in the state it is: attempts, errors, holder, what it waits for.
    Explain {
        job: i64,
        #[command(flatten)]
        server: ServerArg,
        #[arg(long)]
        json: bool,
    },
    /// Download a job's artifact.
    Artifact {
        job: i64,
        name: String,
        /// Output file (default: the artifact's name).
        #[arg(short, long)]
        output: Option<PathBuf>,
        #[command(flatten)]
        server: ServerArg,
    },
    /// List workers.
    Workers {
        #[command(flatten)]
        server: ServerArg,
        #[arg(long)]
        json: bool,
    },
    /// Analysis results of a pipeline, per app: findings by severity, tools, performance,
    /// the judge's verdicts. Reads a server, or a data directory when no server runs.
    Results {
        pipeline: i64,
        #[command(flatten)]
        server: ServerArg,
        /// Read the results from this data directory (of `assay run`) instead of a server.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Print everything as JSON.
        #[arg(long)]
        json: bool,
        /// Write one merged SARIF 2.1.0 file per app into this folder.
        #[arg(long)]
        sarif: Option<PathBuf>,
        /// Findings listed per app in the terminal view.
        #[arg(long, default_value_t = 10)]
        top: usize,
    },
    /// The models of a pipeline compared: security and quality scores per app and per
    /// 1,000 lines of code with 95% intervals, apps that did not run, coverage, ties and
    /// small samples (the rules: docs/ranking.md). Reads a server, or a data directory
    /// when no server runs.
    Compare {
        pipeline: i64,
        #[command(flatten)]
        server: ServerArg,
        /// Read the results from this data directory (of `assay run`) instead of a server.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Print the standings as JSON (the same numbers as the table).
        #[arg(long)]
        json: bool,
    },
    /// Export a pipeline's results: a self-contained HTML report (opens offline), the
    /// findings or the model ranking as CSV, everything as JSON, or a zip of every app's
    /// merged SARIF file. Reads a server, or a data directory when no server runs.
    Export {
        pipeline: i64,
        #[arg(long, value_enum, default_value = "html")]
        format: crate::report::ExportFormat,
        /// Where to write it (default: `assay-pipeline-ID-report.html` and so on in the
        /// current folder; `-` writes to standard output).
        #[arg(short, long)]
        output: Option<PathBuf>,
        #[command(flatten)]
        server: ServerArg,
        /// Read the results from this data directory (of `assay run`) instead of a server.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Assay's own analysis tools (pinned; installed on first use into the cache dir).
    Tools {
        #[command(subcommand)]
        action: ToolsAction,
    },
    /// What this machine lacks to run every analyzer and the tests, and how to fix it.
    /// Exits 1 when something an analyzer needs is missing.
    Doctor {
        #[arg(long)]
        json: bool,
    },
    /// List a provider's models with context window and prices (cached for a day).
    Models {
        /// OpenAI-compatible base URL (default: OpenRouter).
        #[arg(long, env = "ASSAY_PROVIDER_URL", default_value = crate::generation::provider::OPENROUTER_BASE_URL)]
        base_url: String,
        /// Environment variable that holds the API key.
        #[arg(long, default_value = "OPENROUTER_API_KEY")]
        key_env: String,
        /// Only models whose id contains this.
        #[arg(long)]
        filter: Option<String>,
        /// Ask the provider even if the cached list is fresh.
        #[arg(long)]
        refresh: bool,
        #[arg(long)]
        json: bool,
    },
    /// List the app templates: the built-in catalog, plus a folder of your own; or
    /// `assay templates import openapi.yaml` to make one from an API description.
    Templates {
        #[command(subcommand)]
        action: Option<TemplatesAction>,
        /// A folder of your own templates (`*.toml`), added to the built-in ones.
        #[arg(long)]
        dir: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Push no-op jobs through a real server and worker processes; print throughput and
    /// enqueue-to-start latency.
    Bench(crate::bench::BenchArgs),
    /// (Internal) run a job's program so that it dies with the worker that started it.
    #[command(name = "__supervise", hide = true)]
    Supervise(crate::supervise::SuperviseArgs),
    /// (Internal) plan a templated spec read on stdin, under the limits the server set.
    #[command(name = "__plan", hide = true)]
    Plan,
    /// (Internal) run a program under the sandbox's system-call filter.
    #[command(name = "__seccomp", hide = true)]
    Seccomp {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<std::ffi::OsString>,
    },
}

/// A retention period, or none (`off`).
#[derive(Debug, Clone, Copy)]
struct Retention(Option<Duration>);

fn parse_retention(s: &str) -> Result<Retention, String> {
    if s == "off" {
        return Ok(Retention(None));
    }
    parse_duration(s).map(|d| Retention(Some(d)))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("`{s}` is not a duration ({e}); try 500ms, 3s, 1m"))
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // A supervisor is small and single-threaded: no logging, no runtime.
    if let Command::Supervise(args) = cli.command {
        return crate::supervise::run(args);
    }
    if let Command::Plan = cli.command {
        return crate::planner::run_child();
    }
    if let Command::Seccomp { command } = cli.command {
        return crate::seccomp::run(command);
    }
    crate::supervise::use_this_binary();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ASSAY_LOG").unwrap_or_else(|_| {
                let default = match cli.command {
                    Command::Server { .. } | Command::Worker { .. } => "info",
                    _ => "warn",
                };
                tracing_subscriber::EnvFilter::new(default)
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime starts");
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// SIGINT/SIGTERM cancel the token (soft stop); a second signal exits at once.
fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return;
        };
        tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
        eprintln!("stopping (again to force)…");
        t.cancel();
        tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
        std::process::exit(130);
    });
    token
}

async fn dispatch(cli: Cli) -> Result<u8> {
    match cli.command {
        Command::Run {
            spec,
            data_dir,
            workers,
            generate_workers,
            listen,
            fresh,
            plain,
            no_cache,
            no_sandbox,
            app_roots,
            providers,
        } => {
            if no_cache {
                crate::kinds::cache::disable();
            }
            if no_sandbox {
                crate::sandbox::disable();
            }
            let providers = load_providers(providers.as_deref())?;
            let slots = (workers, generate_workers);
            let run = RunOptions {
                listen,
                fresh,
                plain,
                app_roots,
                providers,
            };
            let req = read_spec(&spec, None)?;
            // The spec's folder holds the apps a spec of one's own names.
            let spec_dir = match spec.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            };
            if needs_tools(&req) {
                ensure_tools().await;
            }
            run_embedded(req, spec_dir, &data_dir, slots, run).await
        }
        Command::Analyze {
            dir,
            layout,
            analyzers,
            templates,
            generate,
            no_generate,
            provider,
            print_spec,
            data_dir,
            workers,
            listen,
            fresh,
            plain,
            no_cache,
            no_sandbox,
            providers,
        } => {
            use crate::analysis::discover;
            let parsed = discover::Layout::parse(&layout)?;
            let found = discover::discover(&dir, &parsed)?;
            // Checked now, with the file and line of what is wrong, not once per job.
            let templates = match templates {
                Some(t) => {
                    let t = std::path::absolute(&t)?;
                    let catalog = crate::analysis::catalog::with_user_dir(Some(&t))?;
                    eprintln!(
                        "templates: {} (with the built-in ones, {} in all)",
                        t.display(),
                        catalog.iter().count()
                    );
                    Some(t)
                }
                None => None,
            };
            let generation = generation_for(
                &found,
                templates.as_deref(),
                generate,
                no_generate,
                provider,
                providers.as_deref(),
            )?;
            let text = discover::analysis_spec(
                &dir,
                &parsed,
                &found,
                &analyzers,
                templates.as_deref(),
                generation.as_ref(),
            )
            .map_err(anyhow::Error::msg)?;
            if print_spec {
                print!("{text}");
                return Ok(0);
            }
            eprintln!(
                "{} apps under {} ({}): {} models, {} templates",
                found.apps.len(),
                dir.display(),
                parsed,
                found
                    .apps
                    .iter()
                    .filter_map(|a| a.model.as_ref())
                    .collect::<std::collections::BTreeSet<_>>()
                    .len(),
                found
                    .apps
                    .iter()
                    .filter_map(|a| a.template.as_ref())
                    .collect::<std::collections::BTreeSet<_>>()
                    .len(),
            );
            for (path, why) in found.passed_over.iter().take(20) {
                eprintln!("  passed over {}: {why}", dir.join(path).display());
            }
            if no_cache {
                crate::kinds::cache::disable();
            }
            if no_sandbox {
                crate::sandbox::disable();
            }
            let file_name = format!("assay analyze {}", dir.display());
            let spec = crate::spec::parse(&file_name, &text)?;
            spec.plan()
                .map_err(|e| anyhow::anyhow!("{file_name}: {e}"))?;
            let req = SubmitRequest {
                spec: text,
                file_name: Some(file_name),
                idempotency_key: None,
            };
            let run = RunOptions {
                listen,
                fresh,
                plain,
                app_roots: vec![dir.clone()],
                providers: load_providers(providers.as_deref())?,
            };
            ensure_tools().await;
            run_embedded(req, dir, &data_dir, (workers, 1), run).await
        }
        Command::Tools { action } => match action {
            ToolsAction::Install => {
                let done = crate::toolchain::install(&tool_step).await?;
                eprintln!(
                    "analysis tools installed in {} ({} packages recorded)",
                    crate::toolchain::dir().display(),
                    done.versions.len()
                );
                Ok(0)
            }
            ToolsAction::List { json } => {
                let lines = crate::toolchain::list();
                if json {
                    println!("{}", serde_json::to_string_pretty(&lines)?);
                } else {
                    println!("toolchain: {}", crate::toolchain::dir().display());
                    for l in lines {
                        println!(
                            "  {:<28} pinned {:<10} installed {:<10} {}",
                            l.package,
                            l.pinned,
                            l.installed.as_deref().unwrap_or("—"),
                            l.found_at
                                .map(|f| format!("runs {f}"))
                                .unwrap_or_else(|| "(no program found)".into())
                        );
                    }
                }
                Ok(0)
            }
        },
        Command::Doctor { json } => {
            let checks = doctor_checks();
            if json {
                println!("{}", serde_json::to_string_pretty(&checks)?);
            } else {
                for c in &checks {
                    let mark = if c.ok {
                        "ok     "
                    } else if c.required {
                        "MISSING"
                    } else {
                        "missing"
                    };
                    println!("{mark} {:<16} {}", c.what, c.detail);
                }
            }
            Ok(if checks.iter().any(|c| c.required && !c.ok) {
                1
            } else {
                0
            })
        }
        Command::Server {
            data_dir,
            listen,
            heartbeat,
            event_retention,
            auth,
            insecure_no_auth,
            public_host,
            tls_cert,
            tls_key,
            allow_kinds,
            max_blob_bytes,
            blob_quota,
            providers,
            rate_limit,
            worker_ids_per_token,
        } => {
            let providers = load_providers(providers.as_deref())?;
            let shutdown = shutdown_on_signals();
            let mut config = ServerConfig::new(data_dir, listen).with_heartbeat(heartbeat);
            config.event_retention = event_retention.0;
            config.public_hosts = public_host;
            config.max_blob_bytes = max_blob_bytes;
            config.blob_quota = (blob_quota > 0).then_some(blob_quota);
            config.providers = providers.names();
            config.request_rate = server::auth::RequestRate::per_second(rate_limit);
            config.worker_ids_per_token = worker_ids_per_token;
            if let Some(kinds) = allow_kinds {
                config.allowed_kinds = allowed_kinds(kinds)?;
            }
            if let (Some(cert), Some(key)) = (tls_cert, tls_key) {
                config.tls = Some(server::TlsFiles { cert, key });
            }
            if auth {
                config.require_auth = true;
            }
            if insecure_no_auth {
                config.require_auth = false;
                config.insecure_no_auth = true;
                tracing::warn!("serving without authentication (--insecure-no-auth)");
            }
            let scheme = if config.tls.is_some() {
                "https"
            } else {
                "http"
            };
            let running = server::start(config, shutdown).await?;
            println!(
                "assay server listening on {scheme}://{addr}; dashboard: {scheme}://{addr}/",
                addr = running.addr
            );
            running.wait().await;
            Ok(0)
        }
        Command::Token { action } => token_command(action).await,
        Command::Worker {
            server,
            concurrency,
            generate_concurrency,
            spool_dir,
            id,
            kinds,
            grace,
            no_cache,
            no_pid_namespace,
            no_sandbox,
            app_roots,
            providers,
        } => {
            let providers = load_providers(providers.as_deref())?;
            let shutdown = shutdown_on_signals();
            if no_cache {
                crate::kinds::cache::disable();
            }
            if no_sandbox {
                crate::sandbox::disable();
            }
            if no_pid_namespace {
                crate::supervise::disable_pid_namespaces();
            }
            let mut config = WorkerConfig::new(&server.server, spool_dir);
            config.token = server.token()?.map(worker::Secret);
            config.ca_pem = server.ca()?;
            config.concurrency = concurrency;
            config.generate_concurrency = generate_concurrency.max(1);
            config.shutdown_grace = grace;
            config.app_roots = app_roots;
            config.providers = std::sync::Arc::new(providers);
            if let Some(id) = id {
                config.id = id;
            }
            if let Some(kinds) = kinds {
                for k in &kinds {
                    if !crate::kinds::KNOWN_KINDS.contains(&k.as_str()) {
                        bail!(
                            "unknown job kind `{k}`; this worker knows: {}",
                            crate::kinds::KNOWN_KINDS.join(", ")
                        );
                    }
                }
                config.kinds = kinds;
            }
            worker::run(config, shutdown).await?;
            Ok(0)
        }
        Command::Submit {
            spec,
            server,
            idempotency_key,
            json,
        } => {
            let client = server.client()?;
            let req = read_spec(&spec, idempotency_key)?;
            let resp = client.submit(&req).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&resp)?);
            } else if resp.created {
                println!("submitted pipeline {}", resp.pipeline_id);
            } else {
                println!(
                    "pipeline {} already exists for this idempotency key",
                    resp.pipeline_id
                );
            }
            Ok(0)
        }
        Command::Status {
            pipeline,
            server,
            json,
        } => {
            let client = server.client()?;
            match pipeline {
                Some(id) => {
                    let detail = client.pipeline(id).await?;
                    if json {
                        println!("{}", serde_json::to_string_pretty(&detail)?);
                    } else {
                        progress::print_summary(&client, &detail).await?;
                    }
                }
                None => {
                    let list = client.pipelines(50).await?;
                    if json {
                        println!("{}", serde_json::to_string_pretty(&list)?);
                    } else if list.is_empty() {
                        println!("no pipelines yet; submit one with `assay submit SPEC`");
                    } else {
                        println!(
                            "{:>6}  {:<16} {:<16} {:<12} progress",
                            "id", "name", "state", "created"
                        );
                        for p in list {
                            println!(
                                "{:>6}  {:<16} {:<16} {:<12} {}",
                                p.id,
                                p.name,
                                p.state.as_str(),
                                format_time(p.created_at),
                                progress::counts_line(&p.counts)
                            );
                        }
                    }
                }
            }
            Ok(0)
        }
        Command::Watch {
            pipeline,
            server,
            plain,
            json,
        } => {
            let client = server.client()?;
            let stop = shutdown_on_signals();
            if json {
                let mut after = 0;
                loop {
                    let batch = tokio::select! { r = client.events(pipeline, after, 5_000) => r?, _ = stop.cancelled() => return Ok(130) };
                    after = batch.last_id;
                    for e in &batch.events {
                        println!("{}", serde_json::to_string(e)?);
                        if e.kind == "pipeline_finished" {
                            let detail = client.pipeline(pipeline).await?;
                            return Ok(progress::exit_code(detail.pipeline.state));
                        }
                    }
                }
            }
            let display = if plain {
                Display::Lines
            } else {
                Display::auto()
            };
            let detail = progress::follow(&client, pipeline, display, &stop).await?;
            progress::print_summary(&client, &detail).await?;
            Ok(if stop.is_cancelled() {
                130
            } else {
                progress::exit_code(detail.pipeline.state)
            })
        }
        Command::Cancel {
            pipeline,
            job,
            server,
        } => {
            let client = server.client()?;
            match (pipeline, job) {
                (_, Some(job)) => {
                    let j = client.cancel_job(job).await?;
                    println!(
                        "job {job}: {}{}",
                        j.state,
                        if j.cancel_requested {
                            " (cancellation requested; the worker is stopping it)"
                        } else {
                            ""
                        }
                    );
                }
                (Some(id), None) => {
                    let d = client.cancel_pipeline(id).await?;
                    println!(
                        "pipeline {id}: {} ({})",
                        d.pipeline.state,
                        progress::counts_line(&d.pipeline.counts)
                    );
                }
                (None, None) => {
                    bail!("say what to cancel: `assay cancel PIPELINE` or `assay cancel --job JOB`")
                }
            }
            Ok(0)
        }
        Command::Retry {
            pipeline,
            job,
            server,
        } => {
            let client = server.client()?;
            let retried = match (pipeline, job) {
                (_, Some(job)) => client.retry_job(job).await?.retried,
                (Some(id), None) => client.retry_pipeline(id).await?.retried,
                (None, None) => {
                    bail!("say what to retry: `assay retry PIPELINE` or `assay retry --job JOB`")
                }
            };
            println!("{retried} dead job(s) queued again");
            Ok(0)
        }
        Command::Jobs {
            pipeline,
            stage,
            state,
            pending,
            model,
            template,
            limit,
            server,
            json,
        } => {
            let client = server.client()?;
            let jobs = client
                .jobs(&JobFilter {
                    pipeline_id: pipeline,
                    stage,
                    state,
                    after_id: None,
                    limit: Some(limit),
                    pending,
                    model,
                    template,
                })
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&jobs)?);
            } else {
                println!(
                    "{:>7} {:>5} {:<10} {:>3} {:<40} note",
                    "id", "pipe", "state", "att", "key"
                );
                for j in jobs {
                    let note = j
                        .last_error
                        .as_ref()
                        .map(|e| format!("{}: {}", e.code, e.message))
                        .or_else(|| j.progress.as_ref().map(|p| p.step.clone()))
                        .unwrap_or_default();
                    println!(
                        "{:>7} {:>5} {:<10} {:>3} {:<40} {}",
                        j.id,
                        j.pipeline_id,
                        j.state.as_str(),
                        j.attempts,
                        j.key,
                        note
                    );
                }
            }
            Ok(0)
        }
        Command::Explain { job, server, json } => {
            let client = server.client()?;
            let e = client.explain(job).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&e)?);
                return Ok(0);
            }
            println!(
                "job {} `{}` (pipeline {}, stage `{}`, kind `{}`)",
                e.job.id, e.job.key, e.job.pipeline_id, e.job.stage, e.job.kind
            );
            println!("state: {}", e.job.state);
            println!("why:   {}", e.summary);
            if !e.dependencies.is_empty() {
                println!("upstream:");
                for d in &e.dependencies {
                    println!("  #{} {} {}", d.job_id, d.key, d.state);
                }
            }
            if !e.attempts.is_empty() {
                println!("attempts:");
                for a in &e.attempts {
                    let took = a
                        .finished_at
                        .map(|f| format!("{:.2}s", (f - a.started_at) as f64 / 1e6))
                        .unwrap_or_else(|| "…".into());
                    let err = a
                        .error
                        .as_ref()
                        .map(|e| format!(" — {} ({}): {}", e.code, e.class, e.message))
                        .unwrap_or_default();
                    println!(
                        "  #{} {} on {} at {} for {}{}",
                        a.number,
                        a.outcome,
                        a.worker_id,
                        format_time(a.started_at),
                        took,
                        err
                    );
                }
            }
            for l in &e.provider_limits {
                println!(
                    "model: {} at {}: {} (concurrency {} of {})",
                    l.model, l.provider, l.status, l.in_flight, l.allowed
                );
            }
            if let Some(u) = &e.llm_usage {
                println!("calls: {}", u.summary());
            }
            if !e.artifacts.is_empty() {
                println!("artifacts (assay artifact {} NAME):", e.job.id);
                for a in &e.artifacts {
                    println!(
                        "  {} ({} bytes, attempt {}, sha256 {})",
                        a.name,
                        a.size,
                        a.attempt,
                        &a.sha256[..12]
                    );
                }
            }
            Ok(0)
        }
        Command::Artifact {
            job,
            name,
            output,
            server,
        } => {
            let client = server.client()?;
            let to = output.unwrap_or_else(|| PathBuf::from(&name));
            let n = client.download_artifact(job, &name, &to).await?;
            println!("wrote {} ({n} bytes)", to.display());
            Ok(0)
        }
        Command::Workers { server, json } => {
            let client = server.client()?;
            let workers = client.workers().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&workers)?);
            } else {
                for w in workers {
                    let status = if w.stopped {
                        "stopped".to_string()
                    } else if let Some(q) = w
                        .quarantined_until
                        .filter(|q| *q > crate::domain::now_micros())
                    {
                        format!("quarantined until {}", format_time(q))
                    } else {
                        "active".into()
                    };
                    println!(
                        "{} ({}) {status}, running {}, last seen {}, kinds {}",
                        w.id,
                        w.name,
                        w.running,
                        format_time(w.last_seen),
                        w.kinds.join(",")
                    );
                }
            }
            Ok(0)
        }
        Command::Results {
            pipeline,
            server,
            data_dir,
            json,
            sarif,
            top,
        } => {
            let jobs = analysis_jobs_of(pipeline, &server, data_dir.as_deref()).await?;
            let apps = crate::results::build(&jobs);
            if let Some(dir) = &sarif {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                for a in &apps {
                    let name = Path::new(&a.app)
                        .file_name()
                        .map(|n| n.to_string_lossy().to_string())
                        .unwrap_or_else(|| "app".into());
                    let file = dir.join(format!("{name}.sarif"));
                    std::fs::write(&file, serde_json::to_vec_pretty(&a.sarif())?)
                        .with_context(|| format!("writing {}", file.display()))?;
                    eprintln!("wrote {}", file.display());
                }
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&apps)?);
            } else if sarif.is_none() {
                print!("{}", crate::results::render(&apps, top));
            }
            Ok(0)
        }
        Command::Compare {
            pipeline,
            server,
            data_dir,
            json,
        } => {
            let jobs = analysis_jobs_of(pipeline, &server, data_dir.as_deref()).await?;
            let models = crate::results::compare(&crate::results::build(&jobs));
            if json {
                println!("{}", serde_json::to_string_pretty(&models)?);
            } else {
                print!("{}", crate::ranking::render(&models));
            }
            Ok(0)
        }
        Command::Export {
            pipeline,
            format,
            output,
            server,
            data_dir,
        } => {
            let bytes = match data_dir {
                Some(dir) => {
                    let store = open_data_dir(&dir).await?;
                    let gathered = crate::exports::gather(&store, pipeline)
                        .await?
                        .with_context(|| format!("no pipeline {pipeline} in {}", dir.display()))?;
                    gathered.export(format, crate::domain::now_micros())?
                }
                None => server.client()?.export(pipeline, format).await?,
            };
            let to = output.unwrap_or_else(|| PathBuf::from(format.download_name(pipeline)));
            if to.as_os_str() == "-" {
                use std::io::Write;
                std::io::stdout().write_all(&bytes)?;
            } else {
                // Through a temporary file in the same folder: a failed write leaves no
                // half file behind under the real name.
                let folder = match to.parent() {
                    Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                    _ => PathBuf::from("."),
                };
                let mut tmp = tempfile::NamedTempFile::new_in(&folder)
                    .with_context(|| format!("writing into {}", folder.display()))?;
                std::io::Write::write_all(&mut tmp, &bytes)?;
                // A temporary file is private (0600); an export is meant to be shared.
                {
                    use std::os::unix::fs::PermissionsExt;
                    tmp.as_file()
                        .set_permissions(std::fs::Permissions::from_mode(0o644))?;
                }
                tmp.persist(&to)
                    .with_context(|| format!("writing {}", to.display()))?;
                eprintln!("wrote {} ({} bytes)", to.display(), bytes.len());
            }
            Ok(0)
        }
        Command::Models {
            base_url,
            key_env,
            filter,
            refresh,
            json,
        } => {
            use crate::generation::provider::{models_cached, ProviderConfig};
            let config = ProviderConfig {
                name: "cli".into(),
                base_url,
                api_key_env: Some(key_env),
                timeout: Duration::from_secs(60),
            };
            let max_age = if refresh {
                Duration::ZERO
            } else {
                Duration::from_secs(24 * 3600)
            };
            let cache_dir = crate::kinds::cache::dir().with_file_name("models");
            let (mut models, cached) = models_cached(&config, &cache_dir, max_age).await?;
            if let Some(f) = filter {
                models.retain(|m| m.id.contains(&f));
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&models)?);
            } else {
                if cached {
                    eprintln!("(cached list; --refresh asks the provider)");
                }
                let per_m = |p: Option<f64>| {
                    p.map(|v| format!("${:.2}", v * 1e6))
                        .unwrap_or_else(|| "-".into())
                };
                println!(
                    "{:<48} {:>9} {:>10} {:>10}",
                    "model", "context", "in/1M tok", "out/1M tok"
                );
                for m in models {
                    let ctx = m
                        .context_length
                        .map(|c| c.to_string())
                        .unwrap_or_else(|| "-".into());
                    println!(
                        "{:<48} {:>9} {:>10} {:>10}",
                        m.id,
                        ctx,
                        per_m(m.prompt_price),
                        per_m(m.completion_price)
                    );
                }
            }
            Ok(0)
        }
        Command::Templates {
            action:
                Some(TemplatesAction::Import {
                    file,
                    name,
                    out,
                    force,
                }),
            ..
        } => {
            use crate::analysis::openapi_import as import;
            let size = std::fs::metadata(&file)
                .with_context(|| format!("reading {}", file.display()))?
                .len();
            if size > import::MAX_DOCUMENT_BYTES as u64 {
                bail!(
                    "{}: {size} bytes; an API description over {} bytes is refused",
                    file.display(),
                    import::MAX_DOCUMENT_BYTES
                );
            }
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let name = name.unwrap_or_else(|| {
                import::name_from(&file.file_stem().unwrap_or_default().to_string_lossy())
            });
            let doc =
                import::parse_document(&text).with_context(|| format!("{}", file.display()))?;
            let template = import::template_from_openapi(&doc, &name)
                .with_context(|| format!("{}", file.display()))?;
            let toml = import::to_toml(&template)?;
            match out {
                None => print!("{toml}"),
                Some(dir) => {
                    std::fs::create_dir_all(&dir)
                        .with_context(|| format!("creating {}", dir.display()))?;
                    let to = dir.join(format!("{name}.toml"));
                    if to.exists() && !force {
                        bail!("{} exists; --force replaces it", to.display());
                    }
                    std::fs::write(&to, toml)
                        .with_context(|| format!("writing {}", to.display()))?;
                    eprintln!(
                        "wrote {} ({} endpoints, {} data model types); `assay templates --dir {}` lists it, and an analysis stage uses it with `templates = \"{}\"`",
                        to.display(),
                        template.endpoints.len(),
                        template.data_model.len(),
                        dir.display(),
                        dir.display()
                    );
                }
            }
            Ok(0)
        }
        Command::Templates {
            action: None,
            dir,
            json,
        } => {
            use crate::analysis::catalog;
            let all = catalog::with_user_dir(dir.as_deref())?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&all.iter().collect::<Vec<_>>())?
                );
            } else {
                for t in all.iter() {
                    let r = &t.requirements;
                    println!(
                        "{:<24} {} ({} endpoints; requirements: {} backend, {} frontend, {} admin)",
                        t.name,
                        t.title,
                        t.endpoints.len(),
                        r.backend.len(),
                        r.frontend.len(),
                        r.admin.len()
                    );
                }
            }
            Ok(0)
        }
        Command::Bench(args) => crate::bench::run(args).await,
        Command::Supervise(_) => unreachable!("a supervisor runs before the runtime starts"),
        Command::Plan => unreachable!("a planner runs before the runtime starts"),
        Command::Seccomp { .. } => unreachable!("a filtered program runs before the runtime"),
    }
}

/// Every job of a pipeline, page by page.
async fn all_jobs<F, Fut>(mut page: F) -> Result<Vec<crate::store::Job>>
where
    F: FnMut(i64) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<crate::store::Job>>>,
{
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let batch = page(after).await?;
        let Some(last) = batch.last() else { break };
        after = last.id;
        all.extend(batch);
    }
    Ok(all)
}

fn read_spec(path: &Path, idempotency_key: Option<String>) -> Result<SubmitRequest> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the spec {}", path.display()))?;
    // Apps named by a folder on this machine go to the server as a list.
    let spec_dir = path.parent().unwrap_or(Path::new(""));
    let text = crate::analysis::discover::expand_app_sources(&text, spec_dir)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        .unwrap_or(text);
    // Validate locally first: a bad spec fails here with file, line and field.
    let spec = crate::spec::parse(&path.display().to_string(), &text)?;
    spec.plan()
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(SubmitRequest {
        spec: text,
        file_name: Some(path.display().to_string()),
        idempotency_key,
    })
}

/// `assay run`'s settings besides the spec, the data directory and the slots.
struct RunOptions {
    listen: SocketAddr,
    fresh: bool,
    plain: bool,
    /// `--app-root`, beyond the spec's folder and the current one.
    app_roots: Vec<PathBuf>,
    /// `--providers`, for both the server and the workers.
    providers: crate::generation::providers::Providers,
}

/// `assay run`: the embedded default. Server and workers live in this process and share
/// its runtime and its one shutdown token.
///
/// The embedded server allows every kind, `command` included (the spec is the user's
/// own), so it must not serve whoever else reaches its port: any local process, the apps
/// it analyzes among them. It requires tokens, and the only ones it knows at first are
/// two it mints now and holds in memory ([`server::auth::MemoryToken`]): an admin token
/// for this process's client and a worker token for its workers. The user's browser gets
/// a one-time login link instead of a token; tokens made with `assay token create` on the
/// data directory work too (for the CLI while the run goes on).
async fn run_embedded(
    mut req: SubmitRequest,
    spec_dir: PathBuf,
    data_dir: &Path,
    (workers, generate_workers): (usize, usize),
    run: RunOptions,
) -> Result<u8> {
    let RunOptions {
        listen,
        fresh,
        plain,
        app_roots,
        providers,
    } = run;
    // The spec's folder and the current one hold the apps a spec of one's own names (the
    // examples name `examples/apps/…` from the repository's root).
    let mut roots = vec![spec_dir, PathBuf::from(".")];
    roots.extend(app_roots);
    // Checked before anything starts: a wrong --app-root is said at once.
    crate::kinds::app_roots::AppRoots::new(&roots)?;
    // The same spec in the same data directory is the same run: resume it.
    let digest = hex::encode(Sha256::digest(req.spec.as_bytes()));
    req.idempotency_key = Some(if fresh {
        format!("run:{digest}:{}", uuid::Uuid::new_v4())
    } else {
        format!("run:{digest}")
    });
    let stop = shutdown_on_signals();
    let server_stop = CancellationToken::new();
    // The embedded run is the user's own spec on the user's own machine: every kind.
    let mut server_config = ServerConfig::new(data_dir.join("server"), listen);
    server_config.allowed_kinds = crate::kinds::KNOWN_KINDS
        .iter()
        .map(|k| k.to_string())
        .collect();
    let admin_token = server::auth::new_token();
    let worker_token = server::auth::new_token();
    server_config.require_auth = true;
    server_config.memory_tokens = vec![
        server::auth::MemoryToken::new(
            &admin_token,
            server::auth::Principal {
                token_id: server::auth::RUN_ADMIN_TOKEN_ID,
                name: "assay run".into(),
                scopes: vec![crate::domain::Scope::Admin],
                kinds: None,
            },
        ),
        server::auth::MemoryToken::new(
            &worker_token,
            server::auth::Principal {
                token_id: server::auth::RUN_WORKER_TOKEN_ID,
                name: "assay run's workers".into(),
                scopes: vec![crate::domain::Scope::Worker],
                kinds: None,
            },
        ),
    ];
    // One providers file for both halves: the server checks the names a spec picks, the
    // worker holds where each one is.
    server_config.providers = providers.names();
    let server = server::start(server_config, server_stop.clone()).await?;
    let url = format!("http://{}", server.addr);
    let mut config = WorkerConfig::new(&url, data_dir.join("spool"));
    // A stable id: after a crash, the next run delivers this worker's spooled results
    // and hands back what it was running at once instead of waiting for leases to expire.
    config.id = format!("local-{}", worker::hostname());
    config.name = "embedded".into();
    config.token = Some(worker::Secret(worker_token));
    config.app_roots = roots;
    config.concurrency = workers.max(1);
    config.generate_concurrency = generate_workers.max(1);
    config.shutdown_grace = Duration::from_secs(2);
    config.drain_timeout = Duration::from_secs(5);
    config.claim_wait = Duration::from_millis(250);
    // Without a sandbox here, the embedded worker leaves app kinds alone, unless the spec
    // needs them: then the run stops now, saying how to get one, instead of waiting forever.
    if crate::sandbox::enabled() {
        if let Err(e) = crate::sandbox::check() {
            let file = req.file_name.clone().unwrap_or_default();
            let starts_apps = crate::spec::parse(&file, &req.spec).is_ok_and(|s| {
                s.stages
                    .iter()
                    .any(|st| crate::kinds::APP_KINDS.contains(&st.kind.as_str()))
            });
            if starts_apps {
                bail!("{file} starts apps (dynamic or performance stages): {e}");
            }
            config
                .kinds
                .retain(|k| !crate::kinds::APP_KINDS.contains(&k.as_str()));
        }
    }
    config.providers = std::sync::Arc::new(providers);
    let worker_stop = CancellationToken::new();
    let worker_task = tokio::spawn(worker::run(config, worker_stop.clone()));
    let client = Client::with_token(&url, Some(&admin_token));
    let resp = client.submit(&req).await?;
    // The fragment never reaches a server or a Referer; the page trades the code for a
    // session cookie and drops it from the address bar.
    let dashboard = format!(
        "{url}/#/pipelines/{}?login={}",
        resp.pipeline_id,
        server.state.auth.one_time_login(&admin_token)
    );
    if resp.created {
        eprintln!(
            "pipeline {} started; dashboard (the link logs one browser in, once): {dashboard}",
            resp.pipeline_id
        );
    } else {
        eprintln!(
            "resuming pipeline {} (same spec in {}; --fresh starts anew); dashboard (the link logs one browser in, once): {dashboard}",
            resp.pipeline_id,
            data_dir.display(),
        );
    }
    let display = if plain {
        Display::Lines
    } else {
        Display::auto()
    };
    let detail = progress::follow(&client, resp.pipeline_id, display, &stop).await;
    worker_stop.cancel();
    let _ = worker_task.await;
    let summary = match &detail {
        Ok(d) => progress::print_summary(&client, d)
            .await
            .map_err(anyhow::Error::from),
        Err(_) => Ok(()),
    };
    server_stop.cancel();
    server.wait().await;
    let detail = detail?;
    summary?;
    if detail.pipeline.state.is_terminal() {
        analysis_report(data_dir, resp.pipeline_id).await?;
    }
    if stop.is_cancelled() && !detail.pipeline.state.is_terminal() {
        eprintln!("interrupted; run the same command again to resume");
        return Ok(130);
    }
    Ok(progress::exit_code(detail.pipeline.state))
}

/// After a run with analysis results: the models compared (when its apps name models) and
/// the HTML report written into the data directory.
async fn analysis_report(data_dir: &Path, pipeline_id: i64) -> Result<()> {
    let store = open_data_dir(data_dir).await?;
    let Some(gathered) = crate::exports::gather(&store, pipeline_id).await? else {
        return Ok(());
    };
    if gathered.apps.is_empty() {
        return Ok(());
    }
    if !gathered.models.is_empty() {
        println!(
            "\nmodels compared (assay compare {pipeline_id} --data-dir {}):",
            data_dir.display()
        );
        print!("{}", crate::ranking::render(&gathered.models));
    }
    let report = data_dir.join(format!("report-{pipeline_id}.html"));
    let bytes = gathered.export(
        crate::report::ExportFormat::Html,
        crate::domain::now_micros(),
    )?;
    std::fs::write(&report, bytes).with_context(|| format!("writing {}", report.display()))?;
    println!(
        "report: {} (opens offline); per app: assay results {pipeline_id} --data-dir {}",
        report.display(),
        data_dir.display()
    );
    Ok(())
}

/// The store of a data directory of `assay run`, read without a server.
async fn open_data_dir(dir: &Path) -> Result<crate::store::sqlite::SqliteStore> {
    let db = dir.join("server").join("assay.db");
    if !db.is_file() {
        bail!(
            "no Assay database at {} (is {} the --data-dir of `assay run`?)",
            db.display(),
            dir.display()
        );
    }
    Ok(crate::store::sqlite::SqliteStore::open(&db).await?)
}

/// A pipeline's analysis jobs, from a data directory when one is given, else from the server.
/// Whether `assay analyze` also generates apps, and which: the models asked for, or, when
/// none were and the provider's key is set, `ASSAY_GENERATE_MODELS` (default
/// `openai/gpt-4o-mini`); for every template of the tree that the catalog has. Said
/// either way, with how to change it.
fn generation_for(
    found: &crate::analysis::discover::Discovery,
    templates_dir: Option<&Path>,
    asked: Vec<String>,
    never: bool,
    provider: Option<String>,
    providers_file: Option<&Path>,
) -> Result<Option<crate::analysis::discover::Generation>> {
    use crate::generation::providers::{Providers, DEFAULT_PROVIDER};
    if never {
        return Ok(None);
    }
    let providers = match providers_file {
        Some(file) => Providers::load(file)?,
        None => Providers::builtin(),
    };
    let name = provider
        .clone()
        .unwrap_or_else(|| DEFAULT_PROVIDER.to_string());
    let config = providers.get(&name).ok_or_else(|| {
        anyhow::anyhow!(
            "--provider {name}: no such provider (known: {}); name it in a providers file (--providers)",
            providers.names().join(", ")
        )
    })?;
    let key_set = config
        .api_key_env
        .as_ref()
        .is_some_and(|k| std::env::var_os(k).is_some_and(|v| !v.is_empty()));
    let models: Vec<String> = if !asked.is_empty() {
        asked
    } else if key_set {
        std::env::var("ASSAY_GENERATE_MODELS")
            .unwrap_or_else(|_| "openai/gpt-4o-mini".into())
            .split(',')
            .map(|m| m.trim().to_string())
            .filter(|m| !m.is_empty())
            .collect()
    } else {
        eprintln!(
            "generation: off (set {} to generate apps too, or --generate MODELS)",
            config
                .api_key_env
                .as_deref()
                .unwrap_or("the provider's key")
        );
        return Ok(None);
    };
    if models.is_empty() {
        eprintln!("generation: off (no model named: ASSAY_GENERATE_MODELS is empty)");
        return Ok(None);
    }
    let catalog = crate::analysis::catalog::with_user_dir(templates_dir)?;
    let mut templates: Vec<String> = found
        .apps
        .iter()
        .filter_map(|a| a.template.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let (known, unknown): (Vec<String>, Vec<String>) =
        templates.drain(..).partition(|t| catalog.get(t).is_some());
    if !unknown.is_empty() {
        eprintln!(
            "generation: not for {} (not in the catalog; --templates DIR adds templates)",
            unknown.join(", ")
        );
    }
    if known.is_empty() {
        eprintln!("generation: off (no template of the tree is in the catalog)");
        return Ok(None);
    }
    eprintln!(
        "generation: {} apps ({} × {}) by {name}, each analyzed as it comes (--no-generate turns this off)",
        models.len() * known.len(),
        models.join(", "),
        known.join(", ")
    );
    Ok(Some(crate::analysis::discover::Generation {
        provider: provider.filter(|p| p != DEFAULT_PROVIDER),
        models,
        templates: known,
    }))
}

async fn analysis_jobs_of(
    pipeline: i64,
    server: &ServerArg,
    data_dir: Option<&Path>,
) -> Result<Vec<crate::store::Job>> {
    Ok(match data_dir {
        Some(dir) => {
            let store = open_data_dir(dir).await?;
            crate::exports::analysis_jobs(&store, pipeline).await?
        }
        None => {
            let client = server.client()?;
            client.pipeline(pipeline).await?;
            all_jobs(|after| {
                let client = client.clone();
                async move {
                    Ok(client
                        .jobs(&JobFilter {
                            pipeline_id: Some(pipeline),
                            after_id: Some(after),
                            limit: Some(5_000),
                            ..Default::default()
                        })
                        .await?)
                }
            })
            .await?
            .into_iter()
            .filter(|j| crate::results::ANALYSIS_KINDS.contains(&j.kind.as_str()))
            .collect()
        }
    })
}

/// Whether a spec has stages that run the analysis tools or start apps (and so need `uv`).
fn needs_tools(req: &SubmitRequest) -> bool {
    crate::spec::parse(req.file_name.as_deref().unwrap_or("spec"), &req.spec).is_ok_and(|spec| {
        spec.stages
            .iter()
            .any(|s| matches!(s.kind.as_str(), "static" | "dynamic" | "performance"))
    })
}

fn tool_step(what: &str) {
    eprintln!("  tools: {what}…");
}

/// The pinned analysis tools, installed on first use. A failed install is said and the run
/// goes on: the analyzers then report each missing tool as `not_available`, with its fix.
async fn ensure_tools() {
    if crate::toolchain::installed().is_none() && !crate::toolchain::missing_tools().is_empty() {
        eprintln!(
            "installing Assay's analysis tools (first use, a few minutes) into {}; ASSAY_NO_TOOLS_INSTALL=1 skips this",
            crate::toolchain::dir().display()
        );
    }
    match crate::toolchain::ensure(&tool_step).await {
        Ok(Some(done)) => eprintln!("  tools: {} packages installed", done.versions.len()),
        Ok(None) => {}
        Err(e) => eprintln!(
            "could not install the analysis tools: {e}; `assay doctor` says what is missing"
        ),
    }
}

#[derive(serde::Serialize)]
struct Check {
    what: &'static str,
    ok: bool,
    /// Without it an analyzer cannot do its work (else only the tests or extras need it).
    required: bool,
    detail: String,
}

fn doctor_checks() -> Vec<Check> {
    use crate::toolchain::which;
    let mut out = Vec::new();
    let mut program = |what: &'static str, found: Option<PathBuf>, required: bool, fix: &str| {
        out.push(Check {
            what,
            ok: found.is_some(),
            required,
            detail: match found {
                Some(p) => p.display().to_string(),
                None => format!("not found; {fix}"),
            },
        })
    };
    program(
        "python3",
        which("python3"),
        true,
        "apt-get install python3 python3-venv",
    );
    program("npm", which("npm"), true, "apt-get install nodejs npm");
    program(
        "bwrap",
        which("bwrap"),
        true,
        "apt-get install bubblewrap (apps run in its sandbox)",
    );
    program(
        "setpriv",
        which("setpriv"),
        true,
        "apt-get install util-linux",
    );
    program(
        "chromium",
        which("chromium"),
        false,
        "apt-get install chromium (the dashboard tests drive it)",
    );
    program(
        "chromedriver",
        which("chromedriver"),
        false,
        "apt-get install chromium-driver (the dashboard tests)",
    );
    let tools_fix = "run `assay tools install` (or any `assay run`/`assay analyze`, which installs them on first use)";
    for t in crate::analysis::static_tools::TOOLS {
        let found = crate::analysis::static_tools::find_program(t.program);
        out.push(Check {
            what: t.name,
            ok: found.is_some(),
            required: true,
            detail: match found {
                Some(p) => p.display().to_string(),
                None => format!("not found; {tools_fix}"),
            },
        });
    }
    let uv = crate::analysis::static_tools::find_program("uv");
    out.push(Check {
        what: "uv",
        ok: uv.is_some(),
        required: true,
        detail: match uv {
            Some(p) => format!("{} (builds each app's environment)", p.display()),
            None => format!("not found; {tools_fix}"),
        },
    });
    let sandbox = crate::sandbox::check();
    out.push(Check {
        what: "sandbox",
        ok: sandbox.is_ok(),
        required: true,
        detail: match sandbox {
            Ok(()) => "apps run in their own namespaces, reachable only through loopback".into(),
            Err(e) => format!("{e}; apps would run unconfined (--no-sandbox) — run as root with bubblewrap, or allow unprivileged user namespaces"),
        },
    });
    out
}
