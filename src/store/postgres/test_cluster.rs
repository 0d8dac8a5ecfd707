//! A throwaway PostgreSQL for tests: the cluster a test process starts for itself (`initdb`
//! into a temporary folder, on a free port, as the `postgres` user when the tests run as
//! root), or the server `KEYHOLD_TEST_POSTGRES_URL` names. Each test gets a database of its
//! own. A watchdog stops the cluster and removes its folder when the test process is gone.
//!
//! Without PostgreSQL the tests that need it say so and pass as skipped, unless
//! `KEYHOLD_TEST_REQUIRE_POSTGRES` is set (CI sets it): then they fail.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

/// Where the tests' server is: a URL without a database name.
struct Server {
    /// `postgres://USER@HOST:PORT` (and any password).
    base: String,
    /// The certificate (PEM) of the cluster the tests started, which takes TLS for
    /// `localhost` and `127.0.0.1`; unknown for a server of `KEYHOLD_TEST_POSTGRES_URL`.
    certificate: Option<String>,
}

static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();
static NEXT: AtomicU32 = AtomicU32::new(0);

/// The binaries of the newest PostgreSQL installed the Debian way, or on the PATH.
fn bin_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("KEYHOLD_TEST_POSTGRES_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    let out = Command::new("pg_config").arg("--bindir").output().ok()?;
    let dir = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    dir.join("initdb").exists().then_some(dir)
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.trim_ascii() == b"0")
}

/// `program args…` as the `postgres` user when this process is root (PostgreSQL refuses to
/// run as root), as this user otherwise.
fn as_server_user(program: &Path, root: bool) -> Command {
    if root {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

fn run(mut command: Command, what: &str) -> Result<(), String> {
    let out = command
        .output()
        .map_err(|e| format!("{what}: cannot run: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Starts a cluster of this process's own.
fn start_cluster() -> Result<Server, String> {
    let bin = bin_dir().ok_or("no PostgreSQL found (apt-get install postgresql)")?;
    let root = running_as_root();
    let dir = tempfile::Builder::new()
        .prefix("keyhold-pg-")
        .tempdir()
        .map_err(|e| e.to_string())?
        .keep();
    if root {
        run(
            {
                let mut c = Command::new("chown");
                c.arg("postgres:").arg(&dir);
                c
            },
            "chown of the cluster's folder",
        )?;
    }
    let data = dir.join("data");
    let mut initdb = as_server_user(&bin.join("initdb"), root);
    initdb
        .arg("-D")
        .arg(&data)
        .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"]);
    run(initdb, "initdb")?;
    // TLS for the tests of `sslmode`: a certificate for this machine's names.
    let made = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .map_err(|e| e.to_string())?;
    let certificate = made.cert.pem();
    let (cert_file, key_file) = (dir.join("server.crt"), dir.join("server.key"));
    std::fs::write(&cert_file, &certificate).map_err(|e| e.to_string())?;
    std::fs::write(&key_file, made.signing_key.serialize_pem()).map_err(|e| e.to_string())?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| e.to_string())?;
    }
    if root {
        let mut chown = Command::new("chown");
        chown.arg("postgres:").arg(&cert_file).arg(&key_file);
        run(chown, "chown of the cluster's certificate")?;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    // Durability is not what these tests are about: the cluster is thrown away.
    let options = format!(
        "-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off \
         -c synchronous_commit=off -c full_page_writes=off -c ssl=on -c ssl_cert_file={} \
         -c ssl_key_file={}",
        dir.display(),
        cert_file.display(),
        key_file.display()
    );
    let mut start = as_server_user(&bin.join("pg_ctl"), root);
    start
        .arg("-D")
        .arg(&data)
        .args(["-w", "-l"])
        .arg(dir.join("log"))
        .args(["-o", &options, "start"]);
    run(start, "pg_ctl start")?;
    // Stops the cluster and removes it once this process has gone, however it went.
    let stop = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {runuser}{pg_ctl} -D {data} -m immediate stop >/dev/null 2>&1; rm -rf {dir}",
        pid = std::process::id(),
        runuser = if root { "runuser -u postgres -- " } else { "" },
        pg_ctl = bin.join("pg_ctl").display(),
        data = data.display(),
        dir = dir.display(),
    );
    Command::new("sh")
        .args(["-c", &stop])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("the cluster's watchdog: {e}"))?;
    Ok(Server {
        base: format!("postgres://postgres@127.0.0.1:{port}"),
        certificate: Some(certificate),
    })
}

fn server() -> Result<&'static Server, &'static str> {
    SERVER
        .get_or_init(|| match std::env::var("KEYHOLD_TEST_POSTGRES_URL") {
            Ok(url) => Ok(Server {
                base: url.trim_end_matches('/').to_string(),
                certificate: None,
            }),
            Err(_) => start_cluster(),
        })
        .as_ref()
        .map_err(String::as_str)
}

/// The URL of a new, empty database for one test, or `None` (having said why) when there
/// is no PostgreSQL here and it is not required.
pub async fn fresh_database() -> Option<String> {
    let server = match tokio::task::spawn_blocking(server).await.unwrap() {
        Ok(server) => server,
        Err(why) => {
            assert!(
                std::env::var_os("KEYHOLD_TEST_REQUIRE_POSTGRES").is_none(),
                "KEYHOLD_TEST_REQUIRE_POSTGRES is set, and PostgreSQL cannot be started: {why}"
            );
            // Once, and past the test harness's capture of `eprintln!`, so that a passing
            // run still says plainly what it did not test.
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIPPED: the PostgreSQL tests did not run ({}); set KEYHOLD_TEST_REQUIRE_POSTGRES=1 to make that a failure",
                    why.trim()
                );
            });
            return None;
        }
    };
    let name = format!(
        "keyhold_test_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let (admin, connection) =
        tokio_postgres::connect(&format!("{}/postgres", server.base), tokio_postgres::NoTls)
            .await
            .expect("connect to the tests' PostgreSQL");
    let connection = tokio::spawn(connection);
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create a database for a test");
    drop(admin);
    let _ = connection.await;
    Some(format!("{}/{name}", server.base))
}

/// The configuration of a PostgreSQL store on `url`, otherwise the defaults.
pub fn config_for(url: &str) -> crate::config::PostgresConfig {
    crate::config::PostgresConfig {
        url: Some(url.to_string()),
        sslmode: crate::config::PostgresSslMode::Disable,
        ..crate::config::PostgresConfig::default()
    }
}

/// The certificate (PEM) the tests' cluster serves TLS with, when the tests started it.
pub fn certificate() -> Option<&'static str> {
    SERVER.get()?.as_ref().ok()?.certificate.as_deref()
}
