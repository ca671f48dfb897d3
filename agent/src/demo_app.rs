//! The demo app (`--demo-app`): a page and a JSON API that keep a per-user counter in the
//! session, through the same store API external apps use, and show which node served it.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use serde::Serialize;
use tandem_cluster::gossip::GossipNode;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::info;

use crate::sessions::Sessions;
use crate::store::{ExpireCondition, StoreError};

/// The demo's session cookie.
pub const COOKIE: &str = "tandem_demo";
/// Idle time after which a demo session expires.
const SESSION_TTL: Duration = Duration::from_secs(30 * 60);

/// The demo app listener, bound before serving so an address in use fails start-up.
pub struct DemoApp {
    listener: TcpListener,
}

#[derive(Clone)]
struct DemoState {
    store: Sessions,
    gossip: GossipNode,
}

/// What `/api/counter` answers.
#[derive(Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct Counter {
    pub count: i64,
    pub node: String,
    pub partner: Option<String>,
    pub session: String,
}

impl DemoApp {
    /// # Errors
    /// When the address cannot be bound.
    pub async fn bind(addr: SocketAddr) -> Result<Self, tandem_cluster::net::BindError> {
        let listener = tandem_cluster::net::bind_tcp("demo app", addr).await?;
        Ok(DemoApp { listener })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `stop` turns true.
    pub async fn serve(self, store: Sessions, gossip: GossipNode, mut stop: watch::Receiver<bool>) {
        if let Ok(addr) = self.local_addr() {
            info!(%addr, "demo app listening");
        }
        let app = Router::new()
            .route("/", get(page))
            .route("/api/counter", get(read_counter).post(increment_counter))
            .with_state(DemoState { store, gossip });
        let shutdown = async move { tandem_cluster::stopped(&mut stop).await };
        if let Err(err) = axum::serve(self.listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::warn!(error = %err, "demo app stopped");
        }
    }
}

/// The session id from the cookie, if it is one this app could have issued.
fn session_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_string())
        .filter(|value| value.len() == 32 && value.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn new_session_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

fn session_key(id: &str) -> Bytes {
    Bytes::from(format!("demo:{id}"))
}

fn counter_response(state: &DemoState, id: String, count: i64, fresh: bool) -> Response {
    let body = Counter {
        count,
        node: state.gossip.node_id().to_string(),
        partner: state.store.replicator.partner().map(|p| p.node_id),
        session: id.clone(),
    };
    let mut response = Json(body).into_response();
    if fresh {
        let cookie = format!("{COOKIE}={id}; Path=/; HttpOnly; SameSite=Lax");
        if let Ok(value) = HeaderValue::from_str(&cookie) {
            response.headers_mut().insert(header::SET_COOKIE, value);
        }
    }
    response
}

fn store_error(err: StoreError) -> Response {
    let status = match err {
        StoreError::OutOfMemory { .. } | StoreError::TooManyKeys { .. } => {
            axum::http::StatusCode::INSUFFICIENT_STORAGE
        }
        _ => axum::http::StatusCode::INTERNAL_SERVER_ERROR,
    };
    (status, Json(serde_json::json!({"error": err.to_string()}))).into_response()
}

async fn read_counter(State(state): State<DemoState>, headers: HeaderMap) -> Response {
    let (id, fresh) = match session_id(&headers) {
        Some(id) => (id, false),
        None => (new_session_id(), true),
    };
    let key = session_key(&id);
    let count = state
        .store
        .run(|ks, now| ks.hget(&key, b"count", now))
        .await
        .ok()
        .flatten()
        .and_then(|v| std::str::from_utf8(&v).ok()?.parse().ok())
        .unwrap_or(0);
    counter_response(&state, id, count, fresh)
}

/// Increments the counter. A request carrying an `Idempotency-Key` is applied once: a
/// repeat of the last key (a balancer retrying on the partner after a failure) gets the
/// count that key produced.
async fn increment_counter(State(state): State<DemoState>, headers: HeaderMap) -> Response {
    let (id, fresh) = match session_id(&headers) {
        Some(id) => (id, false),
        None => (new_session_id(), true),
    };
    let request_key = headers
        .get("idempotency-key")
        .map(|v| Bytes::copy_from_slice(v.as_bytes()));
    let key = session_key(&id);
    let ttl = SESSION_TTL.as_millis() as u64;
    let outcome = state
        .store
        .run(|ks, now| {
            if let Some(request_key) = &request_key
                && ks.hget(&key, b"last_key", now)?.as_ref() == Some(request_key)
            {
                let count = ks.hget(&key, b"count", now)?;
                return Ok(count
                    .and_then(|v| std::str::from_utf8(&v).ok()?.parse().ok())
                    .unwrap_or(0));
            }
            let count = ks.hincr_by(key.clone(), Bytes::from_static(b"count"), 1, now)?;
            if let Some(request_key) = request_key {
                ks.hset(
                    key.clone(),
                    vec![(Bytes::from_static(b"last_key"), request_key)],
                    now,
                )?;
            }
            ks.expire(key, now + ttl, ExpireCondition::ALWAYS, now);
            Ok::<_, StoreError>(count)
        })
        .await;
    match outcome {
        Ok(count) => counter_response(&state, id, count, fresh),
        Err(err) => store_error(err),
    }
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

const PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Tandem demo</title>
<style>
  body { font-family: system-ui, sans-serif; max-width: 36rem; margin: 3rem auto; padding: 0 1rem; color: #222; }
  h1 { font-size: 1.4rem; }
  .count { font-size: 4rem; font-weight: 700; margin: 1rem 0; }
  dl { display: grid; grid-template-columns: max-content 1fr; gap: .3rem 1rem; }
  dt { color: #666; }
  dd { margin: 0; font-family: ui-monospace, monospace; }
  button { font-size: 1.1rem; padding: .5rem 1.4rem; cursor: pointer; }
  .error { color: #b00; }
</style>
</head>
<body>
<h1>Tandem session demo</h1>
<p>Your counter lives in your session, held by the agent that served you and copied to its partner.</p>
<div class="count" id="count">…</div>
<button id="inc">Increment</button>
<dl>
  <dt>served by</dt><dd id="node">…</dd>
  <dt>partner</dt><dd id="partner">…</dd>
  <dt>session</dt><dd id="session">…</dd>
</dl>
<p class="error" id="error"></p>
<script>
async function call(method) {
  const error = document.getElementById("error");
  try {
    const headers = method === "POST" ? { "Idempotency-Key": crypto.randomUUID() } : {};
    const response = await fetch("/api/counter", { method, headers, credentials: "same-origin" });
    if (!response.ok) throw new Error("HTTP " + response.status);
    const body = await response.json();
    document.getElementById("count").textContent = body.count;
    document.getElementById("node").textContent = body.node;
    document.getElementById("partner").textContent = body.partner ?? "none (unprotected)";
    document.getElementById("session").textContent = body.session;
    error.textContent = "";
  } catch (e) {
    error.textContent = "request failed: " + e.message;
  }
}
document.getElementById("inc").addEventListener("click", () => call("POST"));
call("GET");
</script>
</body>
</html>
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_session_ids_are_accepted() {
        let mut headers = HeaderMap::new();
        let id = new_session_id();
        headers.insert(
            header::COOKIE,
            format!("a=b; {COOKIE}={id}").parse().unwrap(),
        );
        assert_eq!(session_id(&headers), Some(id));
        for bad in [
            "short",
            "zz0123456789abcdef0123456789abcd",
            "",
            "../../etc/passwd",
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(header::COOKIE, format!("{COOKIE}={bad}").parse().unwrap());
            assert_eq!(session_id(&headers), None, "{bad}");
        }
    }
}
