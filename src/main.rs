//! `tally`: the one binary. Each subcommand wires the crates together; none holds logic of its
//! own beyond that.

mod config;
mod produce;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tally_api::AppState;

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
    /// Run the pipeline and the API in one process.
    All,
    /// Send synthetic user events to Kafka (load generator).
    Produce(produce::ProduceArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,rdkafka=warn,sqlx=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Up | Command::Down | Command::Status = cli.command {
        return stack(match cli.command {
            Command::Up => "up",
            Command::Down => "down",
            _ => "status",
        });
    }
    let config = config::load(cli.config.as_deref(), std::env::vars())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Migrate => runtime.block_on(migrate(&config)),
        Command::Run => {
            let shutdown = shutdown_on_signal(&runtime);
            run_pipeline(&config, runtime.handle().clone(), shutdown)
        }
        Command::Serve => runtime.block_on(async {
            let state = app_state(&config).await?;
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
        Command::Up | Command::Down | Command::Status => Ok(()),
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
    let pool = tally_sinks::postgres::connect(&config.postgres).await?;
    let applied = tally_sinks::postgres::migrate(&pool).await?;
    println!(
        "postgres: migrations applied: {}",
        listed(&applied, "none (up to date)")
    );
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

fn settings(config: &TallyConfig) -> tally_pipeline::PipelineSettings {
    tally_pipeline::PipelineSettings {
        kafka: config.kafka.clone(),
        clickhouse: config.clickhouse.clone(),
        postgres: config.postgres.clone(),
        pipeline: config.pipeline.clone(),
    }
}

fn run_pipeline(
    config: &TallyConfig,
    runtime: tokio::runtime::Handle,
    shutdown: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    tally_pipeline::run(settings(config), runtime, shutdown).context("pipeline")
}

fn run_all(config: &TallyConfig, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let shutdown = shutdown_on_signal(runtime);
    let state = runtime.block_on(app_state(config))?;
    let api_stop = Arc::clone(&shutdown);
    let api = runtime.spawn(serve_owned(config.clone(), state, async move {
        while !api_stop.load(Ordering::SeqCst) {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }));
    let result = run_pipeline(config, runtime.handle().clone(), Arc::clone(&shutdown));
    shutdown.store(true, Ordering::SeqCst);
    runtime.block_on(api).context("api task")??;
    result
}

async fn app_state(config: &TallyConfig) -> anyhow::Result<AppState> {
    let producer = tally_pipeline::kafka::producer_config(&config.kafka)
        .create()
        .context("creating the kafka producer")?;
    Ok(AppState {
        config: Arc::new(config.api.clone()),
        kafka: Arc::new(config.kafka.clone()),
        producer,
        clickhouse: tally_sinks::clickhouse::connect(&config.clickhouse, true),
        postgres: tally_sinks::postgres::connect(&config.postgres).await?,
        pipeline_name: config.pipeline.name.clone(),
        grace_ms: config.pipeline.grace_ms,
        retention_days: config.clickhouse.retention_days,
    })
}

async fn serve(
    config: &TallyConfig,
    state: AppState,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(&config.api.listen)
        .await
        .with_context(|| {
            format!(
                "binding {} (set api.listen or TALLY_API__LISTEN)",
                config.api.listen
            )
        })?;
    tracing::info!(address = %listener.local_addr()?, "api listening");
    tally_api::serve(listener, tally_api::router(state), stop).await?;
    Ok(())
}

async fn serve_owned(
    config: TallyConfig,
    state: AppState,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    serve(&config, state, stop).await
}

/// A flag set by Ctrl-C or SIGTERM.
fn shutdown_on_signal(runtime: &tokio::runtime::Runtime) -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let set = Arc::clone(&flag);
    runtime.spawn(async move {
        if let Ok(name) = wait_for_signal().await {
            tracing::info!(
                signal = name,
                "shutting down: draining to ClickHouse and saving progress"
            );
        }
        set.store(true, Ordering::SeqCst);
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
