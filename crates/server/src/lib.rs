//! The per-environment daemon: one process per environment and data directory that owns the
//! runtime, the proxy, the revision store and the API every client goes through.
//!
//! It listens twice: on a Unix socket in the data directory (mode 0600 in a 0700 folder, so
//! only its owner can connect, and no token is needed) and on an HTTP listener on loopback
//! (`[server] listen`, default 127.0.0.1:7300 or the next free port) where every `/v1`
//! endpoint needs the bearer token from the data directory's `token` file and the Host header
//! must name the listener (no DNS rebinding). SIGTERM stops the server but leaves the
//! services running for the next server to re-attach, and the proxy's listening sockets open
//! in the port holder ([`held_ports`]) for the next server to adopt; `POST /v1/down` stops
//! everything, the holder included.

mod alertapi;
mod api;
mod auth;
mod delivery;
pub mod files;
mod held_ports;
mod logs;
mod metrics;
mod monitor;
mod notify;
mod promapi;
mod recorder;
mod remote_write;
mod rules;
mod scrape;
pub mod secrets;
mod self_metrics;
mod server_log;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tandem_api::{EventKind, ServerInfo, now_ms};
use tandem_engine::Engine;
use tandem_store::Store;
use tandem_supervisor::runtime::{Runtime, RuntimeConfig};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;

pub use files::{DataDir, ServerRecord};

/// Size at which a log file (an instance's, or `server.log`) is rotated.
const LOG_MAX_BYTES: u64 = 10 * 1024 * 1024;
/// Rotated files kept per log.
const LOG_MAX_FILES: u32 = 5;
/// How long a stopping server lets the proxy's requests in flight finish.
const STOP_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

/// How to run a server.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub env: String,
    pub data_dir: PathBuf,
    /// `[server] listen`; `None` means 127.0.0.1:7300 or the next free port.
    pub listen: Option<String>,
    /// The tandem binary, started as the shim of every instance and as the port holder.
    pub shim_exe: PathBuf,
    pub version: String,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(
        "another tandem server already runs for {env} in {dir} (pid {pid}); use it, or stop it with `tandem down`"
    )]
    AlreadyRunning {
        env: String,
        dir: String,
        pid: String,
    },
    #[error("cannot listen on {addr}: {source}; choose another `[server] listen` address")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("`[server] listen = \"{0}\"` is not a host:port address")]
    BadListen(String),
    #[error("{0}")]
    Io(String),
    #[error(transparent)]
    Store(#[from] tandem_store::StoreError),
}

/// Shared by every request handler.
pub(crate) struct AppState {
    pub(crate) engine: Arc<Engine>,
    pub(crate) info: ServerInfo,
    pub(crate) token: String,
    pub(crate) allowed_hosts: Vec<String>,
    pub(crate) check_host: bool,
    pub(crate) shutdown: watch::Sender<bool>,
    pub(crate) recovered: watch::Receiver<bool>,
    pub(crate) env: String,
    pub(crate) dir: DataDir,
    pub(crate) monitor: Arc<monitor::Monitor>,
    pub(crate) rules: Arc<rules::Rules>,
    pub(crate) secrets: Arc<secrets::SecretStore>,
}

/// Runs the server until `POST /v1/down` or SIGTERM/SIGINT.
pub async fn run(config: ServerConfig) -> Result<(), ServerError> {
    let dir = DataDir::new(&config.data_dir);
    dir.create()
        .map_err(|e| ServerError::Io(format!("cannot create {}: {e}", dir.root().display())))?;
    let _lock = dir
        .lock_exclusive()
        .map_err(|pid| ServerError::AlreadyRunning {
            env: config.env.clone(),
            dir: dir.root().display().to_string(),
            pid,
        })?;
    // In the background our stdout and stderr append to server.log: rotate it by size.
    if let Some(log) =
        server_log::ServerLog::for_fds(&dir.log_file(), &[1, 2], LOG_MAX_BYTES, LOG_MAX_FILES)
    {
        log.spawn();
    }
    let token = dir
        .read_or_create_token()
        .map_err(|e| ServerError::Io(format!("cannot create the token file: {e}")))?;
    let store = Arc::new(Store::open(&dir.store_file())?);
    let secrets = Arc::new(
        secrets::SecretStore::open(&dir.secrets_file())
            .map_err(|e| ServerError::Io(e.to_string()))?,
    );
    let recorder = Arc::new(recorder::Recorder::new(store.clone()));

    let runtime = Runtime::new(
        RuntimeConfig {
            env: config.env.clone(),
            instances_dir: dir.instances_dir(),
            logs_dir: dir.logs_dir(),
            shim_exe: config.shim_exe.clone(),
            cgroup_prefix: format!("tandem/{}", dir.cgroup_name(&config.env)),
            log_max_bytes: LOG_MAX_BYTES,
            log_max_files: LOG_MAX_FILES,
        },
        recorder.clone(),
    );
    let limits_warning = runtime.limits_warning();
    if let Some(w) = &limits_warning {
        tracing::warn!("{w}");
    }
    // Monitoring settings come from the live revision (defaults before the first deploy);
    // retention and size limits are read at start.
    let settings = store
        .live(&config.env)?
        .map(|r| r.system.monitoring)
        .unwrap_or_default();
    let monitor = Arc::new(
        monitor::Monitor::open(&dir.root().join("tsdb"), &settings, recorder.clone())
            .map_err(ServerError::Io)?,
    );
    let traffic = Arc::new(metrics::TrafficMetrics::default());
    // The proxy's sockets live in the port holder, so they outlive this process.
    let held_ports = Arc::new(held_ports::HeldPorts::new(dir.root(), &config.shim_exe));
    let proxy = tandem_proxy::Proxy::with_source(
        tandem_proxy::ProxyConfig::default(),
        traffic.clone(),
        held_ports.clone(),
    );
    let engine = Engine::new(
        tandem_engine::EngineConfig {
            env: config.env.clone(),
            edges_file: dir.root().join("edges.json"),
            warm_file: dir.warm_file(),
            analysis: Some(monitor.clone()),
        },
        store.clone(),
        runtime.clone(),
        proxy,
        recorder.clone(),
    );
    engine.set_secrets(secrets.clone());

    // Listeners: the Unix socket first (the CLI waits for it), then HTTP.
    let socket_path = dir.socket_file();
    let _ = std::fs::remove_file(&socket_path);
    let unix = UnixListener::bind(&socket_path)
        .map_err(|e| ServerError::Io(format!("cannot bind {}: {e}", socket_path.display())))?;
    files::set_mode(&socket_path, 0o600).map_err(|e| ServerError::Io(e.to_string()))?;
    let (tcp, listen_addr) = bind_http(config.listen.as_deref()).await?;

    let info = ServerInfo {
        pid: std::process::id(),
        version: config.version.clone(),
        env: config.env.clone(),
        listen: listen_addr.to_string(),
        data_dir: dir.root().display().to_string(),
        started_ms: now_ms(),
        limits_warning,
    };
    dir.write_record(&ServerRecord::current(&info))
        .map_err(|e| ServerError::Io(format!("cannot write server.json: {e}")))?;

    let (shutdown_tx, mut shutdown_rx) = watch::channel(false);
    let (recovered_tx, recovered_rx) = watch::channel(false);
    let port = listen_addr.port();

    let rule_engine = rules::Rules::new(&config.env, monitor.clone(), recorder.clone(), dir.root());
    if let Some(live) = store.live(&config.env)? {
        let base = std::path::Path::new(&live.provenance.file)
            .parent()
            .map(std::path::Path::to_path_buf)
            .unwrap_or_default();
        rule_engine.load(&live.system, &base);
        rule_engine
            .notifier
            .load(&live.system, &format!("http://{listen_addr}"));
    }
    let state = Arc::new(AppState {
        engine: engine.clone(),
        info: info.clone(),
        token,
        allowed_hosts: vec![
            format!("127.0.0.1:{port}"),
            format!("localhost:{port}"),
            format!("[::1]:{port}"),
            listen_addr.to_string(),
        ],
        // Against DNS rebinding, which targets loopback; elsewhere the token is the guard.
        check_host: listen_addr.ip().is_loopback(),
        shutdown: shutdown_tx.clone(),
        recovered: recovered_rx,
        env: config.env.clone(),
        dir: dir.clone(),
        monitor: monitor.clone(),
        rules: rule_engine.clone(),
        secrets,
    });

    monitor.start_collecting(&config.env, dir.root(), runtime.clone(), traffic.clone());
    Arc::new(scrape::Scraper::new(
        &config.env,
        monitor.clone(),
        runtime.clone(),
        store.clone(),
    ))
    .start();
    recorder.emit_server(
        &config.env,
        EventKind::ServerStarted,
        format!(
            "server started (pid {}, listening on {listen_addr})",
            info.pid
        ),
    );

    // Recover before any apply runs; status is served meanwhile.
    {
        let engine = engine.clone();
        let start_missing = !dir.is_down();
        tokio::spawn(async move {
            if let Err(e) = engine.recover(None, start_missing).await {
                tracing::error!("recovery failed: {e}");
            }
            let _ = recovered_tx.send(true);
        });
    }
    // Log housekeeping (CPU use for `status` comes from the collector's rounds).
    {
        let logs = dir.logs_dir();
        let instances = dir.instances_dir();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
            loop {
                tick.tick().await;
                logs::prune_old_logs(&logs, &instances, 20);
            }
        });
    }

    if let Some(w) = &state.info.limits_warning {
        recorder.emit_server(&config.env, EventKind::LimitsUnavailable, w.clone());
    }
    let unix_app = api::router(state.clone(), false)
        .merge(promapi::routes().with_state(state.clone()))
        .merge(alertapi::routes().with_state(state.clone()));
    let tcp_app = api::router(state.clone(), true).merge(
        promapi::routes()
            .merge(alertapi::routes())
            .layer(axum::middleware::from_fn_with_state(
                state.clone(),
                auth::read_only,
            ))
            .with_state(state.clone()),
    );
    let mut stop_unix = shutdown_rx.clone();
    let mut stop_tcp = shutdown_rx.clone();
    let unix_server = tokio::spawn(async move {
        let _ = axum::serve(unix, unix_app)
            .with_graceful_shutdown(async move {
                let _ = stop_unix.wait_for(|s| *s).await;
            })
            .await;
    });
    let tcp_server = tokio::spawn(async move {
        let _ = axum::serve(
            tcp,
            tcp_app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            let _ = stop_tcp.wait_for(|s| *s).await;
        })
        .await;
    });

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| ServerError::Io(e.to_string()))?;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| ServerError::Io(e.to_string()))?;
    tokio::select! {
        _ = shutdown_rx.wait_for(|s| *s) => {}
        _ = sigterm.recv() => { tracing::info!("SIGTERM: the server stops; services keep running"); }
        _ = sigint.recv() => { tracing::info!("SIGINT: the server stops; services keep running"); }
    }
    // New connections now wait in the port holder's sockets for the next server, and
    // requests already here get a few seconds to finish before this process ends them.
    let proxy = engine.proxy().clone();
    proxy.stop_accepting().await;
    let drain_until = tokio::time::Instant::now() + STOP_DRAIN;
    while proxy.work_in_flight() > 0 && tokio::time::Instant::now() < drain_until {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let _ = shutdown_tx.send(true);
    recorder.emit_server(
        &config.env,
        EventKind::ServerStopped,
        "server stopped".to_string(),
    );
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        let _ = unix_server.await;
        let _ = tcp_server.await;
    })
    .await;
    let _ = std::fs::remove_file(&socket_path);
    // After `tandem down` nothing is served any more; any other stop leaves the holder
    // keeping the ports for the next server.
    if dir.is_down() {
        held_ports.quit();
    }
    dir.remove_record();
    Ok(())
}

/// Binds the HTTP listener: the configured address, or 127.0.0.1:7300 and up when none is.
async fn bind_http(listen: Option<&str>) -> Result<(TcpListener, SocketAddr), ServerError> {
    if let Some(text) = listen {
        let addr: SocketAddr = text
            .parse()
            .map_err(|_| ServerError::BadListen(text.to_string()))?;
        let l = TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Listen {
                addr: text.to_string(),
                source,
            })?;
        let local = l.local_addr().map_err(|e| ServerError::Io(e.to_string()))?;
        return Ok((l, local));
    }
    let default: SocketAddr = tandem_spec::DEFAULT_LISTEN.parse().expect("valid default");
    let mut last_error = None;
    for offset in 0..100u16 {
        let addr = SocketAddr::new(default.ip(), default.port() + offset);
        match TcpListener::bind(addr).await {
            Ok(l) => return Ok((l, addr)),
            Err(e) => last_error = Some(e),
        }
    }
    Err(ServerError::Listen {
        addr: "127.0.0.1:7300-7399".into(),
        source: last_error.unwrap_or_else(|| std::io::Error::other("no free port")),
    })
}

/// The data directory of `env` for a system file in `project_dir`: `<project>/.tandem/<env>`.
pub fn data_dir_for(project_dir: &Path, env: &str) -> PathBuf {
    project_dir.join(".tandem").join(env)
}
