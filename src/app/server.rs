//! Assembles the Pingora server: proxy service, admin service and background services.
//! `main`, the tests and the demo all go through [`build_server`], so there is one
//! construction path.

use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{
    ExecutionPhase, RunArgs, Server, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch,
};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;
use tokio::sync::{broadcast, watch};

use crate::app::admin::AdminApp;
use crate::config::{RuntimeConfig, TenantSyncSettings};
use crate::proxy::Gateway;
use crate::state::Shared;

/// Options that are about this process rather than the config file.
#[derive(Debug, Default, Clone)]
pub struct ProcessOptions {
    /// Take over listening sockets from a running instance (zero-downtime upgrade).
    pub upgrade: bool,
    pub daemon: bool,
}

fn server_conf(cfg: &RuntimeConfig) -> ServerConf {
    let s = &cfg.server;
    ServerConf {
        threads: s.threads,
        grace_period_seconds: Some(s.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(s.graceful_shutdown_timeout.as_secs()),
        upgrade_sock: s.upgrade_sock.clone(),
        pid_file: s.pid_file.clone(),
        ..ServerConf::default()
    }
}

/// Builds the server for a validated config. Call from a plain thread, never inside a tokio
/// runtime: Pingora creates its own runtimes.
pub fn build_server(
    cfg: RuntimeConfig,
    opts: &ProcessOptions,
) -> pingora::Result<(Server, Arc<Shared>)> {
    let conf = server_conf(&cfg);
    let proxy_addr = cfg.proxy_addr.to_string();
    let admin_addr = cfg.admin_addr.to_string();
    let writes_addr = cfg.admin.writes.as_ref().map(|w| w.addr);
    let source = cfg.source.clone();
    let tls = cfg.proxy_tls.clone();
    let watch_file = cfg.server.watch_config;
    crate::metrics::metrics()
        .tenants
        .set_cap(cfg.tenant_label_cap);
    let redis_configured = cfg.grants.is_some();
    let tenant_sync = cfg.tenant_sync.clone();
    let (shared, refresher) = Shared::new(cfg)
        .map_err(|e| pingora::Error::explain(pingora::ErrorType::InternalError, e))?;

    let opt = Opt {
        upgrade: opts.upgrade,
        daemon: opts.daemon,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(Some(opt), conf);
    server.bootstrap();

    let phases = server.watch_execution_phase();
    let (after_drain_tx, after_drain) = watch::channel(false);
    server.add_service(background_service(
        "lifecycle",
        LifecycleWatcher {
            shared: shared.clone(),
            phases: Mutex::new(Some(phases)),
            after_drain: after_drain_tx,
        },
    ));

    // Every JWKS fetch happens on this service's runtime (reqwest clients are runtime-bound).
    // The services the request path depends on run until the drain is over, not until the
    // signal: requests still in flight may wait on a key refetch or need an invalidation.
    server.add_service(background_service(
        "jwks refresher",
        UntilDrained {
            inner: refresher,
            stop: after_drain.clone(),
        },
    ));
    if redis_configured {
        server.add_service(background_service(
            "redis invalidation subscriber",
            UntilDrained {
                inner: crate::grants::GrantSubscriber(shared.grants.clone()),
                stop: after_drain.clone(),
            },
        ));
    }
    // Revocations: expiry sweeps, and the Redis replica link when Redis is configured.
    server.add_service(background_service(
        "revocation sweeper",
        crate::revocation::revoker::Sweeper {
            revoker: shared.revoker.clone(),
            clock: crate::revocation::unix_now,
        },
    ));
    let replica = shared.config.load().revocation.replica.clone();
    if let (Some(settings), Some(outbox)) = (replica, shared.revocation_outbox.lock().take()) {
        let (replica, status) = crate::revocation::replica::Replica::new(
            settings,
            shared.revoker.clone(),
            outbox,
            crate::revocation::unix_now,
        );
        *shared.revocation_replica.lock() = Some(status);
        server.add_service(background_service(
            "revocation replica",
            UntilDrained {
                inner: replica,
                stop: after_drain.clone(),
            },
        ));
    }
    if let Some(TenantSyncSettings { url, key, channel }) = tenant_sync {
        server.add_service(background_service(
            "runtime tenants",
            UntilDrained {
                inner: crate::state::tenant_sync::TenantSync {
                    shared: shared.clone(),
                    url,
                    key,
                    channel,
                    resync: std::time::Duration::from_secs(60),
                    last_applied: Default::default(),
                },
                stop: after_drain,
            },
        ));
    }
    if let Some(path) = source {
        server.add_service(background_service(
            "config reload",
            crate::state::reload::Reloader {
                shared: shared.clone(),
                path,
                watch_file,
            },
        ));
    }

    // The proxy application with its per-connection options, wrapped so every client
    // connection is counted against the cap and gets its idle and head deadlines.
    let downstream = shared.config.load().downstream;
    let mut app = pingora::proxy::http_proxy(&server.configuration, Gateway::new(shared.clone()));
    app.server_options = Some(downstream.server_options());
    app.h2_options = Some(downstream.h2_options());
    let mut proxy = Service::new(
        "realmgate".to_string(),
        crate::downstream::GuardedApp::new(
            app,
            {
                let shared = shared.clone();
                move || shared.config.load().downstream
            },
            crate::decision::refusal::too_many_connections(),
        ),
    );
    match &tls {
        // TLS termination with HTTP/2 offered via ALPN (gRPC passes through for authorised
        // requests: its path is matched like any other).
        Some(t) => {
            let mut settings = pingora::listeners::tls::TlsSettings::intermediate(&t.cert, &t.key)?;
            settings.enable_h2();
            proxy.add_tls_with_settings(&proxy_addr, None, settings);
        }
        None => proxy.add_tcp(&proxy_addr),
    }
    server.add_service(proxy);

    // The admin listeners, each behind the connection guard with its own small cap: the
    // read-only one backends, Prometheus and kubelet reach, and the operator's write listener
    // (only when a credential is configured).
    let admin_guard = || {
        let shared = shared.clone();
        move || {
            let cfg = shared.config.load();
            crate::downstream::DownstreamSettings {
                max_connections: cfg.admin.max_connections,
                ..cfg.downstream
            }
        }
    };
    let mut admin = Service::new(
        "admin".to_string(),
        crate::downstream::GuardedApp::new(
            pingora::apps::http_app::HttpServer::new_app(AdminApp::new(shared.clone())),
            admin_guard(),
            crate::decision::refusal::too_many_connections(),
        ),
    );
    admin.threads = Some(1);
    admin.add_tcp(&admin_addr);
    server.add_service(admin);
    match writes_addr {
        Some(addr) => {
            let mut writes = Service::new(
                "admin-writes".to_string(),
                crate::downstream::GuardedApp::new(
                    pingora::apps::http_app::HttpServer::new_app(
                        crate::app::operator::OperatorApp::new(shared.clone()),
                    ),
                    admin_guard(),
                    crate::decision::refusal::too_many_connections(),
                ),
            );
            writes.threads = Some(1);
            writes.add_tcp(&addr.to_string());
            server.add_service(writes);
        }
        None => tracing::warn!(
            "admin writes are off: POST /revoke and /not-before are served only on admin.writes.listen, \
             with a bearer secret (admin.writes.token_file or token_env); see README, upgrade notes"
        ),
    }

    Ok((server, shared))
}

/// Turns Pingora's execution phases into the readiness signal: once graceful termination
/// starts, `/readyz` fails so load balancers stop sending before the listener closes. It
/// also says when the drain is over (the runtimes are being shut down), for [`UntilDrained`].
struct LifecycleWatcher {
    shared: Arc<Shared>,
    phases: Mutex<Option<broadcast::Receiver<ExecutionPhase>>>,
    after_drain: watch::Sender<bool>,
}

#[async_trait]
impl BackgroundService for LifecycleWatcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(mut rx) = self.phases.lock().take() else {
            return;
        };
        let mut signalled = false;
        loop {
            tokio::select! {
                phase = rx.recv() => match phase {
                    Ok(ExecutionPhase::GracefulTerminate
                        | ExecutionPhase::GracefulUpgradeTransferringFds
                        | ExecutionPhase::GracefulUpgradeCloseTimeout
                        | ExecutionPhase::ShutdownStarted
                        | ExecutionPhase::ShutdownGracePeriod) => self.shared.set_draining(),
                    Ok(ExecutionPhase::ShutdownRuntimes) => break,
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                changed = shutdown.changed(), if !signalled => {
                    // The signal starts the drain; in-flight requests still run.
                    signalled = true;
                    if changed.is_ok() {
                        self.shared.set_draining();
                    }
                }
            }
        }
        self.shared.set_draining();
        let _ = self.after_drain.send(true);
    }
}

/// Runs a background service until the drain is over instead of until the shutdown signal.
/// Pingora flips every service's shutdown watch at SIGTERM and only then lets in-flight
/// requests finish for `grace_period`; a JWKS refresher or Redis subscriber that stopped at
/// the signal would fail exactly those requests (a refetch they wait on is cancelled, an
/// invalidation is missed).
struct UntilDrained<S> {
    inner: S,
    stop: watch::Receiver<bool>,
}

#[async_trait]
impl<S: BackgroundService + Send + Sync> BackgroundService for UntilDrained<S> {
    async fn start_with_ready_notifier(
        &self,
        _shutdown: ShutdownWatch,
        ready: pingora::services::ServiceReadyNotifier,
    ) {
        self.inner
            .start_with_ready_notifier(self.stop.clone(), ready)
            .await;
    }

    async fn start(&self, _shutdown: ShutdownWatch) {
        self.inner.start(self.stop.clone()).await;
    }
}

/// A shutdown trigger driven by a channel, for running the server inside tests and the demo
/// (`run_forever` would exit the process).
pub struct ChannelSignal(pub tokio::sync::Mutex<tokio::sync::mpsc::Receiver<ShutdownSignal>>);

#[async_trait]
impl ShutdownSignalWatch for ChannelSignal {
    async fn recv(&self) -> ShutdownSignal {
        match self.0.lock().await.recv().await {
            Some(s) => s,
            None => ShutdownSignal::FastShutdown,
        }
    }
}

/// Runs a built server on the current thread until the channel fires (or its sender drops).
pub fn run_with_channel(server: Server, rx: tokio::sync::mpsc::Receiver<ShutdownSignal>) {
    server.run(RunArgs {
        shutdown_signal: Box::new(ChannelSignal(tokio::sync::Mutex::new(rx))),
    });
}
