//! `kiln serve` and `kiln worker`: a self-hosted image build service.
//!
//! Clients send specs as JSON over HTTP ([`http`]); each spec revision is
//! rendered to kiln.toml and validated by the CLI's own parser
//! ([`spec_input`]), stored with a build job in SQL ([`store`]: SQLite or
//! Postgres), and built and pushed by workers that run `kiln build --push`
//! as subprocesses ([`worker`]).

pub mod events;
pub mod git_source;
pub mod http;
pub mod prebuilt;
pub mod spec_input;
pub mod store;
pub mod ui;
pub mod webhooks;
pub mod worker;

use std::path::PathBuf;
use std::sync::Arc;

use kiln_core::error::{Classify, ErrorKind};
use tokio::sync::watch;

pub use store::Store;
pub use worker::{RegistryConfig, WorkerConfig};

/// The service's own errors.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Input(String),
}

impl ServiceError {
    pub fn io(context: String, source: std::io::Error) -> ServiceError {
        ServiceError::Io { context, source }
    }
}

impl Classify for ServiceError {
    fn kind(&self) -> ErrorKind {
        match self {
            ServiceError::Db(_) => ErrorKind::Io,
            ServiceError::Io { .. } => ErrorKind::Io,
            ServiceError::Input(_) => ErrorKind::Input,
        }
    }
}

impl From<ServiceError> for kiln_core::Error {
    fn from(e: ServiceError) -> Self {
        kiln_core::Error::typed(e)
    }
}

/// `kiln serve`.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// `ADDR:PORT` to listen on (port 0: any free port; the address taken
    /// is printed as `listening on http://ADDR:PORT`).
    pub listen: String,
    pub data: PathBuf,
    /// Default: `sqlite://<data>/kiln.db?mode=rwc`.
    pub database: Option<String>,
    /// Builds run at once by this process (0: API only).
    pub workers: usize,
}

/// `kiln worker`.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    pub database: String,
    /// Job directories and the build cache; default: a directory under the
    /// system's temporary directory.
    pub data: Option<PathBuf>,
    pub workers: usize,
}

fn runtime() -> kiln_core::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| ServiceError::io("starting the async runtime".into(), e).into())
}

fn create_dir(dir: &std::path::Path) -> kiln_core::Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| ServiceError::io(format!("creating {}", dir.display()), e).into())
}

fn env_nonempty(k: &str) -> Option<String> {
    std::env::var(k).ok().filter(|v| !v.is_empty())
}

fn worker_config(data: PathBuf) -> kiln_core::Result<WorkerConfig> {
    let registry = RegistryConfig::from_env().ok_or_else(|| {
        kiln_core::Error::input(
            "KILN_REGISTRY_ENDPOINT (HOST[:PORT]) must be set: workers push every image there",
        )
    })?;
    let kiln_bin = match env_nonempty("KILN_SERVE_KILN_BIN") {
        Some(b) => PathBuf::from(b),
        None => std::env::current_exe().map_err(|e| {
            kiln_core::Error::from(ServiceError::io("finding the kiln binary".into(), e))
        })?,
    };
    let work_root = data.join("jobs");
    let cache_dir = data.join("cache");
    create_dir(&work_root)?;
    create_dir(&cache_dir)?;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    Ok(WorkerConfig {
        kiln_bin,
        work_root,
        cache_dir: Some(cache_dir),
        registry,
        id: format!("{host}-{}", std::process::id()),
    })
}

/// Turns true on Ctrl-C or SIGTERM.
fn shutdown_on_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async {
                match term.as_mut() {
                    Some(t) => { t.recv().await; }
                    None => std::future::pending::<()>().await,
                }
            } => {}
        }
        eprintln!("kiln: stopping: no new jobs are taken; running builds finish first");
        let _ = tx.send(true);
    });
    rx
}

/// Run the HTTP API and `opts.workers` build workers until Ctrl-C/SIGTERM.
pub fn serve(opts: ServeOptions) -> kiln_core::Result<()> {
    create_dir(&opts.data)?;
    let admin = env_nonempty("KILN_SERVE_ADMIN_TOKEN").ok_or_else(|| {
        kiln_core::Error::input("KILN_SERVE_ADMIN_TOKEN must be set (the API's admin bearer token)")
    })?;
    let viewer = env_nonempty("KILN_SERVE_VIEWER_TOKEN");
    let tokens = http::Tokens::new(&admin, viewer.as_deref());
    let wcfg = if opts.workers > 0 {
        Some(worker_config(opts.data.clone())?)
    } else {
        None
    };
    let database = opts
        .database
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}/kiln.db?mode=rwc", opts.data.display()));
    runtime()?.block_on(async move {
        let store = Store::open(&database).await?;
        let requeued = store.requeue_expired().await?;
        if !requeued.is_empty() {
            eprintln!("kiln serve: re-queued jobs whose worker's lease expired: {requeued:?}");
        }
        let listener = tokio::net::TcpListener::bind(&opts.listen)
            .await
            .map_err(|e| ServiceError::io(format!("listening on {}", opts.listen), e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| ServiceError::io("reading the listening address".into(), e))?;
        eprintln!("kiln serve: listening on http://{addr}");
        let shutdown = shutdown_on_signal();
        let workers = wcfg.map(|cfg| {
            tokio::spawn(worker::run_workers(
                store.clone(),
                Arc::new(cfg),
                opts.workers,
                shutdown.clone(),
            ))
        });
        // Event streams end on shutdown (else it would wait for them).
        let events = store.events().clone();
        let app = http::router(http::AppState {
            store,
            tokens,
            registry: RegistryConfig::from_env(),
        });
        let mut stop = shutdown.clone();
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
                events.close();
            })
            .await
            .map_err(|e| ServiceError::io("serving HTTP".into(), e))?;
        if let Some(w) = workers {
            let _ = w.await;
        }
        Ok(())
    })
}

/// Run build workers only (no HTTP) against a shared database.
pub fn worker(opts: WorkerOptions) -> kiln_core::Result<()> {
    let data = opts.data.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("kiln-worker-{}", std::process::id()))
    });
    create_dir(&data)?;
    let cfg = worker_config(data)?;
    runtime()?.block_on(async move {
        let store = Store::open(&opts.database).await?;
        eprintln!("kiln worker {}: waiting for jobs", cfg.id);
        let shutdown = shutdown_on_signal();
        worker::run_workers(store, Arc::new(cfg), opts.workers, shutdown).await;
        Ok(())
    })
}
