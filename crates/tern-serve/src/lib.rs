//! `tern serve`: an OpenAI-compatible HTTP server over tern's engine.
//!
//! - [`api`]: request bodies parsed field by field (errors name the field);
//! - [`engine`]: one engine thread per model, fed by a bounded queue;
//! - [`text`]: tokens to text, stop strings; [`logprobs`]: their two response shapes;
//! - [`routes`]: the endpoints and the SSE stream, and the chat page at `/`
//!   (`static/chat.html`);
//! - [`metrics`], [`error`]: `/metrics` and OpenAI's error shape.
//!
//! [`load`] opens the models and starts their engines, [`router`] builds the axum app (tests
//! use both, or [`start`]), [`serve`] is the whole command.

pub mod api;
pub mod engine;
pub mod error;
pub mod logprobs;
pub mod metrics;
pub mod routes;
pub mod text;

use anyhow::{bail, Context, Result};
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use engine::EngineHandle;
use error::ApiError;
use metrics::Metrics;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tern_model::{HeadKind, KvType, ModelPath, Options, Session};

/// A model to serve: the name clients ask for and where it is.
#[derive(Clone, Debug)]
pub struct ModelSpec {
    pub name: String,
    pub path: ModelPath,
}

impl ModelSpec {
    /// The bundled model, under its own name.
    pub fn bundled() -> Self {
        ModelSpec {
            name: tern_model::bundled::NAME.to_string(),
            path: ModelPath::Bundled,
        }
    }

    /// `NAME=PATH`, or a bare `PATH` named after its file (without extension).
    pub fn parse(s: &str) -> Result<Self, String> {
        let (name, path) = match s.split_once('=') {
            Some((n, p)) => (n.to_string(), p),
            None => {
                let p = std::path::Path::new(s);
                let stem = p.file_stem().and_then(|n| n.to_str()).unwrap_or(s);
                (stem.to_string(), s)
            }
        };
        if name.is_empty() || path.is_empty() {
            return Err(format!("'{s}': expected NAME=PATH"));
        }
        Ok(ModelSpec {
            name,
            path: ModelPath::Path(path.into()),
        })
    }
}

/// Everything `tern serve` takes.
#[derive(Clone, Debug)]
pub struct Config {
    /// Models; empty = the bundled one.
    pub models: Vec<ModelSpec>,
    pub host: String,
    /// 0 = any free port (printed).
    pub port: u16,
    /// Threads of each model's pool (0 = all cores).
    pub threads: usize,
    /// Tokens per sequence, prompt + completion (0 = the model's maximum).
    pub ctx: usize,
    /// Requests waiting per model beyond those running; more get 429.
    pub max_queue: usize,
    /// Sequences each engine runs at once (at most; the KV budget may allow fewer).
    pub parallel: usize,
    /// Element type of the KV caches.
    pub kv_type: KvType,
    /// LM head storage.
    pub head: HeadKind,
    /// Bytes of KV cache each engine's active sequences may hold (0 = `parallel` sequences
    /// of the full context).
    pub kv_budget: usize,
    /// Token rows one batched step runs at most (one per decoding sequence, the rest prompt
    /// chunks: vLLM's `max_num_batched_tokens`). Smaller keeps a long prompt from stalling
    /// the others' tokens; larger prefills faster.
    pub step_tokens: usize,
    pub api_key: Option<String>,
    /// Largest request body in bytes; larger get 413.
    pub body_limit: usize,
    /// After SIGTERM/Ctrl-C, how long in-flight requests may take before they are cancelled.
    pub shutdown_grace: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            models: Vec::new(),
            host: "127.0.0.1".into(),
            port: 8080,
            threads: 0,
            ctx: 0,
            max_queue: 64,
            parallel: 16,
            kv_type: KvType::F16,
            head: HeadKind::F16,
            kv_budget: 0,
            step_tokens: 64,
            api_key: None,
            body_limit: 1 << 20,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// The server's shared state.
pub struct App {
    pub engines: Vec<Arc<EngineHandle>>,
    pub metrics: Arc<Metrics>,
    pub api_key: Option<String>,
    pub body_limit: usize,
    /// Unix time the server started (the models' `created`).
    pub started: u64,
    ids: AtomicU64,
}

impl App {
    /// The engine serving `name`; no name = the first model.
    pub fn engine(&self, name: Option<&str>) -> Result<Arc<EngineHandle>, ApiError> {
        match name {
            None => self
                .engines
                .first()
                .cloned()
                .ok_or_else(|| ApiError::internal("no model")),
            Some(n) => self
                .engines
                .iter()
                .find(|e| e.name == n)
                .cloned()
                .ok_or_else(|| ApiError::model_not_found(n)),
        }
    }

    fn next_id(&self) -> u64 {
        self.ids.fetch_add(1, Ordering::Relaxed)
    }
}

/// Opens every model and starts its engine thread.
pub fn load(config: &Config) -> Result<Arc<App>> {
    let specs = if config.models.is_empty() {
        vec![ModelSpec::bundled()]
    } else {
        config.models.clone()
    };
    let metrics = Arc::new(Metrics::default());
    let mut engines = Vec::new();
    for spec in specs {
        if engines
            .iter()
            .any(|e: &Arc<EngineHandle>| e.name == spec.name)
        {
            bail!("two models are named '{}'", spec.name);
        }
        let opts = Options {
            threads: config.threads,
            ctx: config.ctx,
            kv: config.kv_type,
            head: config.head,
            ..Options::default()
        };
        let session =
            Session::open(&spec.path, &opts).with_context(|| format!("model '{}'", spec.name))?;
        for n in &session.notes {
            eprintln!("tern serve: {}: {n}", spec.name);
        }
        session
            .loaded
            .require_tokenizer()
            .with_context(|| format!("model '{}'", spec.name))?;
        let limits = engine::Limits {
            parallel: config.parallel,
            max_queue: config.max_queue,
            kv_budget: config.kv_budget,
            step_tokens: config.step_tokens,
        };
        let h = engine::spawn(spec.name.clone(), session, limits, metrics.clone())?;
        engines.push(Arc::new(h));
    }
    Ok(Arc::new(App {
        engines,
        metrics,
        api_key: config.api_key.clone(),
        body_limit: config.body_limit,
        started: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        ids: AtomicU64::new(0),
    }))
}

/// The routes, with the API-key check on `/v1/*` (the chat page at `/` is static and stays
/// open: its API calls carry the key), the body limit and the request counter.
pub fn router(app: Arc<App>) -> Router {
    let v1 = Router::new()
        .route("/v1/chat/completions", post(routes::chat))
        .route("/v1/completions", post(routes::completions))
        .route("/v1/models", get(routes::models))
        .route_layer(axum::middleware::from_fn_with_state(
            app.clone(),
            routes::auth,
        ));
    Router::new()
        .merge(v1)
        .route("/", get(routes::page))
        .route("/health", get(routes::health))
        .route("/metrics", get(routes::metrics))
        .fallback(routes::fallback)
        .method_not_allowed_fallback(routes::wrong_method)
        .layer(DefaultBodyLimit::max(app.body_limit))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            routes::count,
        ))
        .with_state(app)
}

/// A server running on its own threads (tests, embedding); stops when dropped.
pub struct Server {
    pub addr: SocketAddr,
    pub app: Arc<App>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Loads the models, binds `host:port` and serves in the background.
pub fn start(config: &Config) -> Result<Server> {
    let app = load(config)?;
    let rt = runtime()?;
    let listener = rt.block_on(bind(config))?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let router = router(app.clone());
    let thread = std::thread::Builder::new()
        .name("tern-serve".into())
        .spawn(move || {
            rt.block_on(async move {
                let _ = axum::serve(listener, router)
                    .with_graceful_shutdown(async move {
                        let _ = stopped.await;
                    })
                    .await;
            });
        })?;
    Ok(Server {
        addr,
        app,
        stop: Some(stop),
        thread: Some(thread),
    })
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    // The engines do the heavy work on their own threads; the runtime only moves bytes.
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

async fn bind(config: &Config) -> Result<tokio::net::TcpListener> {
    let at = format!("{}:{}", config.host, config.port);
    tokio::net::TcpListener::bind(&at)
        .await
        .with_context(|| format!("cannot listen on {at}"))
}

/// `tern serve`: loads the models, listens, and serves until SIGTERM or Ctrl-C; then stops
/// accepting, gives in-flight requests `shutdown_grace` to finish, cancels the rest and
/// returns `Ok`.
pub fn serve(config: &Config) -> Result<()> {
    let app = load(config)?;
    let rt = runtime()?;
    rt.block_on(async move {
        let listener = bind(config).await?;
        let addr = listener.local_addr()?;
        for e in &app.engines {
            eprintln!("tern serve: model '{}' (context {} tokens)", e.name, e.ctx);
        }
        let signal = shutdown_signal()?;
        println!("tern serve: listening on http://{addr}");
        let (signalled_tx, signalled_rx) = tokio::sync::watch::channel(false);
        let grace = config.shutdown_grace;
        let server = axum::serve(listener, router(app)).with_graceful_shutdown(async move {
            signal.await;
            eprintln!("tern serve: shutting down (in-flight requests have {grace:?})");
            let _ = signalled_tx.send(true);
        });
        let deadline = async move {
            let mut rx = signalled_rx;
            let _ = rx.wait_for(|s| *s).await;
            tokio::time::sleep(grace).await;
        };
        tokio::select! {
            r = server => r.context("server")?,
            _ = deadline => eprintln!("tern serve: grace period over: cancelling the requests left"),
        }
        Ok::<_, anyhow::Error>(())
    })?;
    // Dropping the runtime drops the streams left, which cancels their sequences.
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

/// SIGTERM or SIGINT (Ctrl-C). The handlers are registered here, before the caller prints
/// that it listens: a signal that arrives between the two must not find the default action
/// (which would kill the process instead of shutting it down).
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}
