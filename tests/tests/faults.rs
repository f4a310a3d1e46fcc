//! Faults on the real stack: ClickHouse unreachable for a while (a TCP proxy in front of it is
//! cut), then the pipeline process killed with SIGKILL in the middle of a stream and started
//! again. Afterwards every report point and summary must still equal the oracle: nothing lost,
//! nothing counted twice.

use std::net::SocketAddr;
use std::process::Child;
use std::time::Duration;

use anyhow::ensure;
use chrono::Utc;
use tally_tests::harness::{
    check_reports, check_summary, events, produce, setup, tally_command, teardown, unique_tag, Ev,
    Rng, Stack,
};
use tally_tests::{enabled, eventually};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A TCP proxy that can be cut: while down it refuses new connections and drops open ones.
struct Proxy {
    addr: SocketAddr,
    up: watch::Sender<bool>,
}

impl Proxy {
    async fn start(upstream: String) -> anyhow::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (up, rx) = watch::channel(true);
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mut rx = rx.clone();
                if !*rx.borrow() {
                    continue; // dropped: the client sees a reset
                }
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = rx.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Ok(Proxy { addr, up })
    }

    fn set(&self, up: bool) {
        self.up.send_replace(up);
    }
}

/// `tally run` as its own process, configured by environment for this test's names, writing to
/// ClickHouse through `clickhouse_url`.
fn spawn_run(st: &Stack, clickhouse_url: &str, log: &std::path::Path) -> anyhow::Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    Ok(tally_command(st, "run", clickhouse_url)?
        .stderr(log)
        .spawn()?)
}

/// How many raw events ClickHouse holds (read directly, not through the proxy).
async fn stored(st: &Stack) -> anyhow::Result<u64> {
    let ch = tally_sinks::clickhouse::connect(&st.settings.clickhouse, true);
    Ok(ch
        .query("SELECT count() FROM events FINAL")
        .fetch_one::<u64>()
        .await?)
}

#[test]
fn clickhouse_outage_and_sigkill_lose_and_double_count_nothing() -> anyhow::Result<()> {
    if !enabled("clickhouse_outage_and_sigkill_lose_and_double_count_nothing") {
        return Ok(());
    }
    let tag = unique_tag();
    let (rt, st) = setup(&tag)?;
    let upstream = st
        .settings
        .clickhouse
        .url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let proxy = rt.block_on(Proxy::start(upstream))?;
    let via_proxy = format!("http://{}", proxy.addr);
    let log = std::env::temp_dir().join(format!("tally-faults-{tag}.log"));
    let mut child = spawn_run(&st, &via_proxy, &log)?;

    let now = Utc::now().timestamp_millis() as u64;
    let start = now - now % 3_600_000 - 2 * 3_600_000;
    let mut rng = Rng(0x5EED ^ start);
    let slice = |rng: &mut Rng, k: u64| events(rng, start + k * 30 * 60_000, 30 * 60_000, 800);
    let (a, b, c) = (slice(&mut rng, 0), slice(&mut rng, 1), slice(&mut rng, 2));
    let d = events(&mut rng, start + 95 * 60_000, 20 * 60_000, 400);
    let mut all: Vec<Ev> = Vec::new();
    let (from, to) = (start - 60_000, now + 60_000);

    // 1. ClickHouse goes away while events keep coming, then comes back.
    rt.block_on(produce(&st, &a))?;
    all.extend(a.iter().cloned());
    rt.block_on(eventually(
        "slice a stored",
        Duration::from_secs(60),
        || check_summary(&st, &all, from, to),
    ))?;
    proxy.set(false);
    rt.block_on(produce(&st, &b))?;
    all.extend(b.iter().cloned());
    // The outage lasts a few seconds (a fault's duration, not a synchronisation).
    rt.block_on(async { tokio::time::sleep(Duration::from_secs(4)).await });
    ensure!(
        rt.block_on(stored(&st))? == a.len() as u64,
        "rows arrived while ClickHouse was cut off"
    );
    proxy.set(true);
    rt.block_on(eventually(
        "slice b stored after the outage",
        Duration::from_secs(60),
        || check_summary(&st, &all, from, to),
    ))?;

    // 2. SIGKILL in the middle of a slice, then a restart.
    rt.block_on(produce(&st, &c))?;
    all.extend(c.iter().cloned());
    let before = (a.len() + b.len()) as u64;
    rt.block_on(eventually(
        "part of slice c stored",
        Duration::from_secs(60),
        || async {
            let n = stored(&st).await?;
            ensure!(n > before, "{n} rows");
            Ok(())
        },
    ))?;
    child.kill()?; // SIGKILL: no drain, no final progress save
    child.wait()?;
    let mut child = spawn_run(&st, &via_proxy, &log)?;
    rt.block_on(produce(&st, &d))?;
    all.extend(d.iter().cloned());
    let pusher = Ev {
        id: Some(format!("pusher-{tag}")),
        event_type: "page_view".into(),
        user: "pusher".into(),
        session: None,
        ts_ms: now,
    };
    rt.block_on(produce(&st, std::slice::from_ref(&pusher)))?;
    all.push(pusher);
    let verdict = rt.block_on(async {
        eventually(
            "reports exact after outage and crash",
            Duration::from_secs(90),
            || check_reports(&st, &all, from, to),
        )
        .await?;
        eventually(
            "summary exact after outage and crash",
            Duration::from_secs(30),
            || check_summary(&st, &all, from, to),
        )
        .await
    });
    let _ = child.kill();
    let _ = child.wait();
    if verdict.is_err() {
        eprintln!("pipeline log: {}", log.display());
    }
    verdict?;
    let _ = std::fs::remove_file(&log);
    teardown(&rt, &st)
}
