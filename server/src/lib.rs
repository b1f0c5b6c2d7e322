//! The `errand` server: configuration, start-up and HTTP around the engine. `main` only parses
//! the configuration and calls [`Application::build`] and [`Application::run_until_stopped`];
//! tests do the same on a free port.

pub mod api;
mod assets;
mod config;
mod health;
pub mod operators;
pub mod security;
pub mod session;
mod state;
pub mod telemetry;
mod throttle;
mod uploads;

pub use config::{Config, Role};
pub use state::AppState;

use anyhow::{Context, bail};
use assets::Assets;
use axum::Router;
use axum::serve::ListenerExt;
use errand_app::{App, shell};
use errand_engine::{Engine, EngineConfig};
use leptos::config::LeptosOptions;
use leptos::prelude::provide_context;
use leptos_axum::{LeptosRoutes, generate_route_list};
use security::SiteOrigin;
use session::Sessions;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use throttle::Throttle;
use tokio::net::TcpListener;
use tower_http::compression::CompressionLayer;
use tower_http::trace::TraceLayer;

/// A built server, bound to its port, not yet serving.
pub struct Application {
    /// The HTTP side; `None` in the `worker` role.
    http: Option<(TcpListener, Router)>,
    /// `/metrics`, `/healthz` and `/readyz` on an address of their own (`--metrics-addr`).
    probes: Option<(TcpListener, Router)>,
    engine: Engine,
    role: Role,
    retention: Duration,
    upload_ttl: Duration,
}

/// The name cargo-leptos gives the browser build's files (`pkg/errand.<hash>.wasm`).
const OUTPUT_NAME: &str = "errand";

/// How often finished jobs past their retention, and uploads past their time, are looked for.
const PURGE_EVERY: Duration = Duration::from_secs(600);

/// Reads and parses the `what` file an option names; its default when the option is unset.
fn read_file<T: Default, E: std::error::Error + Send + Sync + 'static>(
    path: &Option<std::path::PathBuf>,
    what: &str,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> anyhow::Result<T> {
    let Some(path) = path else {
        return Ok(T::default());
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("could not read the {what} file {}", path.display()))?;
    parse(&text).with_context(|| format!("in the {what} file {}", path.display()))
}

impl Application {
    /// Opens the engine in the data dir, binds the address and assembles the routes.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let schedules = read_file(
            &config.schedules,
            "schedules",
            errand_engine::schedules::parse,
        )?;
        let limits = read_file(&config.limits, "limits", errand_engine::gates::parse)?;
        let engine_config = EngineConfig {
            data_dir: config.data_dir.clone(),
            concurrency: config.concurrency.max(1),
            shutdown_grace: Duration::from_secs(config.shutdown_grace),
            webhook_allow: config.webhook_allow.clone(),
            database_url: config.database_url.clone(),
            queue_url: config.queue_url.clone(),
            max_active_per_owner: (config.session_max_active > 0)
                .then_some(config.session_max_active),
            about: errand_engine::About {
                role: config.role.as_str().to_owned(),
                version: config::VERSION.to_owned(),
            },
            schedules,
            limits,
            priority_aging: Duration::from_secs(config.priority_aging),
        };
        // Installed before anything is measured.
        telemetry::recorder();
        let engine = Engine::open(engine_config)
            .await
            .context("could not open the job registry and queue")?;
        if config.role != Role::Serve && !(engine.is_shared() && engine.queue().is_shared()) {
            bail!(
                "the {:?} role shares jobs with other processes: set --database-url to \
                 postgres://… and --queue-url to postgres://… or redis://…",
                config.role
            );
        }
        let http = if config.role.serves_http() {
            Some(Self::http(&config, &engine).await?)
        } else {
            None
        };
        let probes = match config.metrics_addr {
            Some(addr) => {
                let listener = TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("could not listen on {addr} (--metrics-addr)"))?;
                let readiness = health::Readiness {
                    engine: engine.clone(),
                    runs_jobs: config.role.runs_jobs(),
                };
                let metrics_engine = engine.clone();
                let router = probe_routes(readiness).route(
                    "/metrics",
                    axum::routing::get(move || {
                        let engine = metrics_engine.clone();
                        async move { telemetry::render(&engine).await }
                    }),
                );
                Some((listener, router))
            }
            None => None,
        };
        Ok(Self {
            http,
            probes,
            engine,
            role: config.role,
            // An absurdly long retention means "keep for ever", not a panic.
            retention: Duration::try_from_secs_f64(config.retention_days.max(0.0) * 86_400.0)
                .unwrap_or(Duration::MAX),
            upload_ttl: Duration::from_secs(config.upload_ttl),
        })
    }

    /// Binds the address and assembles the routes.
    async fn http(config: &Config, engine: &Engine) -> anyhow::Result<(TcpListener, Router)> {
        let session_key = session::load_key(config.session_key.as_deref(), &config.data_dir)?;
        let site = SiteOrigin::from_public_url(config.public_url.as_deref())?;
        let console = operators::Console::new(
            operators::read_password(
                config.admin_password.as_deref(),
                config.admin_password_file.as_deref(),
                "admin-password",
            )?,
            operators::read_password(
                config.viewer_password.as_deref(),
                config.viewer_password_file.as_deref(),
                "viewer-password",
            )?,
            session_key.clone(),
            site.is_https(),
            config.trust_forwarded,
        )?;
        let listener = TcpListener::bind(config.addr)
            .await
            .with_context(|| format!("could not listen on {}", config.addr))?;
        let assets = Assets::of_this_build(OUTPUT_NAME, &config.site_root, &config.data_dir)?;
        let mut leptos_options = LeptosOptions::builder()
            .output_name(OUTPUT_NAME)
            .site_root(assets.site_root().to_string_lossy().into_owned())
            .site_pkg_dir("pkg")
            .site_addr(listener.local_addr()?)
            .build();
        if let Some(hash_file) = assets.hash_file() {
            leptos_options.hash_files = true;
            leptos_options.hash_file = hash_file.to_string_lossy().into();
        }
        if let Some(console) = &console {
            tokio::spawn(operators::Console::forget_idle_addresses(Arc::downgrade(
                console,
            )));
        }
        let state = AppState {
            leptos_options,
            engine: engine.clone(),
            sessions: Sessions {
                key: session_key,
                secure: site.is_https(),
            },
            upload_quota: uploads::UploadQuota(
                (config.session_max_upload_mb > 0)
                    .then(|| config.session_max_upload_mb.saturating_mul(1_000_000)),
            ),
            console,
        };
        let throttle = Throttle::new(
            (config.session_rate, config.session_burst),
            (config.ip_rate, config.ip_burst),
            config.trust_forwarded,
        );
        tokio::spawn(Throttle::forget_idle_keys(Arc::downgrade(&throttle)));
        let guards = Guards {
            site: Arc::new(site),
            throttle,
            readiness: health::Readiness {
                engine: engine.clone(),
                runs_jobs: config.role.runs_jobs(),
            },
            metrics_here: config.metrics_addr.is_none(),
        };
        Ok((listener, router(state, guards, &assets)))
    }

    /// The address of `/metrics`, `/healthz` and `/readyz` when they have one of their own.
    pub fn probes_addr(&self) -> Option<SocketAddr> {
        self.probes
            .as_ref()
            .and_then(|(listener, _)| listener.local_addr().ok())
    }

    /// The address HTTP is served on (an unspecified one in the `worker` role).
    pub fn local_addr(&self) -> SocketAddr {
        self.http
            .as_ref()
            .and_then(|(listener, _)| listener.local_addr().ok())
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// The routes with every layer, for requests sent in-process (tests); `None` in the
    /// `worker` role.
    pub fn router(&self) -> Option<Router> {
        self.http.as_ref().map(|(_, router)| router.clone())
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn port(&self) -> u16 {
        self.local_addr().port()
    }

    /// Serves HTTP and runs the workers until `shutdown` resolves; then stops taking requests and
    /// lets running jobs finish within the grace period.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stop_rx_for_workers = stop_rx.clone();
        let stopped = move || {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|stop| *stop).await;
            }
        };
        let workers = self.role.runs_jobs().then(|| {
            // Retention is a worker's chore: every deployment has one, and web processes
            // stay lean.
            tokio::spawn(purge_periodically(
                self.engine.clone(),
                self.retention,
                self.upload_ttl,
                stopped(),
            ));
            let engine = self.engine.clone();
            let stopped = stopped();
            tokio::spawn(async move { engine.run_workers(stopped).await })
        });
        let engine = self.engine.clone();
        let signal = tokio::spawn(async move {
            shutdown.await;
            tracing::info!("shutting down");
            // End the event streams, or open pages would hold the HTTP server open.
            engine.hub().close();
            let _ = stop_tx.send(true);
        });
        if let Some((listener, router)) = self.probes {
            let stopped = stopped();
            tokio::spawn(async move {
                let served = axum::serve(listener, router.into_make_service())
                    .with_graceful_shutdown(stopped)
                    .await;
                if let Err(err) = served {
                    tracing::error!(%err, "the metrics and health address failed");
                }
            });
        }
        let http = self.http;
        let served = async move {
            match http {
                // `into_make_service` shares the routes with every connection; serving the
                // router itself would rebuild them for each (~30 KB per open connection).
                Some((listener, router)) => {
                    let service = router.into_make_service_with_connect_info::<SocketAddr>();
                    axum::serve(listener.tap_io(no_delay), service)
                        .with_graceful_shutdown(stopped())
                        .await
                        .context("HTTP server failed")
                }
                None => signal.await.context("signal task failed"),
            }
        };
        let Some(mut workers) = workers else {
            return served.await;
        };
        tokio::pin!(served);
        tokio::select! {
            result = &mut served => {
                result?;
                workers.await.context("worker task failed")??;
                Ok(())
            }
            ended = &mut workers => {
                let failure = match ended {
                    Ok(Ok(())) => None,
                    Ok(Err(err)) => Some(err.to_string()),
                    Err(err) => Some(err.to_string()),
                };
                // After a stop request this is the workers' end: let HTTP drain as well.
                if *stop_rx_for_workers.borrow() {
                    served.await?;
                    return match failure {
                        Some(reason) => Err(anyhow::anyhow!("the workers failed: {reason}")),
                        None => Ok(()),
                    };
                }
                // Without one, this process would go on taking jobs it never runs: it exits
                // with an error instead, for its supervisor to restart it.
                let reason = failure.unwrap_or_else(|| "they stopped".to_owned());
                tracing::error!(%reason, "the worker side of this process ended; exiting");
                bail!("the worker side of this process ended: {reason}")
            }
        }
    }
}

/// Sends small writes at once: an event stream's events are small, and with Nagle's algorithm
/// each one written while the previous is unacknowledged would wait for the client's delayed
/// ACK (~40 ms on Linux).
fn no_delay(connection: &mut tokio::net::TcpStream) {
    if let Err(err) = connection.set_nodelay(true) {
        tracing::debug!(%err, "could not set TCP_NODELAY on a connection");
    }
}

/// Deletes finished jobs older than `retention`, and uploads no job reads older than
/// `upload_ttl`, at start and then every [`PURGE_EVERY`], until `stopped`.
async fn purge_periodically(
    engine: Engine,
    retention: Duration,
    upload_ttl: Duration,
    stopped: impl Future<Output = ()>,
) {
    let work = async {
        let mut every = tokio::time::interval(PURGE_EVERY);
        loop {
            every.tick().await;
            match engine.purge_finished(retention).await {
                Ok(0) => {}
                Ok(purged) => tracing::info!(purged, "deleted finished jobs past their retention"),
                Err(err) => tracing::error!(%err, "could not purge finished jobs"),
            }
            match engine.sweep_uploads(upload_ttl).await {
                Ok(0) => {}
                Ok(swept) => tracing::info!(swept, "deleted uploads no job reads"),
                Err(err) => tracing::error!(%err, "could not sweep unused uploads"),
            }
        }
    };
    tokio::select! {
        () = work => {}
        () = stopped => {}
    }
}

/// What stands between a request and the handlers (the cross-site check and the rate limits),
/// and the routes beside them (the health checks; `/metrics` unless it has its own address).
struct Guards {
    site: Arc<SiteOrigin>,
    throttle: Arc<Throttle>,
    readiness: health::Readiness,
    metrics_here: bool,
}

/// `/healthz` and `/readyz`.
fn probe_routes(readiness: health::Readiness) -> Router {
    Router::new()
        .route("/healthz", axum::routing::get(health::healthz))
        .route("/readyz", axum::routing::get(health::readyz))
        .with_state(readiness)
}

/// The routes, with (from the outside in) tracing, the security headers, the cross-site check,
/// the session, and the rate limits.
fn router(state: AppState, guards: Guards, assets: &Assets) -> Router {
    let pages = generate_route_list(App);
    let engine = state.engine.clone();
    let options = state.leptos_options.clone();
    let stylesheet: Arc<str> = assets.stylesheet().into();
    let page = {
        let stylesheet = stylesheet.clone();
        move || shell(options.clone(), stylesheet.clone())
    };
    let mut routes = Router::new()
        .merge(api::routes())
        .merge(uploads::routes())
        .route("/admin/login", axum::routing::post(operators::login))
        .route("/admin/logout", axum::routing::post(operators::logout));
    if guards.metrics_here {
        routes = routes.route(
            "/metrics",
            axum::routing::get(telemetry::metrics_behind_login),
        );
    }
    let routes = routes
        .merge(assets.routes())
        .leptos_routes_with_context(&state, pages, move || provide_context(engine.clone()), page)
        .fallback(leptos_axum::file_and_error_handler::<AppState, _>(
            move |options| shell(options, stylesheet.clone()),
        ))
        .layer(CompressionLayer::new())
        .merge(api::event_routes())
        .layer(axum::middleware::from_fn_with_state(
            guards.throttle,
            throttle::limit,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.console.clone(),
            operators::gate,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.sessions.clone(),
            session::session,
        ))
        .layer(axum::middleware::from_fn_with_state(
            guards.site,
            security::cross_site_guard,
        ));
    let routes = routes.with_state(state);
    security::with_headers(routes.merge(probe_routes(guards.readiness)))
        .layer(axum::middleware::from_fn(telemetry::count_requests))
        .layer(TraceLayer::new_for_http())
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
