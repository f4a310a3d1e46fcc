//! `tally`: the one binary. Each subcommand wires the crates together; none holds logic of its
//! own beyond that.

mod config;
mod delivery;
mod import;
mod jobs_cli;
mod keys_cli;
mod produce;
mod topology_cli;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tally_api::AppState;
use tally_pipeline::{ExitClass, Health};

use crate::config::TallyConfig;

/// Tally: streaming product analytics (Kafka → timely dataflow → ClickHouse).
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Configuration file (default: ./tally.toml when present). Environment variables
    /// TALLY_<SECTION>__<KEY> override it, e.g. TALLY_KAFKA__BROKERS=host:9092.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Install (if missing) and start the local stack: Kafka, ClickHouse, PostgreSQL.
    Up,
    /// Stop what `tally up` started.
    Down,
    /// Show whether each local service runs and where it listens.
    Status,
    /// Create or update the Kafka topics and the ClickHouse and PostgreSQL schemas (idempotent).
    Migrate,
    /// Run the pipeline: Kafka → windows → ClickHouse.
    Run,
    /// Serve the HTTP API.
    Serve,
    /// Run the pipeline, the API and the job worker in one process.
    All,
    /// Send synthetic user events to Kafka (load generator).
    Produce(produce::ProduceArgs),
    /// Run the job worker: late-event corrections, rebuilds, retention (also part of `all`).
    Worker {
        /// Jobs run at once.
        #[arg(long, default_value_t = 2)]
        concurrency: usize,
        /// Serve `GET /metrics` (the job and correction metrics) on this address, e.g.
        /// 127.0.0.1:9101.
        #[arg(long, value_name = "ADDR")]
        metrics_listen: Option<String>,
    },
    /// Recompute every rollup row in a time range from the raw events (e.g. after a bug fix),
    /// widened to whole UTC days; runs as a job on a worker and shows its progress.
    Rebuild(jobs_cli::RebuildArgs),
    /// List queued jobs, recent job runs and the late-event ledger.
    Jobs(jobs_cli::JobsArgs),
    /// Manage API keys: `keys create --name N --role ingest|read|admin` (prints the key once,
    /// alone on the last line of standard output), `keys list [--json]`, `keys revoke
    /// NAME_OR_ID`.
    Keys(keys_cli::KeysArgs),
    /// Import files of historical events (JSON lines, JSON array, CSV; gzip or not) through
    /// the same validation and Kafka path as `POST /events`.
    ///
    /// Events without `event_id` get a stable id derived from the record's position (line;
    /// element index in a JSON array) and its bytes, so importing the same file again, from
    /// another path or with lines appended, counts nothing twice. Rejected records go to the
    /// rejects file with their line and reason. Exit codes: 0 all accepted (or
    /// --allow-rejects), 65 records rejected or a file ends early (truncated gzip), 66 a path
    /// cannot be opened, 69 Kafka unavailable or did not acknowledge, 73 the rejects file
    /// cannot be written, 78 bad flags or `tally migrate` not run, 130 interrupted.
    Import(import::ImportArgs),
    /// Check, explain and list topology files (`topology validate FILE...`, `topology plan
    /// FILE`, `topology list [--json]`); see docs/topologies.md.
    Topology(topology_cli::TopologyArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,rdkafka=warn,sqlx=warn,graphile_worker=warn,graphile_worker_migrations=warn,graphile_worker_queries=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}

/// The exit code of a fatal error: per class (sysexits.h), 1 when unclassified.
fn exit_code(e: &anyhow::Error) -> u8 {
    if e.downcast_ref::<InvalidConfig>().is_some() {
        return ExitClass::Config.code();
    }
    if let Some(file) = e
        .chain()
        .find_map(|e| e.downcast_ref::<tally_topologies::file::FileError>())
    {
        return file.exit_code();
    }
    if let Some(import) = e
        .chain()
        .find_map(|e| e.downcast_ref::<import::ImportError>())
    {
        return import.exit_code();
    }
    if e.chain()
        .any(|e| e.downcast_ref::<import::settle::NotSettled>().is_some())
    {
        return ExitClass::Conflict.code(); // 75, EX_TEMPFAIL: try again later
    }
    ExitClass::of_chain(e.chain()).map_or(1, ExitClass::code)
}

/// Marks errors of `tally.toml` and `TALLY_*` variables (exit 78, like every config error).
#[derive(Debug)]
pub(crate) struct InvalidConfig;

impl std::fmt::Display for InvalidConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("invalid configuration")
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Command::Up | Command::Down | Command::Status = cli.command {
        stack(match cli.command {
            Command::Up => "up",
            Command::Down => "down",
            _ => "status",
        })?;
        return Ok(ExitCode::SUCCESS);
    }
    if let Command::Topology(args) = &cli.command {
        if let Some(code) = topology_cli::validate(args) {
            return Ok(code);
        }
    }
    let config = config::load(cli.config.as_deref(), std::env::vars()).context(InvalidConfig)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if let Command::Import(args) = &cli.command {
        let stop = shutdown_on_signal(&runtime, IMPORT_DRAIN);
        return runtime.block_on(import::run(args, &config, stop));
    }
    match cli.command {
        Command::Migrate => runtime.block_on(migrate(&config)),
        Command::Run => {
            let topologies = runtime.block_on(topologies(&config))?;
            let shutdown = shutdown_on_signal(&runtime, PIPELINE_DRAIN);
            run_pipeline(
                &config,
                &topologies,
                runtime.handle().clone(),
                shutdown,
                Health::default(),
            )
        }
        Command::Serve => runtime.block_on(async {
            let state = app_state(&config, &topologies(&config).await?).await?;
            serve(&config, state, async {
                let _ = wait_for_signal().await;
            })
            .await
        }),
        Command::All => run_all(&config, &runtime),
        Command::Produce(args) => runtime.block_on(async {
            let report = produce::run(&args, &config.kafka.brokers, &config.kafka.topic).await?;
            println!("{report}");
            Ok(())
        }),
        Command::Worker {
            concurrency,
            metrics_listen,
        } => runtime.block_on(async {
            if let Some(addr) = metrics_listen {
                let listener = tokio::net::TcpListener::bind(&addr)
                    .await
                    .with_context(|| format!("binding --metrics-listen {addr}"))
                    .context(InvalidConfig)?;
                tokio::spawn(tally_api::serve(
                    listener,
                    tally_api::metrics_router(),
                    std::future::pending(),
                ));
            }
            let topologies = topologies(&config).await?;
            let pool = tally_sinks::postgres::connect(&config.postgres).await?;
            let stop = async {
                let _ = wait_for_signal().await;
                tracing::info!(
                    "shutting down the worker: letting running jobs finish (at most 30 s)"
                );
            };
            let settings = job_settings(&config, &topologies, concurrency);
            tally_jobs::run_worker(settings, pool, stop).await?;
            Ok(())
        }),
        Command::Rebuild(args) => runtime.block_on(jobs_cli::rebuild(&config, &args)),
        Command::Jobs(args) => runtime.block_on(jobs_cli::jobs(&config, &args)),
        Command::Keys(args) => runtime.block_on(keys_cli::run(&config, &args)),
        Command::Topology(args) => runtime.block_on(topology_cli::run(&config, &args)),
        Command::Up | Command::Down | Command::Status | Command::Import(_) => Ok(()),
    }
    .map(|()| ExitCode::SUCCESS)
}

/// The enabled topologies (`[topologies]`), with their tables resolved to the versions `tally
/// migrate` created. Errors: a topology file error (exit 65/78), a topology not migrated or
/// changed since (exit 78: run `tally migrate`), ClickHouse unreachable.
async fn topologies(config: &TallyConfig) -> anyhow::Result<Vec<tally_core::Topology>> {
    // A bad topology file is a configuration error of this command (exit 78), as in
    // `tally.toml`; `tally topology validate` exits 65 for the same file.
    let loaded = config.topologies.load().context(InvalidConfig)?;
    Ok(tally_pipeline::resolve_topologies(&config.postgres, &config.clickhouse, &loaded).await?)
}

/// What the job worker needs from the configuration.
fn job_settings(
    config: &TallyConfig,
    topologies: &[tally_core::Topology],
    concurrency: usize,
) -> tally_jobs::JobSettings {
    tally_jobs::JobSettings {
        clickhouse: config.clickhouse.clone(),
        pipeline: config.pipeline.name.clone(),
        topologies: topologies.to_vec(),
        grace_ms: config.pipeline.grace_ms,
        retention_check_secs: config.pipeline.retention_check_secs,
        concurrency,
    }
}

/// Runs `deploy/local/stack.sh`.
fn stack(command: &str) -> anyhow::Result<()> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/local/stack.sh");
    let status = std::process::Command::new("bash")
        .arg(script)
        .arg(command)
        .status()
        .with_context(|| format!("running {script}"))?;
    anyhow::ensure!(status.success(), "{script} {command} failed ({status})");
    Ok(())
}

async fn migrate(config: &TallyConfig) -> anyhow::Result<()> {
    let topologies = config.topologies.load().context(InvalidConfig)?;
    let created = tally_pipeline::kafka::ensure_topics(&config.kafka).await?;
    println!(
        "kafka: topics created: {}",
        listed(&created, "none (all exist)")
    );
    let report = tally_sinks::clickhouse::migrate(&config.clickhouse).await?;
    let retention = if report.features.ttl {
        "supported (retention by TTL)"
    } else {
        "unsupported (retention by dropping monthly partitions)"
    };
    println!(
        "clickhouse {}: TTL {retention}; migrations applied: {}",
        report.features.version,
        listed(&report.applied, "none (up to date)")
    );
    topology_cli::migrate(config, &topologies).await?;
    let pool = tally_sinks::postgres::connect(&config.postgres).await?;
    tally_jobs::migrate(&pool).await?;
    let applied = tally_sinks::postgres::migrate(&pool).await?;
    println!(
        "postgres: migrations applied: {}; job queue schema ({}) up to date",
        listed(&applied, "none (up to date)"),
        tally_jobs::QUEUE_SCHEMA
    );
    match keys_cli::ensure_admin_key(&pool).await? {
        Some(path) => println!(
            "api: created the first admin key; it is in {} (mode 0600; `tally keys create` makes more)",
            path.display()
        ),
        None => println!("api: an admin key exists (`tally keys list`)"),
    }
    Ok(())
}

/// `a, b, c`, or `none` for an empty list.
fn listed<T: AsRef<str>>(items: &[T], none: &str) -> String {
    if items.is_empty() {
        return none.to_owned();
    }
    items
        .iter()
        .map(AsRef::as_ref)
        .collect::<Vec<_>>()
        .join(", ")
}

fn settings(
    config: &TallyConfig,
    topologies: &[tally_core::Topology],
) -> tally_pipeline::PipelineSettings {
    tally_pipeline::PipelineSettings {
        kafka: config.kafka.clone(),
        clickhouse: config.clickhouse.clone(),
        postgres: config.postgres.clone(),
        pipeline: config.pipeline.clone(),
        topologies: topologies.to_vec(),
    }
}

fn run_pipeline(
    config: &TallyConfig,
    topologies: &[tally_core::Topology],
    runtime: tokio::runtime::Handle,
    shutdown: Arc<AtomicBool>,
    health: Health,
) -> anyhow::Result<()> {
    let settings = settings(config, topologies);
    tally_pipeline::run_with_health(settings, runtime, shutdown, health).context("pipeline")
}

/// The pipeline and the API in one process, with one fate: when either stops (a fatal error,
/// or the API failing), the other stops too and the process exits with the first error's code.
/// The listener is bound before the pipeline starts (a taken port fails fast, exit 78); the API
/// keeps serving while the pipeline drains (`/readyz` says `draining`) and stops after it.
fn run_all(config: &TallyConfig, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let shutdown = shutdown_on_signal(runtime, PIPELINE_DRAIN);
    let health = Health::default();
    let topologies = runtime.block_on(topologies(config))?;
    let mut state = runtime.block_on(app_state(config, &topologies))?;
    state.pipeline = Some(health.clone());
    let listener = runtime.block_on(bind(config))?;
    let pipeline_done = Arc::new(AtomicBool::new(false));
    let api_stop = Arc::clone(&pipeline_done);
    let api_failed = Arc::clone(&shutdown);
    let api = runtime.spawn(async move {
        let stop = async move {
            while !api_stop.load(Ordering::SeqCst) {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        };
        let read_timeout = read_timeout(&state.config);
        let result = tally_api::serve_with_read_timeout(
            listener,
            tally_api::router(state),
            stop,
            read_timeout,
        )
        .await;
        // An API that cannot serve stops the pipeline too: one process, one fate.
        api_failed.store(true, Ordering::SeqCst);
        result.context("serving the api")
    });
    let worker_stop = Arc::clone(&pipeline_done);
    let worker_failed = Arc::clone(&shutdown);
    let pool = runtime.block_on(tally_sinks::postgres::connect(&config.postgres))?;
    let settings = job_settings(config, &topologies, 2);
    let worker = runtime.spawn(async move {
        let stop = async move {
            while !worker_stop.load(Ordering::SeqCst) {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        };
        let result = tally_jobs::run_worker(settings, pool, stop).await;
        if result.is_err() {
            // One process, one fate: a worker that cannot run stops the pipeline too.
            worker_failed.store(true, Ordering::SeqCst);
        }
        result.context("job worker")
    });
    let result = run_pipeline(
        config,
        &topologies,
        runtime.handle().clone(),
        Arc::clone(&shutdown),
        health,
    );
    pipeline_done.store(true, Ordering::SeqCst);
    let served = runtime.block_on(api).context("api task")?;
    let worked = runtime.block_on(worker).context("worker task")?;
    result.and(served).and(worked)
}

async fn app_state(
    config: &TallyConfig,
    topologies: &[tally_core::Topology],
) -> anyhow::Result<AppState> {
    let producer = tally_pipeline::kafka::producer_config(&config.kafka)
        .create()
        .context("creating the kafka producer")?;
    let postgres = tally_sinks::postgres::connect(&config.postgres).await?;
    Ok(AppState {
        config: Arc::new(config.api.clone()),
        kafka: Arc::new(tally_api::KafkaTarget {
            topic: config.kafka.topic.clone(),
            produce_timeout_ms: config.kafka.produce_timeout_ms,
            max_message_bytes: config.kafka.max_message_bytes,
        }),
        topologies: Arc::new(topologies.to_vec()),
        producer,
        clickhouse: tally_sinks::clickhouse::connect_reader(&config.clickhouse),
        keys: tally_api::auth::KeyStore::postgres(postgres.clone()),
        limiters: Arc::new(tally_api::limits::Limiters::new(&config.api)),
        request_log: tally_api::request_log::RequestLog::start(postgres.clone(), &config.api),
        postgres,
        pipeline_name: config.pipeline.name.clone(),
        grace_ms: config.pipeline.grace_ms,
        retention_days: config.clickhouse.retention_days,
        pipeline: None,
    })
}

async fn serve(
    config: &TallyConfig,
    state: AppState,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = bind(config).await?;
    let read_timeout = read_timeout(&state.config);
    tally_api::serve_with_read_timeout(listener, tally_api::router(state), stop, read_timeout)
        .await?;
    Ok(())
}

/// Binds `api.listen` (and serves `/metrics` on `api.metrics_listen` when set); failing is a configuration error (exit 78): the address is taken or
/// not this host's.
async fn bind(config: &TallyConfig) -> anyhow::Result<tokio::net::TcpListener> {
    let listener = tokio::net::TcpListener::bind(&config.api.listen)
        .await
        .with_context(|| {
            format!(
                "binding {} (set api.listen or TALLY_API__LISTEN)",
                config.api.listen
            )
        })
        .context(InvalidConfig)?;
    tracing::info!(address = %listener.local_addr()?, "api listening");
    if !config.api.metrics_listen.is_empty() {
        // `/metrics` on a listener of its own (the API's router leaves it out then).
        let metrics = tokio::net::TcpListener::bind(&config.api.metrics_listen)
            .await
            .with_context(|| {
                format!(
                    "binding {} (set api.metrics_listen or TALLY_API__METRICS_LISTEN)",
                    config.api.metrics_listen
                )
            })
            .context(InvalidConfig)?;
        tracing::info!(address = %metrics.local_addr()?, "metrics listening");
        tokio::spawn(tally_api::serve(
            metrics,
            tally_api::metrics_router(),
            std::future::pending(),
        ));
    }
    Ok(listener)
}

/// What the pipeline does after the first signal.
const PIPELINE_DRAIN: &str =
    "shutting down: draining to ClickHouse and saving progress (send it again to exit at once)";
/// What `tally import` does after the first signal.
const IMPORT_DRAIN: &str =
    "stopping the import: waiting for the events in flight (send it again to exit at once)";

/// A flag set by Ctrl-C or SIGTERM, after logging `draining` (what happens next). A second
/// signal exits at once (code 130), without the drain: for the pipeline nothing is lost, since
/// progress only covers what ClickHouse acknowledged; an import can be run again.
fn shutdown_on_signal(
    runtime: &tokio::runtime::Runtime,
    draining: &'static str,
) -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let set = Arc::clone(&flag);
    runtime.spawn(async move {
        match wait_for_signal().await {
            Ok(name) => tracing::info!(signal = name, "{draining}"),
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for signals");
                return;
            }
        }
        set.store(true, Ordering::SeqCst);
        if let Ok(name) = wait_for_signal().await {
            tracing::warn!(signal = name, "second signal: exiting without draining");
            std::process::exit(130);
        }
    });
    flag
}

async fn wait_for_signal() -> std::io::Result<&'static str> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.map(|()| "SIGINT"),
        _ = term.recv() => Ok("SIGTERM"),
    }
}

/// How long a connection may leave the API waiting for its next bytes: [`tally_api::READ_TIMEOUT`],
/// or longer when `api.request_timeout_ms` is (a slow answer is never cut by it).
fn read_timeout(api: &tally_api::ApiConfig) -> std::time::Duration {
    tally_api::READ_TIMEOUT.max(std::time::Duration::from_millis(
        api.request_timeout_ms.saturating_add(5_000),
    ))
}
