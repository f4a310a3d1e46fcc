//! `tally keys` against the real PostgreSQL: `create` prints the key alone on standard output
//! (so `KEY=$(tally keys create ...)` works), `list` shows it without the key, `revoke` revokes
//! it; each change is audited with the command line as actor, a failed one writes nothing; and
//! `tally migrate` reports the first admin key. Runs with `TALLY_E2E=1` and the local stack up.

use std::process::{Output, Stdio};

use anyhow::ensure;
use serde_json::Value;
use tally_tests::enabled;
use tally_tests::harness::{stack, tally_command, teardown, unique_tag, Stack};

fn keys(st: &Stack, args: &[&str]) -> anyhow::Result<Output> {
    let mut cmd = tally_command(st, "keys", &st.settings.clickhouse.url)?;
    Ok(cmd
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()?)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

async fn audit_actions(pool: &sqlx::PgPool, target: &str) -> anyhow::Result<Vec<(String, String)>> {
    Ok(
        sqlx::query_as("SELECT action, actor FROM audit_log WHERE target = $1 ORDER BY id")
            .bind(target)
            .fetch_all(pool)
            .await?,
    )
}

#[test]
fn keys_create_list_revoke_round_trip() -> anyhow::Result<()> {
    if !enabled("keys_create_list_revoke_round_trip") {
        return Ok(());
    }
    let st = stack(&unique_tag());
    let rt = tokio::runtime::Runtime::new()?;
    let pool = rt.block_on(async {
        let pool = tally_sinks::postgres::connect(&st.settings.postgres).await?;
        tally_sinks::postgres::migrate(&pool).await?;
        anyhow::Ok(pool)
    })?;
    let name = format!("cli-{}", unique_tag());

    // create: the key, alone, is all of standard output.
    let out = keys(&st, &["create", "--name", &name, "--role", "ingest"])?;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    ensure!(out.status.success(), "create: {:?}: {stderr}", out.status);
    let key = stdout.lines().last().unwrap_or_default().to_owned();
    ensure!(
        stdout == format!("{key}\n"),
        "stdout is not just the key: {stdout:?}"
    );
    ensure!(key.starts_with("tly_") && key.len() == 47, "{key:?}");
    ensure!(stderr.contains(&name) && !stderr.contains(&key), "{stderr}");
    let found = rt.block_on(tally_sinks::postgres::keys::find_by_hash(
        &pool,
        &tally_api::auth::hash(&key),
    ))?;
    let found = found.ok_or_else(|| anyhow::anyhow!("the key is not stored"))?;
    ensure!(found.name == name && found.role == "ingest" && !found.revoked);

    // A taken name and a bad role fail, printing nothing on standard output.
    let out = keys(&st, &["create", "--name", &name, "--role", "read"])?;
    ensure!(!out.status.success() && out.stdout.is_empty(), "{out:?}");
    ensure!(text(&out.stderr).contains("already exists"), "{out:?}");
    let out = keys(
        &st,
        &["create", "--name", &format!("{name}-x"), "--role", "root"],
    )?;
    ensure!(
        out.status.code() == Some(2) && out.stdout.is_empty(),
        "{out:?}"
    );
    ensure!(text(&out.stderr).contains("ingest, read, admin"), "{out:?}");

    // list: the name and prefix, never the key.
    let out = keys(&st, &["list"])?;
    let table = text(&out.stdout);
    ensure!(out.status.success() && table.contains(&name), "{table}");
    ensure!(
        table.contains(&key[..12]) && !table.contains(&key),
        "{table}"
    );
    let out = keys(&st, &["list", "--json"])?;
    let rows: Value = serde_json::from_slice(&out.stdout)?;
    let row = rows
        .as_array()
        .and_then(|a| a.iter().find(|r| r["name"] == name.as_str()))
        .cloned()
        .unwrap_or_default();
    ensure!(
        row["role"] == "ingest" && row["revoked_at"].is_null(),
        "{row}"
    );
    ensure!(
        !rows.to_string().contains(&key),
        "the JSON list shows a key"
    );
    let id = row["id"].as_i64().unwrap_or_default();

    // revoke by name; an unknown key fails and writes no audit row.
    let out = keys(&st, &["revoke", &name])?;
    ensure!(out.status.success(), "revoke: {}", text(&out.stderr));
    let ghost = format!("ghost-{}", unique_tag());
    let out = keys(&st, &["revoke", &ghost])?;
    ensure!(
        !out.status.success() && text(&out.stderr).contains("no key named"),
        "{out:?}"
    );
    let out = keys(&st, &["list", "--json"])?;
    let rows: Value = serde_json::from_slice(&out.stdout)?;
    let revoked = rows
        .as_array()
        .and_then(|a| a.iter().find(|r| r["id"] == id))
        .map(|r| !r["revoked_at"].is_null());
    ensure!(revoked == Some(true), "{rows}");
    let found = rt.block_on(tally_sinks::postgres::keys::find_by_hash(
        &pool,
        &tally_api::auth::hash(&key),
    ))?;
    ensure!(
        found.is_some_and(|k| k.revoked),
        "not revoked in PostgreSQL"
    );

    let audit = rt.block_on(audit_actions(&pool, &format!("key:{id}")))?;
    let actions: Vec<&str> = audit.iter().map(|(a, _)| a.as_str()).collect();
    ensure!(actions == ["key.created", "key.revoked"], "{audit:?}");
    ensure!(
        audit.iter().all(|(_, actor)| actor.starts_with("cli")),
        "{audit:?}"
    );
    let ghost_rows: i64 = rt.block_on(
        sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE details->>'name' = $1")
            .bind(&ghost)
            .fetch_one(&pool),
    )?;
    ensure!(ghost_rows == 0, "a failed revoke was audited");
    Ok(())
}

#[test]
fn migrate_reports_the_first_admin_key() -> anyhow::Result<()> {
    if !enabled("migrate_reports_the_first_admin_key") {
        return Ok(());
    }
    let st = stack(&unique_tag());
    let rt = tokio::runtime::Runtime::new()?;
    let home = std::env::temp_dir().join(format!("tally-keys-home-{}", unique_tag()));
    let out = tally_command(&st, "migrate", &st.settings.clickhouse.url)?
        .env("TALLY_HOME", &home)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()?;
    let result = (|| {
        let stdout = text(&out.stdout);
        ensure!(out.status.success(), "migrate: {}", text(&out.stderr));
        let path = home.join("admin.key");
        if stdout.contains("created the first admin key") {
            // No admin key existed: it is in the file, readable by its owner only.
            use std::os::unix::fs::PermissionsExt as _;
            ensure!(stdout.contains(&path.display().to_string()), "{stdout}");
            let mode = std::fs::metadata(&path)?.permissions().mode() & 0o777;
            ensure!(mode == 0o600, "mode {mode:o}");
            let key = std::fs::read_to_string(&path)?.trim().to_owned();
            ensure!(!stdout.contains(&key), "migrate printed the key");
            let pool = rt.block_on(tally_sinks::postgres::connect(&st.settings.postgres))?;
            let found = rt.block_on(tally_sinks::postgres::keys::find_by_hash(
                &pool,
                &tally_api::auth::hash(&key),
            ))?;
            ensure!(found.is_some_and(|k| k.role == "admin" && !k.revoked));
        } else {
            // Another run created it before: migrate says so and writes no file.
            ensure!(stdout.contains("an admin key exists"), "{stdout}");
            ensure!(!path.exists(), "a key file without a new key");
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&home);
    teardown(&rt, &st)?;
    result
}
