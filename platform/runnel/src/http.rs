//! The HTTP listener (`http.listen`, default 127.0.0.1:9644): health checks and metrics.
//!
//! - `GET /health/live`: `200 ok` whenever the process can answer at all;
//! - `GET /health/ready`: `200 ready` once startup finished (every partition opened, every
//!   listener bound), `503 not ready` before that and from the start of shutdown on;
//! - `GET /metrics`: the node's registry in the OpenMetrics text format.
//!
//! The listener is bound before the log is opened, so liveness answers during a long
//! recovery. [`HttpServer::stop`] stops accepting, lets requests in flight finish for up to
//! [`DRAIN_TIMEOUT`], then drops what is left.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::{admin, metrics};

/// How long [`HttpServer::stop`] waits for requests in flight.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether the node is ready to serve; shared by the node and the readiness probe.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

#[derive(Clone)]
struct AppState {
    readiness: Readiness,
    registry: Arc<Registry>,
}

pub struct HttpServer {
    local_addr: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl HttpServer {
    /// Binds `listen` and serves in a background task. If serving fails later,
    /// `on_failure` is cancelled, so the node shuts down instead of running without health
    /// checks, and [`HttpServer::stop`] returns the error.
    pub async fn start(
        listen: SocketAddr,
        readiness: Readiness,
        registry: Arc<Registry>,
        controller: admin::ControllerSlot,
        on_failure: CancellationToken,
    ) -> anyhow::Result<HttpServer> {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("bind the http listener on {listen} (http.listen)"))?;
        let local_addr = listener
            .local_addr()
            .context("read the address of the http listener")?;
        let router = router(
            AppState {
                readiness,
                registry,
            },
            controller,
        );
        let stop = CancellationToken::new();
        let serve =
            axum::serve(listener, router).with_graceful_shutdown(stop.clone().cancelled_owned());
        let task = tokio::spawn(async move {
            let result = serve.await;
            if result.is_err() {
                on_failure.cancel();
            }
            result
        });
        tracing::info!(address = %local_addr, "http listening");
        Ok(HttpServer {
            local_addr,
            stop,
            task,
        })
    }

    /// The bound address (the actual port when `http.listen` asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting connections and waits (bounded) for requests in flight. Fails if the
    /// server had failed while running.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        let mut task = self.task;
        match tokio::time::timeout(DRAIN_TIMEOUT, &mut task).await {
            Ok(Ok(served)) => served.context("serve http"),
            Ok(Err(join_error)) => Err(anyhow::Error::new(join_error).context("serve http")),
            Err(_elapsed) => {
                tracing::warn!(
                    timeout_ms = DRAIN_TIMEOUT.as_millis() as u64,
                    "http connections still open after the drain timeout; closing them"
                );
                task.abort();
                Ok(())
            }
        }
    }
}

fn router(state: AppState, controller: admin::ControllerSlot) -> Router {
    let admin = Router::new()
        .route("/v1/cluster", get(admin::cluster))
        .route(
            "/v1/topics",
            get(admin::list_topics).post(admin::create_topic),
        )
        .route(
            "/v1/topics/{name}",
            axum::routing::delete(admin::delete_topic),
        )
        .with_state(controller);
    Router::new()
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics_text))
        .with_state(state)
        .merge(admin)
}

async fn live() -> &'static str {
    "ok"
}

async fn ready(State(state): State<AppState>) -> Response {
    if state.readiness.is_ready() {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
    }
}

async fn metrics_text(State(state): State<AppState>) -> Response {
    match metrics::encode(&state.registry) {
        Ok(text) => (
            [(header::CONTENT_TYPE, metrics::OPENMETRICS_CONTENT_TYPE)],
            text,
        )
            .into_response(),
        Err(error) => {
            tracing::error!(%error, "encoding metrics failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics").into_response()
        }
    }
}
