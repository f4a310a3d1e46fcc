//! `tally keys`: API keys from the command line, and the first admin key `tally migrate`
//! creates. Keys are printed once (`create`: alone on the last line of standard output, every
//! other word on standard error) and stored only as their SHA-256.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Args, Subcommand, ValueEnum};
use tally_api::auth::Role;
use tally_sinks::postgres::audit::Actor;
use tally_sinks::postgres::keys::{self, KeyError, KeyRow};

use crate::config::TallyConfig;

/// `tally keys`.
#[derive(Args, Debug)]
pub struct KeysArgs {
    #[command(subcommand)]
    command: KeysCommand,
}

#[derive(Subcommand, Debug)]
enum KeysCommand {
    /// Create a key; it is printed once, alone on the last line of standard output (capture it
    /// with `KEY=$(tally keys create --name ci --role ingest)`).
    Create {
        /// Unique name: 1 to 64 characters of A-Z a-z 0-9 . _ -, starting with a letter.
        #[arg(long)]
        name: String,
        /// What the key may do: `ingest` (POST /events), `read` (reports, dashboard data,
        /// saved resources) or `admin` (everything).
        #[arg(long, value_enum)]
        role: RoleArg,
    },
    /// List every key (valid and revoked): name, id, role, prefix, created, last used,
    /// revoked. Never the keys themselves.
    List {
        /// One JSON array on standard output instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key by name (or by id when no key has that name); it stops working within 5 s.
    Revoke {
        /// The key's name or id.
        name_or_id: String,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum RoleArg {
    Ingest,
    Read,
    Admin,
}

impl From<RoleArg> for Role {
    fn from(r: RoleArg) -> Role {
        match r {
            RoleArg::Ingest => Role::Ingest,
            RoleArg::Read => Role::Read,
            RoleArg::Admin => Role::Admin,
        }
    }
}

/// Runs `tally keys ...`. Errors: an invalid name (exit 78), a taken name or an unknown key to
/// revoke (exit 1), PostgreSQL unreachable.
pub async fn run(config: &TallyConfig, args: &KeysArgs) -> anyhow::Result<()> {
    let pool = tally_sinks::postgres::connect(&config.postgres).await?;
    match &args.command {
        KeysCommand::Create { name, role } => {
            let (row, key) = create(&pool, name, (*role).into()).await?;
            eprintln!(
                "created key `{}` (id {}, role {}, prefix {}); it is shown once, on the next line:",
                row.name, row.id, row.role, row.key_prefix
            );
            let mut out = std::io::stdout().lock();
            writeln!(out, "{key}")?;
            out.flush()?;
        }
        KeysCommand::List { json } => {
            let rows = keys::list(&pool).await?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print!("{}", table(&rows));
            }
        }
        KeysCommand::Revoke { name_or_id } => {
            match keys::revoke_checked(&pool, name_or_id, &Actor::cli(), false).await? {
                keys::Revoked::Done(row) | keys::Revoked::LastAdmin(row) => eprintln!(
                    "revoked key `{}` (id {}); it stops working within 5 s",
                    row.name, row.id
                ),
                keys::Revoked::AlreadyRevoked(row) => eprintln!(
                    "key `{}` (id {}) was already revoked{}; nothing changed",
                    row.name,
                    row.id,
                    row.revoked_at
                        .map(|t| format!(
                            " at {}",
                            t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                        ))
                        .unwrap_or_default()
                ),
                keys::Revoked::NotFound => anyhow::bail!(
                    "no key named {name_or_id:?} or with that id (see `tally keys list`)"
                ),
            }
        }
    }
    Ok(())
}

/// Generates a key and stores it as `name` with `role` (audited `key.created`, actor the
/// command line); returns the row and the key.
async fn create(pool: &sqlx::PgPool, name: &str, role: Role) -> anyhow::Result<(KeyRow, String)> {
    let secret = tally_api::auth::generate()?;
    let new = keys::NewKey {
        name,
        role: role.as_str(),
        key_hash: &secret.key_hash,
        key_prefix: &secret.key_prefix,
    };
    match keys::create(pool, new, &Actor::cli()).await {
        Ok(row) => Ok((row, secret.key)),
        Err(KeyError::InvalidName(reason)) => {
            Err(anyhow::anyhow!(reason).context(crate::InvalidConfig))
        }
        Err(e) => Err(e.into()),
    }
}

fn when(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map_or_else(
        || "-".to_owned(),
        |t| t.format("%Y-%m-%d %H:%M:%S").to_string(),
    )
}

/// The rows as an aligned table with a header.
fn table(rows: &[KeyRow]) -> String {
    let mut lines = vec![[
        "NAME".to_owned(),
        "ID".to_owned(),
        "ROLE".to_owned(),
        "PREFIX".to_owned(),
        "CREATED".to_owned(),
        "LAST USED".to_owned(),
        "REVOKED".to_owned(),
    ]];
    for r in rows {
        lines.push([
            r.name.clone(),
            r.id.to_string(),
            r.role.clone(),
            r.key_prefix.clone(),
            when(Some(r.created_at)),
            when(r.last_used_at),
            when(r.revoked_at),
        ]);
    }
    let widths: Vec<usize> = (0..7)
        .map(|i| {
            lines
                .iter()
                .map(|l| l[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for l in &lines {
        let cells: Vec<String> = l
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// Where `tally migrate` writes the first admin key: `$TALLY_HOME/admin.key`, else
/// `./.tally/admin.key`.
pub fn admin_key_path() -> PathBuf {
    match std::env::var_os("TALLY_HOME") {
        Some(home) if !home.is_empty() => PathBuf::from(home).join("admin.key"),
        _ => PathBuf::from(".tally").join("admin.key"),
    }
}

/// When no valid admin key exists, creates one named `admin` (or `admin-<n>` when taken),
/// writes it to [`admin_key_path`] (mode 0600) and returns that path; `None` when an admin
/// key exists. The file is written before the key is stored, so a key is never stored that
/// nobody can read.
pub async fn ensure_admin_key(pool: &sqlx::PgPool) -> anyhow::Result<Option<PathBuf>> {
    if keys::has_active_admin(pool).await? {
        return Ok(None);
    }
    let mut name = "admin".to_owned();
    let mut n = 2;
    while keys::name_exists(pool, &name).await? {
        name = format!("admin-{n}");
        n += 1;
    }
    let path = admin_key_path();
    let secret = tally_api::auth::generate()?;
    write_private(&path, &secret.key)?;
    let new = keys::NewKey {
        name: &name,
        role: Role::Admin.as_str(),
        key_hash: &secret.key_hash,
        key_prefix: &secret.key_prefix,
    };
    if let Err(e) = keys::create(pool, new, &Actor::cli()).await {
        let _ = std::fs::remove_file(&path);
        return Err(e.into());
    }
    Ok(Some(path))
}

/// Writes `key` and a newline to `path`, readable and writable by its owner only (0600),
/// creating its folder.
fn write_private(path: &Path, key: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing the admin key to {}", path.display()))?;
    // An existing file keeps its mode on open: set it.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    writeln!(file, "{key}").with_context(|| format!("writing {}", path.display()))?;
    file.sync_all()?;
    Ok(())
}
