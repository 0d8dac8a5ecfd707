//! The command line: `keyhold serve`, and the tools an operator runs beside it.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use keyhold::logging::Logging;
use keyhold::{Application, Config};

/// mimalloc rather than glibc's malloc: under `newToken` load, 29 % of the server's futex calls
/// were glibc's arena locks, taken when one thread frees what another allocated (a request's
/// futures and buffers move between the runtime's threads): docs/benchmarks-history.md,
/// "The allocator".
/// Only the binary sets it: a program that embeds Keyhold keeps its own allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "keyhold",
    version,
    about = "A self-contained authentication server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the GraphQL API over HTTPS until SIGTERM or Ctrl-C.
    Serve {
        /// The configuration file (default: ./config.toml when it exists, else every default).
        #[arg(long, short, value_name = "PATH")]
        config: Option<PathBuf>,
    },
    /// Write a consistent backup to FILE: through the running server, or directly when it
    /// is stopped.
    Backup {
        #[arg(long, short, value_name = "PATH")]
        config: Option<PathBuf>,
        file: PathBuf,
    },
    /// Print security events, oldest first: through the running server, or from the stopped
    /// server's storage.
    Audit {
        #[arg(long, short, value_name = "PATH")]
        config: Option<PathBuf>,
        /// Only the events of this address.
        #[arg(long, value_name = "EMAIL")]
        user: Option<String>,
        /// Only events of the last DURATION ("24h", "7d").
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        since: Option<std::time::Duration>,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Accounts: list, show, create (mails an invitation), disable, enable, delete, reset-2fa,
    /// logout-all. Through the running server, or on the stopped server's storage.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Access-token signing keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Copy a stopped Keyhold's storage into an empty one of another backend (sled into
    /// PostgreSQL, or back): accounts, sessions, signing keys, queued mail and the audit log.
    Migrate {
        /// The configuration of the storage to copy (its server stopped).
        #[arg(long, value_name = "PATH")]
        from: PathBuf,
        /// The configuration of the empty storage to copy into.
        #[arg(long, value_name = "PATH")]
        to: PathBuf,
    },
    /// Print the GraphQL schema (SDL) the server serves.
    Schema,
    /// Check a configuration without starting: every key, the TLS files, the mail templates.
    CheckConfig {
        #[arg(long, short, value_name = "PATH")]
        config: Option<PathBuf>,
    },
    /// Start an installation in DIR (default: here): a commented config.toml with every
    /// default, and a self-signed certificate under DIR/data/tls.
    Init {
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Restore FILE into the storage of a stopped server (the old database is kept aside),
    /// opening it with the age identity that `backup-key` wrote.
    Restore {
        #[arg(long, short, value_name = "PATH")]
        config: Option<PathBuf>,
        /// The age identity file (the private key the backups are encrypted to).
        #[arg(long, short, value_name = "PATH")]
        identity: PathBuf,
        file: PathBuf,
    },
    /// Make the age key pair that backups are encrypted to: the identity (private) goes to
    /// FILE, to keep away from this server; set the printed recipient as
    /// storage.backup_recipient.
    BackupKey { file: PathBuf },
}

#[derive(clap::Args)]
struct UserOptions {
    #[arg(long, short, value_name = "PATH")]
    config: Option<PathBuf>,
    /// JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum UserCommand {
    /// Every account, or those whose address contains --email.
    List {
        #[arg(long, value_name = "PART")]
        email: Option<String>,
        #[command(flatten)]
        options: UserOptions,
    },
    /// One account and its signed-in devices.
    Show {
        email: String,
        #[command(flatten)]
        options: UserOptions,
    },
    /// Make an account and mail it a link to choose its password.
    Create {
        email: String,
        #[command(flatten)]
        options: UserOptions,
    },
    /// Refuse its sign-ins (ACCOUNT_DISABLED) and end every device session.
    Disable {
        email: String,
        #[command(flatten)]
        options: UserOptions,
    },
    /// Allow its sign-ins again.
    Enable {
        email: String,
        #[command(flatten)]
        options: UserOptions,
    },
    /// Remove the account and end its device sessions.
    Delete {
        email: String,
        #[command(flatten)]
        options: UserOptions,
    },
    /// Turn two-factor sign-in off (a lost phone).
    #[command(name = "reset-2fa")]
    Reset2fa {
        email: String,
        #[command(flatten)]
        options: UserOptions,
    },
    /// End every device session of the account.
    LogoutAll {
        email: String,
        #[command(flatten)]
        options: UserOptions,
    },
}

impl UserCommand {
    fn parts(self) -> (&'static str, Option<String>, UserOptions) {
        match self {
            UserCommand::List { email, options } => ("list", email, options),
            UserCommand::Show { email, options } => ("show", Some(email), options),
            UserCommand::Create { email, options } => ("create", Some(email), options),
            UserCommand::Disable { email, options } => ("disable", Some(email), options),
            UserCommand::Enable { email, options } => ("enable", Some(email), options),
            UserCommand::Delete { email, options } => ("delete", Some(email), options),
            UserCommand::Reset2fa { email, options } => ("reset-2fa", Some(email), options),
            UserCommand::LogoutAll { email, options } => ("logout-all", Some(email), options),
        }
    }
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Make a new signing key current. The old one stays in the JWKS until every token it
    /// signed has expired (tokens.access_ttl); then the sweeper removes it.
    Rotate {
        #[arg(long, short, value_name = "PATH")]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let logging = keyhold::logging::init();
    let logging = &logging;
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("keyhold: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve { config } => serve(config, logging).await,
            Command::Backup { config, file } => backup(config, file, logging).await,
            Command::Restore {
                config,
                identity,
                file,
            } => restore(config, file, identity, logging).await,
            Command::BackupKey { file } => backup_key(file),
            Command::User { command } => user(command, logging).await,
            Command::Keys {
                command: KeysCommand::Rotate { config },
            } => rotate_keys(config, logging).await,
            Command::Migrate { from, to } => migrate(&from, &to, logging).await,
            Command::Schema => {
                println!("{}", keyhold::graphql::sdl());
                Ok(())
            }
            Command::CheckConfig { config } => check_config(config, logging),
            Command::Init { dir } => init(&dir),
            Command::Audit {
                config,
                user,
                since,
                json,
            } => audit(config, user, since, json, logging).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("keyhold: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn migrate(
    from: &std::path::Path,
    to: &std::path::Path,
    logging: &Logging,
) -> anyhow::Result<()> {
    let from_config = load_config(Some(from), logging)?;
    let to_config = load_config(Some(to), logging)?;
    let source = keyhold::store::open(&from_config).await?;
    let target = keyhold::store::open(&to_config).await?;
    keyhold::migrate::same_key(&from_config, &*source, &to_config, &*target).await?;
    let copied = keyhold::migrate::copy(&*source, &*target).await?;
    println!(
        "copied {} accounts, {} sessions, {} signing keys, {} queued messages and {} audit events from {} into {}",
        copied.users,
        copied.sessions,
        copied.signing_keys,
        copied.mail,
        copied.audit,
        source.backend(),
        target.backend()
    );
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        source.close()?;
        target.close()?;
        Ok(())
    })
    .await??;
    Ok(())
}

/// The configuration the command names, with the log format it sets from here on.
fn load_config(path: Option<&std::path::Path>, logging: &Logging) -> anyhow::Result<Config> {
    let config = Config::load(path)?;
    logging.set_format(config.log.format);
    let ignored = Config::ignored_env_vars();
    if !ignored.is_empty() {
        tracing::debug!(
            names = %ignored.join(" "),
            "environment variables ignored: not KEYHOLD_<SECTION>__<KEY>"
        );
    }
    Ok(config)
}

fn now() -> i64 {
    keyhold::Clock::system().unix_seconds()
}

async fn backup(config: Option<PathBuf>, file: PathBuf, logging: &Logging) -> anyhow::Result<()> {
    let config = load_config(config.as_deref(), logging)?;
    let file = std::path::absolute(&file)?;
    let request = serde_json::json!({ "command": "backup", "file": file });
    let summary = match keyhold::admin::call(&config.admin_socket(), &request).await? {
        Some(answer) if answer["ok"] == true => answer,
        Some(answer) => anyhow::bail!("the server refused: {}", answer["error"]),
        None => {
            let store = keyhold::store::open(&config).await?;
            let summary = keyhold::backup::backup_store(&config, &*store, &file, now())?;
            serde_json::json!({ "trees": summary.trees, "entries": summary.entries })
        }
    };
    println!(
        "backup written to {} ({} records in {} trees)",
        file.display(),
        summary["entries"],
        summary["trees"]
    );
    Ok(())
}

async fn audit(
    config: Option<PathBuf>,
    user: Option<String>,
    since: Option<std::time::Duration>,
    json: bool,
    logging: &Logging,
) -> anyhow::Result<()> {
    let config = load_config(config.as_deref(), logging)?;
    let since = since.map_or(0, |d| {
        now() - i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
    });
    let user = user.map(|u| u.to_lowercase());
    let request = serde_json::json!({ "command": "audit", "since": since, "email": user });
    let events: Vec<keyhold::store::AuditRecord> =
        match keyhold::admin::call(&config.admin_socket(), &request).await? {
            Some(answer) if answer["ok"] == true => {
                serde_json::from_value(answer["events"].clone())?
            }
            Some(answer) => anyhow::bail!("the server refused: {}", answer["error"]),
            None => {
                let store = keyhold::store::open(&config).await?;
                store
                    .audit_since(since, user.as_deref(), usize::MAX)
                    .await?
            }
        };
    for e in events {
        if json {
            println!("{}", serde_json::to_string(&e)?);
        } else {
            println!(
                "{}  {:<22} {:<20} {:<30} {:<16} {}",
                keyhold::auth::iso(e.at),
                e.event,
                e.outcome,
                e.email.as_deref().unwrap_or("-"),
                e.ip.as_deref().unwrap_or("-"),
                e.user_id
                    .map(|u| u.to_string())
                    .unwrap_or_else(|| "-".into()),
            );
        }
    }
    Ok(())
}

fn backup_key(file: PathBuf) -> anyhow::Result<()> {
    let recipient = keyhold::backup::make_identity(&file)?;
    println!(
        "wrote the backup identity to {}: keep it away from this server",
        file.display()
    );
    println!("set in config.toml:\n\n[storage]\nbackup_recipient = \"{recipient}\"");
    Ok(())
}

async fn restore(
    config: Option<PathBuf>,
    file: PathBuf,
    identity: PathBuf,
    logging: &Logging,
) -> anyhow::Result<()> {
    let config = load_config(config.as_deref(), logging)?;
    let summary = keyhold::backup::restore(&config, &file, &identity, now()).await?;
    println!(
        "restored {} ({} records in {} trees) into {}",
        file.display(),
        summary.entries,
        summary.trees,
        config.db_path().display()
    );
    Ok(())
}

async fn user(command: UserCommand, logging: &Logging) -> anyhow::Result<()> {
    let (action, email, options) = command.parts();
    let config = load_config(options.config.as_deref(), logging)?;
    let request = serde_json::json!({ "command": "user", "action": action, "email": email });
    let result = match keyhold::admin::call(&config.admin_socket(), &request).await? {
        Some(answer) if answer["ok"] == true => answer["result"].clone(),
        Some(answer) => anyhow::bail!("{}", answer["error"].as_str().unwrap_or("refused")),
        None => {
            // The server is stopped: work on its storage directly. Mail is queued and goes
            // out when the server next starts.
            let clock = keyhold::Clock::system();
            let store = keyhold::store::open(&config).await?;
            let mailer = keyhold::mail::Mailer::from_config(&config, clock.clone())?;
            let auth =
                keyhold::auth::Auth::new(std::sync::Arc::new(config), store, clock, mailer).await?;
            keyhold::admin::user_command(&auth, &request).await?
        }
    };
    if options.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
        return Ok(());
    }
    print_user_result(action, &result);
    Ok(())
}

fn print_user_result(action: &str, result: &serde_json::Value) {
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_string();
    let row = |u: &serde_json::Value| {
        format!(
            "{:<36}  {:<32} {:<20} {:<8} {:<9} {:<5} {:>7}  {}",
            text(&u["id"]),
            text(&u["email"]),
            text(&u["username"]),
            if u["email_verified"] == true {
                "yes"
            } else {
                "no"
            },
            text(&u["state"]),
            text(&u["two_factor"]),
            u["device_sessions"],
            text(&u["last_login_at"]),
        )
    };
    let header = format!(
        "{:<36}  {:<32} {:<20} {:<8} {:<9} {:<5} {:>7}  {}",
        "ID", "EMAIL", "USERNAME", "VERIFIED", "STATE", "2FA", "DEVICES", "LAST SIGN-IN"
    );
    match action {
        "list" => {
            println!("{header}");
            for u in result.as_array().into_iter().flatten() {
                println!("{}", row(u));
            }
        }
        "show" => {
            println!("{header}");
            println!("{}", row(result));
            println!();
            println!(
                "{:<24} {:<24} {:<16} {:<25} LAST SEEN",
                "DEVICE", "NAME", "IP", "SIGNED IN"
            );
            for d in result["devices"].as_array().into_iter().flatten() {
                println!(
                    "{:<24} {:<24} {:<16} {:<25} {}",
                    text(&d["device_id"]),
                    text(&d["name"]),
                    text(&d["ip_address"]),
                    text(&d["created_at"]),
                    text(&d["last_seen_at"]),
                );
            }
        }
        "delete" => println!("deleted {}", text(&result["deleted"])),
        "logout-all" => println!("ended {} device sessions", result["ended"]),
        _ => {
            if action == "create" {
                println!("invitation mailed to {}", text(&result["email"]));
            }
            println!("{header}");
            println!("{}", row(result));
        }
    }
}

async fn rotate_keys(config: Option<PathBuf>, logging: &Logging) -> anyhow::Result<()> {
    let config = load_config(config.as_deref(), logging)?;
    let request = serde_json::json!({ "command": "rotate-keys" });
    let kid = match keyhold::admin::call(&config.admin_socket(), &request).await? {
        Some(answer) if answer["ok"] == true => answer["kid"].as_str().unwrap_or("?").to_string(),
        Some(answer) => anyhow::bail!("the server refused: {}", answer["error"]),
        None => {
            let store = keyhold::store::open(&config).await?;
            let secrets = keyhold::auth::Secrets::load_or_create_file(&config.hmac_key_path())?;
            let tokens =
                keyhold::auth::Tokens::load_or_create(&*store, &config.tokens, &secrets, now())
                    .await?;
            tokens.rotate(&*store, now()).await?
        }
    };
    println!(
        "signing key {kid} is current; the previous one verifies its tokens for {} more",
        humantime::format_duration(config.tokens.access_ttl)
    );
    Ok(())
}

fn check_config(path: Option<PathBuf>, logging: &Logging) -> anyhow::Result<()> {
    let config = load_config(path.as_deref(), logging)?;
    if config.tls.cert_file.is_some() {
        keyhold::tls::install_crypto_provider();
        keyhold::tls::TlsMaterial::load(&config)?;
    }
    keyhold::mail::Templates::load(config.mail.templates_dir.as_deref())?;
    let source = path.map_or_else(
        || {
            if std::path::Path::new("config.toml").exists() {
                "./config.toml".to_string()
            } else {
                "the defaults".to_string()
            }
        },
        |p| p.display().to_string(),
    );
    println!("configuration OK ({source})");
    println!("  listen          {}", config.server.listen);
    println!("  public_url      {}", config.server.public_url);
    println!(
        "  storage         {:?} in {}",
        config.storage.backend,
        config.storage.path.display()
    );
    println!(
        "  tls             {}",
        config.tls.cert_file.as_ref().map_or_else(
            || format!("self-signed, in {}", config.generated_tls_dir().display()),
            |c| c.display().to_string()
        )
    );
    println!("  mail.transport  {:?}", config.mail.transport);
    Ok(())
}

/// The shipped `config.toml`: every key with its default and a comment.
const SHIPPED_CONFIG: &str = include_str!("../config.toml");

fn init(dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let file = dir.join("config.toml");
    if file.exists() {
        anyhow::bail!("{} exists already: nothing was changed", file.display());
    }
    let mut config = Config::from_toml_str(SHIPPED_CONFIG)?;
    // storage.path is read relative to where `keyhold serve` starts: DIR.
    let relative = config.storage.path.clone();
    config.storage.path = dir.join(relative.strip_prefix(".").unwrap_or(&relative));
    keyhold::tls::install_crypto_provider();
    let tls = keyhold::tls::TlsMaterial::load(&config)?;
    std::fs::write(&file, SHIPPED_CONFIG)?;
    println!("wrote {}", file.display());
    println!("certificate {}", tls.cert_path.display());
    println!("start it with: cd {} && keyhold serve", dir.display());
    Ok(())
}

async fn serve(config: Option<PathBuf>, logging: &Logging) -> anyhow::Result<()> {
    let config = load_config(config.as_deref(), logging)?;
    // Caught before the server listens: a stop that comes as soon as it does is a clean one.
    let stop = keyhold::app::stop_signals()?;
    let app = Application::build(config).await?;
    app.run_until(stop).await
}
