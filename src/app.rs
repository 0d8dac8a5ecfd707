//! `Application::build(config)`: opens the store, loads the certificate, wires every part
//! and starts serving. Tests and other crates start Keyhold in-process through it.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::auth::{Auth, PasswordHasher};
use crate::clock::Clock;
use crate::config::Config;
use crate::connections::{ConnectionPolicy, serve, tls_config};
use crate::graphql::build_schema;
use crate::http::{HttpState, routes};
use crate::jobs::{MailStats, SweepStats, run_mail_worker, run_sweeper};
use crate::mail::Mailer;
use crate::store::Storage;
use crate::tls::TlsMaterial;

/// A running Keyhold: bound, serving HTTPS, with its background tasks.
pub struct Application {
    addr: SocketAddr,
    tls: TlsMaterial,
    auth: Arc<Auth>,
    stop: watch::Sender<bool>,
    server: JoinHandle<std::io::Result<()>>,
    sweeper: JoinHandle<()>,
    sweep_stats: Arc<SweepStats>,
    background: Vec<JoinHandle<()>>,
    stop_mail: watch::Sender<bool>,
    mail_worker: JoinHandle<()>,
    mail_stats: Arc<MailStats>,
    /// Whether a clean stop checkpoints the store (see [`Store::close`]).
    checkpoint_at_stop: bool,
}

impl Application {
    /// Starts Keyhold on `config` with the system clock.
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        Self::build_with_clock(config, Clock::system()).await
    }

    /// Starts Keyhold with the given clock, which tests move forward instead of sleeping.
    pub async fn build_with_clock(config: Config, clock: Clock) -> anyhow::Result<Application> {
        config.validate()?;
        let transport = crate::mail::transport_from_config(&config)?;
        Self::build_with_transport(config, clock, transport).await
    }

    /// Starts Keyhold with the given clock, handing mail to `transport` instead of the one
    /// `mail.transport` names (`keyhold::testing` captures it this way).
    pub async fn build_with_transport(
        config: Config,
        clock: Clock,
        transport: Arc<dyn crate::mail::Transport>,
    ) -> anyhow::Result<Application> {
        crate::tls::install_crypto_provider();
        config.validate()?;
        if config.testing.expose_codes {
            tracing::warn!(
                "testing.expose_codes is ON: verification codes are returned to API callers. \
                 Never run a real deployment like this."
            );
        }
        let config = Arc::new(config);
        crate::files::create_private_dir(&config.storage.path)
            .with_context(|| format!("storage.path {}", config.storage.path.display()))?;
        // Opening the store is sled reading the log written since its last checkpoint (a
        // clean stop leaves one), on one core. The password hasher starts meanwhile; its
        // first job, on a hashing thread of its own, is the dummy hash (one argon2 hash)
        // and, with its first random bytes, aws-lc seeding its generator from CPU jitter
        // (about 80 ms here, once per process): neither waits for the store, nor start-up
        // for them.
        let opening = {
            let config = config.clone();
            tokio::spawn(async move { crate::store::open(&config).await })
        };
        let passwords = PasswordHasher::new(&config.passwords);
        let store = opening
            .await
            .context("the thread opening the store failed")??;
        let passwords = passwords?;
        let tls = TlsMaterial::load(&config)?;
        let mailer = Mailer::with_transport(&config, clock.clone(), transport)?;
        let auth = Arc::new(
            Auth::with_hasher(
                config.clone(),
                store.clone(),
                clock.clone(),
                mailer,
                passwords,
            )
            .await?,
        );
        auth.seal_clear_secrets().await?;
        let sweep_stats = Arc::new(SweepStats::default());
        let mail_stats = Arc::new(MailStats::default());
        let state = Arc::new(HttpState {
            schema: build_schema(&config.graphql, auth.clone()),
            auth: auth.clone(),
            graphql: config.graphql.clone(),
            store,
            clock,
            mail_stats: mail_stats.clone(),
            sweep_stats: sweep_stats.clone(),
        });

        let server_tls = tls_config(&tls.cert_pem, tls.key_pem())
            .with_context(|| format!("certificate {}", tls.cert_path.display()))?;
        let listener = tokio::net::TcpListener::bind(config.server.listen)
            .await
            .with_context(|| format!("cannot listen on server.listen {}", config.server.listen))?;
        let addr = listener
            .local_addr()
            .context("the listener has no socket address")?;
        tracing::info!(
            address = %addr,
            graphql = %format!("https://{addr}/graphql"),
            certificate = %tls.cert_path.display(),
            "Keyhold listening"
        );

        let (stop, stopped) = watch::channel(false);
        let sweeper = tokio::spawn(run_sweeper(
            auth.clone(),
            config.storage.sweep_interval,
            config.audit.retention,
            sweep_stats.clone(),
            stop.subscribe(),
        ));
        let mut background = vec![
            tokio::spawn(crate::backup::run_backups(
                config.clone(),
                auth.store.clone(),
                auth.clock.clone(),
                stop.subscribe(),
            )),
            tokio::spawn(crate::jobs::run_key_refresher(
                auth.clone(),
                stop.subscribe(),
            )),
        ];
        match crate::admin::bind(&config.admin_socket()) {
            Ok(admin) => background.push(tokio::spawn(crate::admin::serve(
                admin,
                config.admin_socket(),
                auth.clone(),
                stop.subscribe(),
            ))),
            // The server works without it; only the command line's online commands do not.
            Err(e) => tracing::warn!(
                error = format!("{e:#}"),
                "no admin socket: `keyhold backup` will not reach this server"
            ),
        }
        // The mail worker stops last, after everything that may still queue mail.
        let (stop_mail, mail_stopped) = watch::channel(false);
        let mail_worker = tokio::spawn(run_mail_worker(
            auth.clone(),
            mail_stats.clone(),
            mail_stopped,
        ));
        let policy = ConnectionPolicy::new(&config.server, config.limits.ipv6_prefix);
        let server = tokio::spawn(serve(
            listener,
            server_tls,
            routes(state),
            policy,
            auth.clone(),
            stopped,
        ));
        Ok(Application {
            addr,
            tls,
            auth,
            stop,
            server,
            sweeper,
            sweep_stats,
            background,
            stop_mail,
            mail_worker,
            mail_stats,
            checkpoint_at_stop: true,
        })
    }

    /// Whether the stop leaves a checkpoint: not for storage thrown away after the stop (a
    /// test server's temporary folder), where it would only make the stop slower.
    #[cfg(feature = "testing")]
    pub(crate) fn checkpoint_at_stop(mut self, checkpoint: bool) -> Application {
        self.checkpoint_at_stop = checkpoint;
        self
    }

    /// The bound address (the real port when `server.listen` asked for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://localhost:PORT`: the name the generated certificate is valid for.
    pub fn base_url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    /// The PEM certificate the server presents, for clients to trust.
    pub fn certificate_pem(&self) -> &str {
        &self.tls.cert_pem
    }

    pub fn clock(&self) -> &Clock {
        &self.auth.clock
    }

    pub fn store(&self) -> &Arc<dyn Storage> {
        &self.auth.store
    }

    /// The use cases and everything they share: store, clock, tokens, mailer.
    pub fn auth(&self) -> &Arc<Auth> {
        &self.auth
    }

    pub fn mailer(&self) -> &Mailer {
        &self.auth.mailer
    }

    /// What the mail worker has done since start.
    pub fn mail_stats(&self) -> &MailStats {
        &self.mail_stats
    }

    /// What the background sweeper has done since start.
    pub fn sweep_stats(&self) -> &SweepStats {
        &self.sweep_stats
    }

    pub fn config(&self) -> &Config {
        &self.auth.config
    }

    /// Stops accepting connections, lets in-flight requests finish (at most
    /// `server.shutdown_timeout`), waits for every task and flushes the store.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        let served = self.server.await.context("the server task failed")?;
        served.context("the server stopped with an error")?;
        self.sweeper.await.context("the sweeper failed")?;
        for task in self.background {
            task.await.context("a background task failed")?;
        }
        // Mail already accepted for sending goes out before the process ends.
        self.auth.tasks.close();
        self.auth.tasks.wait().await;
        let _ = self.stop_mail.send(true);
        self.mail_worker.await.context("the mail worker failed")?;
        if !self.checkpoint_at_stop {
            // Every write was durable when it returned.
            tracing::info!("Keyhold stopped; storage flushed");
            return Ok(());
        }
        // Every task has ended, so this is the last handle to the store but for callers'
        // own clones (a test's `app.store()`): then it stays open for them. Either way
        // `close` flushes first.
        let store = self.auth.store.clone();
        drop(self.auth);
        #[expect(
            clippy::disallowed_methods,
            reason = "measures the close for its log line"
        )]
        let started = std::time::Instant::now();
        let checkpointed = tokio::task::spawn_blocking(move || store.close())
            .await
            .context("the thread closing the store failed")??;
        tracing::info!(
            checkpoint = checkpointed,
            close_ms = started.elapsed().as_millis() as u64,
            "Keyhold stopped; storage flushed"
        );
        Ok(())
    }

    /// Stops the server without waiting for it: what dropping a test server does. Requests
    /// in flight are cut short; the store is flushed when its last user lets go of it.
    pub fn stop_in_background(self) {
        let _ = self.stop.send(true);
        let _ = self.stop_mail.send(true);
        self.server.abort();
    }

    /// Serves until SIGTERM or Ctrl-C, then shuts down cleanly. The signals are listened
    /// for only from this call on: a process that may be signalled as soon as it listens
    /// calls [`stop_signals`] before [`Application::build`] and [`Application::run_until`].
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let stop = stop_signals().context("cannot listen for SIGTERM and Ctrl-C")?;
        self.run_until(stop).await
    }

    /// Serves until `stop` completes, then shuts down cleanly.
    pub async fn run_until(self, stop: impl Future<Output = ()>) -> anyhow::Result<()> {
        stop.await;
        tracing::info!("stop signal received; finishing in-flight requests");
        self.shutdown().await
    }
}

/// SIGTERM and Ctrl-C (SIGINT), caught from the moment this returns: until then their
/// default action ends the process at once, with no clean stop. Completes at the first.
pub fn stop_signals() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {},
            _ = interrupt.recv() => {},
        }
    })
}
