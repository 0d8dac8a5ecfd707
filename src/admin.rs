//! The local admin socket (`storage.path/admin.sock`, mode 0600): sled lets one process open
//! the database, so while the server runs the command line asks it through this socket. One
//! JSON request per line, one JSON answer per line.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

use crate::auth::Auth;

/// The longest request accepted.
const MAX_REQUEST: u64 = 64 * 1024;
/// How long a client may take to send its request line.
pub const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Binds the socket (replacing a stale one), readable and writable by this user only.
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if path.exists() {
        std::fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Answers requests until `stop`; each request runs on `auth.tasks`, so shutdown waits for
/// one under way (a backup, say).
pub async fn serve(
    listener: UnixListener,
    path: PathBuf,
    auth: Arc<Auth>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|stop| *stop) => break,
        };
        match accepted {
            Ok((stream, _)) => {
                let auth = auth.clone();
                auth.tasks.clone().spawn(async move {
                    if let Err(e) = answer(stream, &auth).await {
                        tracing::warn!(error = format!("{e:#}"), "admin request failed");
                    }
                });
            }
            Err(e) => tracing::warn!(error = %e, "admin socket accept failed"),
        }
    }
    let _ = std::fs::remove_file(&path);
}

/// Whether a peer of user `uid` may use the socket: the server's own user, or root. The
/// socket's mode already says so; this holds even if the file's mode is loosened.
fn peer_allowed(uid: u32) -> bool {
    uid == 0 || uid == rustix::process::geteuid().as_raw()
}

async fn answer(stream: UnixStream, auth: &Arc<Auth>) -> anyhow::Result<()> {
    let uid = stream.peer_cred()?.uid();
    let (read, mut write) = stream.into_split();
    if !peer_allowed(uid) {
        tracing::warn!(uid, "admin socket: refused a client of another user");
        let refusal = json!({ "ok": false, "error": "the admin socket answers only the server's own user and root" });
        write.write_all(format!("{refusal}\n").as_bytes()).await?;
        return Ok(());
    }
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(MAX_REQUEST));
    tokio::time::timeout(READ_TIMEOUT, reader.read_line(&mut line))
        .await
        .context("no request within the admin socket's read timeout")??;
    let reply = match serde_json::from_str::<Value>(&line) {
        Ok(request) => handle(&request, auth)
            .await
            .unwrap_or_else(|e| json!({ "ok": false, "error": format!("{e:#}") })),
        Err(e) => json!({ "ok": false, "error": format!("not a JSON request: {e}") }),
    };
    let mut bytes = serde_json::to_vec(&reply)?;
    bytes.push(b'\n');
    write.write_all(&bytes).await?;
    Ok(())
}

async fn handle(request: &Value, auth: &Arc<Auth>) -> anyhow::Result<Value> {
    match request["command"].as_str() {
        Some("backup") => {
            let file = PathBuf::from(request["file"].as_str().context("backup needs \"file\"")?);
            anyhow::ensure!(
                file.is_absolute(),
                "the backup file must be an absolute path"
            );
            let (config, store, now) = (
                auth.config.clone(),
                auth.store.clone(),
                auth.clock.unix_seconds(),
            );
            let summary = tokio::task::spawn_blocking(move || {
                crate::backup::backup_store(&config, &*store, &file, now)
            })
            .await??;
            Ok(json!({ "ok": true, "trees": summary.trees, "entries": summary.entries }))
        }
        Some("audit") => {
            let since = request["since"].as_i64().unwrap_or(0);
            let email = request["email"].as_str().map(str::to_lowercase);
            let limit = request["limit"].as_u64().map_or(10_000, |n| n as usize);
            let events = auth
                .store
                .audit_since(since, email.as_deref(), limit)
                .await?;
            Ok(json!({ "ok": true, "events": events }))
        }
        Some("rotate-keys") => {
            let now = auth.clock.unix_seconds();
            let kid = auth.tokens.rotate(&*auth.store, now).await?;
            Ok(json!({ "ok": true, "kid": kid }))
        }
        Some("user") => {
            let result = user_command(auth, request).await?;
            Ok(json!({ "ok": true, "result": result }))
        }
        Some("ping") => Ok(json!({ "ok": true })),
        other => anyhow::bail!("unknown command {other:?}"),
    }
}

/// Sends one request to a running server. `Ok(None)` when no server listens on `path`.
pub async fn call(path: &Path, request: &Value) -> anyhow::Result<Option<Value>> {
    let stream = match UnixStream::connect(path).await {
        Ok(stream) => stream,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(e).with_context(|| format!("connecting to {}", path.display())),
    };
    let (read, mut write) = stream.into_split();
    let mut bytes = serde_json::to_vec(request)?;
    bytes.push(b'\n');
    write.write_all(&bytes).await?;
    let mut line = String::new();
    BufReader::new(read).read_line(&mut line).await?;
    Ok(Some(
        serde_json::from_str(&line).context("the server's answer")?,
    ))
}

/// `keyhold user ACTION`, run against `auth`: by the server for the admin socket, or by the
/// command line itself on a stopped server's storage. `request` has `action`, and `email`
/// (the account, or for `list` a part of the addresses to show).
pub async fn user_command(auth: &Auth, request: &Value) -> anyhow::Result<Value> {
    let email = request["email"].as_str();
    let account = || email.context("this command needs the account's e-mail address");
    let value = match request["action"].as_str() {
        Some("list") => serde_json::to_value(auth.list_users(email).await?)?,
        Some("show") => serde_json::to_value(auth.show_user(account()?).await?)?,
        Some("create") => serde_json::to_value(auth.invite_user(account()?).await?)?,
        Some("disable") => serde_json::to_value(auth.set_disabled(account()?, true).await?)?,
        Some("enable") => serde_json::to_value(auth.set_disabled(account()?, false).await?)?,
        Some("delete") => {
            auth.delete_user(account()?).await?;
            json!({ "deleted": account()? })
        }
        Some("reset-2fa") => serde_json::to_value(auth.reset_two_factor(account()?).await?)?,
        Some("logout-all") => json!({ "ended": auth.logout_everywhere(account()?).await? }),
        other => anyhow::bail!("unknown user action {other:?}"),
    };
    Ok(value)
}
