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
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

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

/// At most this many connections are served at once; more are closed as they come, so the
/// listener can never take the file descriptors discovery and HAProxy need.
pub const MAX_CONNECTIONS: usize = 64;
/// A client has this long to send its request headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection is closed after this long, whatever it is doing (no keep-alive kept longer).
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// Serve until the task is dropped (aborted): each connection with a header-read timeout and
/// an overall one, at most [`MAX_CONNECTIONS`] at once. Failing to accept (descriptors used
/// up) is waited out, never a reason to stop.
pub async fn serve(listener: TcpListener, snapshot: watch::Receiver<Arc<Snapshot>>, metrics: Arc<Metrics>) {
    let app = router(snapshot, metrics);
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::debug!("admin listener: cannot accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Over the cap: closed at once.
        let Ok(permit) = permits.clone().try_acquire_owned() else { continue };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
        });
    }
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

    /// Idle connections cannot pile up: those over the cap are closed at once, the others once
    /// they have sent no request within the header timeout; then requests are served again.
    #[tokio::test]
    async fn idle_connections_are_capped_and_timed_out() {
        use std::io::Read;
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let (_tx, rx) = watch::channel(Arc::new(Snapshot::default()));
        let task = tokio::spawn(serve(listener, rx, Arc::new(Metrics::new("0.0.0"))));
        let opened = tokio::task::spawn_blocking(move || {
            let conns: Vec<std::net::TcpStream> = (0..MAX_CONNECTIONS + 20).map(|_| std::net::TcpStream::connect(addr).unwrap()).collect();
            std::thread::sleep(Duration::from_millis(300));
            // The connections over the cap were closed by the server: a read ends at once.
            let closed_at_once = conns
                .iter()
                .filter(|c| {
                    c.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
                    let mut b = [0u8; 1];
                    matches!((&**c).read(&mut b), Ok(0))
                })
                .count();
            (conns, closed_at_once)
        })
        .await
        .unwrap();
        assert_eq!(opened.1, 20);
        // The idle ones are closed after the header timeout; the listener serves again.
        tokio::time::sleep(HEADER_TIMEOUT + Duration::from_millis(500)).await;
        assert_eq!(get(addr, "/health").await, (200, "ok\n".to_owned()));
        drop(opened);
        task.abort();
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
