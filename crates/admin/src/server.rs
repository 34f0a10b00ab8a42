//! The admin HTTP listener: `/health`, `/ready`, `/status`, `/metrics`. It reads what the
//! daemon publishes (a [`Snapshot`] through a `watch` channel, and the [`Metrics`]) and never
//! touches the daemon's state itself.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::{Error, Metrics, Snapshot};

#[derive(Clone)]
struct AppState {
    snapshot: watch::Receiver<Arc<Snapshot>>,
    metrics: Arc<Metrics>,
}

/// Bind the admin listener now (so a taken port is reported at once, also from code that cannot
/// await). Must be called within a tokio runtime.
pub fn bind(addr: SocketAddr) -> Result<TcpListener, Error> {
    let err = |error| Error::Bind { addr, error };
    let l = std::net::TcpListener::bind(addr).map_err(err)?;
    l.set_nonblocking(true).map_err(err)?;
    TcpListener::from_std(l).map_err(err)
}

/// The routes, on their own (for tests).
pub fn router(snapshot: watch::Receiver<Arc<Snapshot>>, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/status", get(status))
        .route("/metrics", get(metrics_text))
        .with_state(AppState { snapshot, metrics })
}

/// Serve until the task is dropped (aborted).
pub async fn serve(listener: TcpListener, snapshot: watch::Receiver<Arc<Snapshot>>, metrics: Arc<Metrics>) -> Result<(), Error> {
    axum::serve(listener, router(snapshot, metrics)).await.map_err(Error::Serve)
}

async fn health() -> &'static str {
    "ok\n"
}

async fn ready(State(s): State<AppState>) -> Response {
    let snap = s.snapshot.borrow().clone();
    if snap.ready {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        let waiting: Vec<&str> = snap.services.iter().filter(|(_, v)| !v.synced).map(|(k, _)| k.as_str()).collect();
        (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: waiting for discovery of {}\n", waiting.join(", "))).into_response()
    }
}

async fn status(State(s): State<AppState>) -> Json<Snapshot> {
    let snap = s.snapshot.borrow().clone();
    Json(Snapshot::clone(&snap))
}

async fn metrics_text(State(s): State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], s.metrics.encode()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ServiceStatus, WatcherState};

    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        let path = path.to_owned();
        tokio::task::spawn_blocking(move || crate::client::get(addr, &path, std::time::Duration::from_secs(5)).unwrap()).await.unwrap()
    }

    #[tokio::test]
    async fn serves_what_the_daemon_publishes() {
        let mut snap = Snapshot::default();
        snap.services.insert(
            "web".into(),
            std::sync::Arc::new(ServiceStatus {
                method: "file".into(),
                watcher: WatcherState::Starting,
                synced: false,
                backends: Default::default(),
                last_update: None,
                last_error: None,
                last_apply: None,
                rejected: 0,
                reconnects: 0,
            }),
        );
        let (tx, rx) = watch::channel(Arc::new(snap.clone()));
        let metrics = Arc::new(Metrics::new("0.0.0"));
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(serve(listener, rx, metrics.clone()));

        assert_eq!(get(addr, "/health").await, (200, "ok\n".into()));
        assert_eq!(get(addr, "/ready").await, (503, "not ready: waiting for discovery of web\n".into()));
        let (code, body) = get(addr, "/status").await;
        assert_eq!(code, 200);
        assert_eq!(serde_json::from_str::<Snapshot>(&body).unwrap(), snap);

        snap.ready = true;
        std::sync::Arc::make_mut(snap.services.get_mut("web").unwrap()).synced = true;
        tx.send(Arc::new(snap)).unwrap();
        assert_eq!(get(addr, "/ready").await.0, 200);

        metrics.apply("installed");
        let (code, body) = get(addr, "/metrics").await;
        assert_eq!(code, 200);
        assert!(body.contains("myelin_applies_total{outcome=\"installed\"} 1"), "{body}");
        assert_eq!(get(addr, "/nope").await.0, 404);
        task.abort();
    }

    #[tokio::test]
    async fn a_taken_port_is_a_clear_error() {
        let first = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = first.local_addr().unwrap();
        let e = bind(addr).unwrap_err().to_string();
        assert!(e.starts_with(&format!("cannot listen on {addr}")), "{e}");
    }
}
