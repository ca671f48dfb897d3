//! HTTP session API tests against the router, without sockets.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

use super::*;
use crate::sessions::Sessions;
use crate::store::{Limits, ManualClock, SessionStore};

const T0: u64 = 1_700_000_000_000;

struct Api {
    router: Router,
    clock: ManualClock,
}

impl Api {
    fn new() -> Self {
        let clock = ManualClock::at(T0);
        let limits = Limits {
            max_value_bytes: 64,
            ..Limits::default()
        };
        let store = SessionStore::new("node-a", limits, clock.clone());
        Api {
            router: router(Sessions::local(store)),
            clock,
        }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<serde_json::Value>,
    ) -> (StatusCode, Option<String>, serde_json::Value) {
        let mut request = Request::builder().method(method).uri(path);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = match body {
            Some(body) => request
                .header("content-type", "application/json")
                .body(Body::from(body.to_string())),
            None => request.body(Body::empty()),
        }
        .unwrap();
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let etag = response
            .headers()
            .get("etag")
            .map(|v| v.to_str().unwrap().to_string());
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let json = if bytes.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        (status, etag, json)
    }
}

fn code(json: &serde_json::Value) -> &str {
    json["error"]["code"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn create_read_replace_delete() {
    let api = Api::new();
    let path = "/v1/sessions/session:abc";
    let (status, _, json) = api.call("GET", path, &[], None).await;
    assert_eq!((status, code(&json)), (StatusCode::NOT_FOUND, "not_found"));

    let body = serde_json::json!({"fields": {"user": "ada", "cart": "3"}, "ttl_ms": 60000});
    let (status, etag, json) = api.call("PUT", path, &[], Some(body)).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(json["type"], "hash");
    assert_eq!(json["fields"]["user"], "ada");
    assert_eq!(json["ttl_ms"], 60000);
    let etag = etag.unwrap();
    assert_eq!(etag, format!("\"{}\"", json["version"].as_str().unwrap()));

    api.clock.advance(1_000);
    let (status, etag2, json) = api.call("GET", path, &[], None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(etag2.as_deref(), Some(etag.as_str()));
    assert_eq!(json["ttl_ms"], 59000);

    let body = serde_json::json!({"value": "plain"});
    let (status, _, json) = api.call("PUT", path, &[], Some(body)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (json["type"].as_str(), json["value"].as_str()),
        (Some("string"), Some("plain"))
    );
    assert_eq!(json["ttl_ms"], serde_json::Value::Null);

    let (status, _, _) = api.call("DELETE", path, &[], None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _, _) = api.call("DELETE", path, &[], None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn conditional_writes_use_the_version_as_etag() {
    let api = Api::new();
    let path = "/v1/sessions/s1";
    let create = serde_json::json!({"value": "v1"});
    let (status, etag, _) = api
        .call("PUT", path, &[("if-none-match", "*")], Some(create.clone()))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let etag = etag.unwrap();
    let (status, _, json) = api
        .call("PUT", path, &[("if-none-match", "*")], Some(create))
        .await;
    assert_eq!(
        (status, code(&json)),
        (StatusCode::PRECONDITION_FAILED, "precondition_failed")
    );

    let update = serde_json::json!({"value": "v2"});
    let (status, new_etag, _) = api
        .call("PUT", path, &[("if-match", &etag)], Some(update.clone()))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_ne!(new_etag.unwrap(), etag);
    // The old version no longer matches: a lost update is refused.
    let (status, _, _) = api
        .call("PUT", path, &[("if-match", &etag)], Some(update))
        .await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED);
    let (status, _, _) = api.call("DELETE", path, &[("if-match", &etag)], None).await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED);
    let (_, _, json) = api.call("GET", path, &[], None).await;
    assert_eq!(json["value"], "v2");
}

#[tokio::test]
async fn fields_patch_and_touch() {
    let api = Api::new();
    let (status, _, json) = api
        .call(
            "PUT",
            "/v1/sessions/h/fields/a",
            &[],
            Some(serde_json::json!({"value": "1"})),
        )
        .await;
    assert_eq!(
        (status, json["fields"]["a"].as_str()),
        (StatusCode::OK, Some("1"))
    );
    let patch = serde_json::json!({"fields": {"b": "2"}, "delete_fields": ["a"], "ttl_ms": 5000});
    let (status, _, json) = api.call("PATCH", "/v1/sessions/h", &[], Some(patch)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json["fields"], serde_json::json!({"b": "2"}));
    assert_eq!(json["ttl_ms"], 5000);
    let (status, _, json) = api.call("GET", "/v1/sessions/h/fields/b", &[], None).await;
    assert_eq!(
        (status, json["value"].as_str()),
        (StatusCode::OK, Some("2"))
    );
    let (status, _, json) = api
        .call(
            "POST",
            "/v1/sessions/h/touch",
            &[],
            Some(serde_json::json!({"ttl_ms": 90000})),
        )
        .await;
    assert_eq!(
        (status, json["ttl_ms"].as_u64()),
        (StatusCode::OK, Some(90000))
    );
    api.clock.advance(90_000);
    let (status, _, _) = api.call("GET", "/v1/sessions/h", &[], None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "expired");
    let (status, _, _) = api
        .call(
            "POST",
            "/v1/sessions/h/touch",
            &[],
            Some(serde_json::json!({"ttl_ms": 1})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = api
        .call("DELETE", "/v1/sessions/h/fields/b", &[], None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn bad_requests_get_json_errors() {
    let api = Api::new();
    let cases = [
        (
            "PUT",
            "/v1/sessions/k",
            Some(serde_json::json!({})),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "PUT",
            "/v1/sessions/k",
            Some(serde_json::json!({"value": "a", "fields": {"b": "c"}})),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "PUT",
            "/v1/sessions/k",
            Some(serde_json::json!({"value": 5})),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "PUT",
            "/v1/sessions/k",
            Some(serde_json::json!({"value": "a", "ttl": 5})),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "PUT",
            "/v1/sessions/k",
            Some(serde_json::json!({"value": "a", "ttl_ms": 0})),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "PUT",
            "/v1/sessions/k",
            Some(serde_json::json!({"value": "x".repeat(65)})),
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
        ),
        (
            "GET",
            "/v1/nothing",
            None,
            StatusCode::NOT_FOUND,
            "not_found",
        ),
    ];
    for (method, path, body, status, expected) in cases {
        let (got, _, json) = api.call(method, path, &[], body.clone()).await;
        assert_eq!(
            (got, code(&json)),
            (status, expected),
            "{method} {path} {body:?}"
        );
    }
    api.call(
        "PUT",
        "/v1/sessions/s",
        &[],
        Some(serde_json::json!({"value": "v"})),
    )
    .await;
    let (status, _, json) = api.call("GET", "/v1/sessions/s/fields/f", &[], None).await;
    assert_eq!((status, code(&json)), (StatusCode::CONFLICT, "wrong_type"));
}

#[tokio::test]
async fn openapi_document_lists_every_route() {
    let api = Api::new();
    let (status, _, doc) = api.call("GET", "/openapi.json", &[], None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths: Vec<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut expected = ROUTES.to_vec();
    expected.sort();
    let mut paths = paths;
    paths.sort();
    assert_eq!(paths, expected);
}
