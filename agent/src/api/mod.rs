//! The HTTP session API, for apps without a Redis client.
//!
//! Sessions are JSON: a string session has `value`, a hash session has `fields`. Every
//! response carries the session's version as its `ETag`; `If-Match` makes a write
//! conditional on it and `If-None-Match: *` makes it create-only. The OpenAPI document is
//! served at `/openapi.json`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tandem_common::secret::bearer_matches;
use tandem_common::version::Version;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::info;

use crate::sessions::Sessions;
use crate::store::{Entry, ExpireCondition, Keyspace, StoreError, Value};

/// The OpenAPI 3 document of this API.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Every route, as written in the router and in the OpenAPI document.
pub const ROUTES: [&str; 4] = [
    "/v1/sessions/{key}",
    "/v1/sessions/{key}/fields/{field}",
    "/v1/sessions/{key}/touch",
    "/openapi.json",
];

/// The HTTP API listener, bound before serving so an address in use fails start-up.
pub struct ApiServer {
    listener: TcpListener,
    body_limit: usize,
    token: Option<String>,
}

impl ApiServer {
    /// # Errors
    /// When the address cannot be bound.
    pub async fn bind(
        addr: SocketAddr,
        max_value_bytes: usize,
        token: Option<String>,
    ) -> Result<Self, tandem_cluster::net::BindError> {
        let listener = tandem_cluster::net::bind_tcp("HTTP session API", addr).await?;
        Ok(ApiServer {
            listener,
            // JSON escaping can double a value; leave room for the envelope.
            body_limit: max_value_bytes.saturating_mul(2).saturating_add(64 * 1024),
            token,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `stop` turns true.
    pub async fn serve(self, store: Sessions, mut stop: watch::Receiver<bool>) {
        if let Ok(addr) = self.local_addr() {
            info!(%addr, "HTTP session API listening");
        }
        let mut app = router(store).layer(DefaultBodyLimit::max(self.body_limit));
        if let Some(token) = self.token {
            app = app.layer(axum::middleware::from_fn_with_state(
                Arc::<str>::from(token),
                require_token,
            ));
        }
        let shutdown = async move { tandem_cluster::stopped(&mut stop).await };
        if let Err(err) = axum::serve(self.listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::warn!(error = %err, "HTTP session API stopped");
        }
    }
}

/// Counter: HTTP session API calls refused for a missing or wrong token.
pub const UNAUTHORIZED: &str = "tandem_api_unauthorized_total";

/// Answers 401 to calls without `Authorization: Bearer <the API token>`.
async fn require_token(
    axum::extract::State(token): axum::extract::State<Arc<str>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let authorization = request.headers().get(header::AUTHORIZATION);
    if bearer_matches(authorization.and_then(|v| v.to_str().ok()), &token) {
        return next.run(request).await;
    }
    metrics::counter!(UNAUTHORIZED).increment(1);
    tracing::warn!(path = %request.uri().path(), "refused an HTTP session API call without the API token");
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "this API needs its token: Authorization: Bearer TOKEN",
    )
    .into_response()
}

/// The API's routes over `store`.
pub fn router(store: Sessions) -> Router {
    Router::new()
        .route(
            ROUTES[0],
            get(get_session)
                .put(put_session)
                .patch(patch_session)
                .delete(delete_session),
        )
        .route(
            ROUTES[1],
            get(get_field).put(put_field).delete(delete_field),
        )
        .route(ROUTES[2], post(touch_session))
        .route(
            ROUTES[3],
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        )
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .with_state(store)
}

/// A session as the API shows it.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct SessionBody {
    pub key: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fields: Option<BTreeMap<String, String>>,
    /// Milliseconds to live, `null` without an expiry.
    pub ttl_ms: Option<u64>,
    pub version: String,
}

/// `PUT /v1/sessions/{key}`: exactly one of `value` and `fields`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutBody {
    pub value: Option<String>,
    pub fields: Option<BTreeMap<String, String>>,
    pub ttl_ms: Option<u64>,
}

/// `PATCH /v1/sessions/{key}`: fields to set and to delete, and an optional new TTL.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchBody {
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
    #[serde(default)]
    pub delete_fields: Vec<String>,
    pub ttl_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldBody {
    pub value: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TouchBody {
    pub ttl_ms: u64,
}

/// An error as JSON: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    fn not_found(key: &str) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no session {key:?}"),
        )
    }

    fn precondition() -> Self {
        ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            "precondition_failed",
            "the session's version does not match the condition",
        )
    }

    fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        let (status, code) = match err {
            StoreError::WrongType => (StatusCode::CONFLICT, "wrong_type"),
            StoreError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            StoreError::OutOfMemory { .. } | StoreError::TooManyKeys { .. } => {
                (StatusCode::INSUFFICIENT_STORAGE, "store_full")
            }
            StoreError::NotInteger | StoreError::HashNotInteger | StoreError::Overflow => {
                (StatusCode::UNPROCESSABLE_ENTITY, "not_an_integer")
            }
            StoreError::NotFloat
            | StoreError::HashNotFloat
            | StoreError::NanOrInfinity
            | StoreError::ScoreNan => (StatusCode::UNPROCESSABLE_ENTITY, "not_a_number"),
            StoreError::StringTooLong => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            StoreError::NoSuchKey => (StatusCode::NOT_FOUND, "not_found"),
            StoreError::IndexOutOfRange | StoreError::DbOutOfRange => {
                (StatusCode::BAD_REQUEST, "bad_request")
            }
        };
        ApiError::new(status, code, err.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}

type ApiResult = Result<Response, ApiError>;

/// `If-Match` / `If-None-Match: *` as found in a request.
struct Condition {
    if_match: Option<Vec<String>>,
    if_none_match_any: bool,
}

impl Condition {
    fn from_headers(headers: &HeaderMap) -> Self {
        let tags = |name| {
            headers.get(name).and_then(|v| v.to_str().ok()).map(|v| {
                v.split(',')
                    .map(|tag| {
                        tag.trim()
                            .trim_start_matches("W/")
                            .trim_matches('"')
                            .to_string()
                    })
                    .collect::<Vec<_>>()
            })
        };
        Condition {
            if_match: tags(header::IF_MATCH),
            if_none_match_any: tags(header::IF_NONE_MATCH)
                .is_some_and(|t| t.iter().any(|t| t == "*")),
        }
    }

    /// The key's current version (`None`: absent), if the condition lets a write proceed.
    fn check(&self, ks: &mut Keyspace, key: &[u8], now: u64) -> Result<Option<Version>, ApiError> {
        let current = current_version(ks, key, now);
        if self.allows(current) {
            Ok(current)
        } else {
            Err(ApiError::precondition())
        }
    }

    /// Whether a write may proceed given the key's current version (`None`: absent).
    fn allows(&self, current: Option<Version>) -> bool {
        if self.if_none_match_any && current.is_some() {
            return false;
        }
        match (&self.if_match, current) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(tags), Some(version)) => {
                let version = version.to_string();
                tags.iter().any(|tag| tag == "*" || *tag == version)
            }
        }
    }
}

fn key_text(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}

/// The session under `key` as JSON with its ETag; `None` when absent.
fn show(
    ks: &mut Keyspace,
    key: &[u8],
    now: u64,
) -> Result<Option<(SessionBody, Version)>, ApiError> {
    let Some(entry) = ks.entry(key, now) else {
        return Ok(None);
    };
    let Entry {
        value,
        expires_at_ms,
        version,
    } = entry;
    let utf8 = |bytes: &Bytes| {
        String::from_utf8(bytes.to_vec()).map_err(|_| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "not_utf8",
                "the session holds bytes that are not UTF-8; read it over the Redis protocol",
            )
        })
    };
    let (kind, text, fields) = match value {
        Value::Str(bytes) => ("string", Some(utf8(bytes)?), None),
        Value::Hash(hash) => {
            let mut fields = BTreeMap::new();
            for (field, value) in hash.iter() {
                fields.insert(utf8(field)?, utf8(value)?);
            }
            ("hash", None, Some(fields))
        }
        other => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "wrong_type",
                format!(
                    "the key holds a {}; read it over the Redis protocol",
                    crate::store::Kind::of(other).name()
                ),
            ));
        }
    };
    Ok(Some((
        SessionBody {
            key: key_text(key),
            kind: kind.to_string(),
            value: text,
            fields,
            ttl_ms: expires_at_ms.map(|at| at.saturating_sub(now)),
            version: version.to_string(),
        },
        *version,
    )))
}

fn respond(status: StatusCode, session: SessionBody, version: Version) -> Response {
    let etag = HeaderValue::from_str(&format!("\"{version}\"")).expect("versions are ASCII");
    (status, [(header::ETAG, etag)], Json(session)).into_response()
}

fn current_version(ks: &mut Keyspace, key: &[u8], now: u64) -> Option<Version> {
    ks.entry(key, now).map(|e| e.version)
}

fn deadline(ttl_ms: u64, now: u64) -> Result<u64, ApiError> {
    if ttl_ms == 0 {
        return Err(ApiError::bad_request("ttl_ms must be positive"));
    }
    now.checked_add(ttl_ms)
        .ok_or_else(|| ApiError::bad_request("ttl_ms is too large"))
}

fn bytes_of(text: String) -> Bytes {
    Bytes::from(text.into_bytes())
}

async fn get_session(State(store): State<Sessions>, Path(key): Path<String>) -> ApiResult {
    let shown = store.run(|ks, now| show(ks, key.as_bytes(), now)).await?;
    let (session, version) = shown.ok_or_else(|| ApiError::not_found(&key))?;
    Ok(respond(StatusCode::OK, session, version))
}

async fn put_session(
    State(store): State<Sessions>,
    Path(key): Path<String>,
    headers: HeaderMap,
    body: Result<Json<PutBody>, axum::extract::rejection::JsonRejection>,
) -> ApiResult {
    let Json(body) = body.map_err(|err| ApiError::bad_request(err.body_text()))?;
    let condition = Condition::from_headers(&headers);
    let key_bytes = Bytes::from(key.clone().into_bytes());
    let outcome = store
        .run(|ks, now| -> Result<_, ApiError> {
            let current = condition.check(ks, &key_bytes, now)?;
            let expires = body.ttl_ms.map(|ttl| deadline(ttl, now)).transpose()?;
            match (body.value, body.fields) {
                (Some(value), None) => {
                    let expiry =
                        expires.map_or(crate::store::SetExpiry::None, crate::store::SetExpiry::At);
                    ks.set(
                        key_bytes.clone(),
                        bytes_of(value),
                        expiry,
                        crate::store::SetCondition::Always,
                        false,
                        now,
                    )?;
                }
                (None, Some(fields)) if !fields.is_empty() => {
                    if current.is_some() {
                        ks.delete(std::slice::from_ref(&key_bytes), now);
                    }
                    let fields = fields
                        .into_iter()
                        .map(|(f, v)| (bytes_of(f), bytes_of(v)))
                        .collect();
                    ks.hset(key_bytes.clone(), fields, now)?;
                    if let Some(at) = expires {
                        ks.expire(key_bytes.clone(), at, ExpireCondition::ALWAYS, now);
                    }
                }
                _ => {
                    return Err(ApiError::bad_request(
                        "give exactly one of `value` (a string) and `fields` (a non-empty object)",
                    ));
                }
            }
            let shown = show(ks, &key_bytes, now)?.expect("just written");
            Ok((shown, current.is_none()))
        })
        .await;
    let ((session, version), created) = outcome?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(respond(status, session, version))
}

async fn patch_session(
    State(store): State<Sessions>,
    Path(key): Path<String>,
    headers: HeaderMap,
    body: Result<Json<PatchBody>, axum::extract::rejection::JsonRejection>,
) -> ApiResult {
    let Json(body) = body.map_err(|err| ApiError::bad_request(err.body_text()))?;
    let condition = Condition::from_headers(&headers);
    let key_bytes = Bytes::from(key.clone().into_bytes());
    let outcome = store
        .run(|ks, now| -> Result<_, ApiError> {
            condition.check(ks, &key_bytes, now)?;
            if !body.fields.is_empty() {
                let fields = body
                    .fields
                    .into_iter()
                    .map(|(f, v)| (bytes_of(f), bytes_of(v)))
                    .collect();
                ks.hset(key_bytes.clone(), fields, now)?;
            }
            if !body.delete_fields.is_empty() {
                let fields = body.delete_fields.into_iter().map(bytes_of).collect();
                ks.hdel(key_bytes.clone(), fields, now)?;
            }
            if let Some(ttl) = body.ttl_ms {
                ks.expire(
                    key_bytes.clone(),
                    deadline(ttl, now)?,
                    ExpireCondition::ALWAYS,
                    now,
                );
            }
            show(ks, &key_bytes, now)
        })
        .await;
    match outcome? {
        Some((session, version)) => Ok(respond(StatusCode::OK, session, version)),
        None => Err(ApiError::not_found(&key)),
    }
}

async fn delete_session(
    State(store): State<Sessions>,
    Path(key): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    let condition = Condition::from_headers(&headers);
    let key_bytes = Bytes::from(key.clone().into_bytes());
    store
        .run(|ks, now| {
            if current_version(ks, &key_bytes, now).is_none() {
                return Err(ApiError::not_found(&key));
            }
            condition.check(ks, &key_bytes, now)?;
            ks.delete(std::slice::from_ref(&key_bytes), now);
            Ok(StatusCode::NO_CONTENT.into_response())
        })
        .await
}

async fn get_field(
    State(store): State<Sessions>,
    Path((key, field)): Path<(String, String)>,
) -> ApiResult {
    let value = store
        .run(|ks, now| ks.hget(key.as_bytes(), field.as_bytes(), now))
        .await?;
    let value = value.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no field {field:?} in session {key:?}"),
        )
    })?;
    let value = String::from_utf8(value.to_vec()).map_err(|_| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "not_utf8",
            "the field is not UTF-8",
        )
    })?;
    Ok(Json(serde_json::json!({ "value": value })).into_response())
}

async fn put_field(
    State(store): State<Sessions>,
    Path((key, field)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Json<FieldBody>, axum::extract::rejection::JsonRejection>,
) -> ApiResult {
    let Json(body) = body.map_err(|err| ApiError::bad_request(err.body_text()))?;
    let condition = Condition::from_headers(&headers);
    let key_bytes = Bytes::from(key.into_bytes());
    let (session, version) = store
        .run(|ks, now| -> Result<_, ApiError> {
            condition.check(ks, &key_bytes, now)?;
            ks.hset(
                key_bytes.clone(),
                vec![(bytes_of(field), bytes_of(body.value))],
                now,
            )?;
            Ok(show(ks, &key_bytes, now)?.expect("just written"))
        })
        .await?;
    Ok(respond(StatusCode::OK, session, version))
}

async fn delete_field(
    State(store): State<Sessions>,
    Path((key, field)): Path<(String, String)>,
) -> ApiResult {
    let key_bytes = Bytes::from(key.clone().into_bytes());
    let removed = store
        .run(|ks, now| ks.hdel(key_bytes, vec![bytes_of(field.clone())], now))
        .await?;
    if removed == 0 {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no field {field:?} in session {key:?}"),
        ));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn touch_session(
    State(store): State<Sessions>,
    Path(key): Path<String>,
    body: Result<Json<TouchBody>, axum::extract::rejection::JsonRejection>,
) -> ApiResult {
    let Json(body) = body.map_err(|err| ApiError::bad_request(err.body_text()))?;
    let key_bytes = Bytes::from(key.clone().into_bytes());
    let shown = store
        .run(|ks, now| -> Result<_, ApiError> {
            let at = deadline(body.ttl_ms, now)?;
            if !ks.expire(key_bytes.clone(), at, ExpireCondition::ALWAYS, now) {
                return Ok(None);
            }
            show(ks, &key_bytes, now)
        })
        .await?;
    let (session, version) = shown.ok_or_else(|| ApiError::not_found(&key))?;
    Ok(respond(StatusCode::OK, session, version))
}

#[cfg(test)]
mod tests;
