//! `tandem members`: the cluster as one node's admin endpoint sees it.

use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, header};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tandem_common::member::{MembersResponse, members_table};
use tandem_common::secret::read_secret_file;

use crate::cli::{AdminTarget, MembersArgs};

/// Accepts `http://host:port` or a bare `host:port`; no trailing slash. Admin endpoints
/// speak plain HTTP (on loopback or a private network by default).
pub fn admin_base_url(admin: &str) -> anyhow::Result<String> {
    let admin = admin.trim_end_matches('/');
    if admin.starts_with("https://") {
        bail!("{admin}: admin endpoints speak plain HTTP; give http://HOST:PORT");
    }
    Ok(if admin.starts_with("http://") {
        admin.to_string()
    } else {
        format!("http://{admin}")
    })
}

/// How long one call to an admin endpoint may take, answer included.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Fetches `/v1/members` from an admin endpoint.
pub async fn fetch(admin: &str) -> anyhow::Result<MembersResponse> {
    AdminClient::open(admin)?.get("/v1/members").await
}

/// Calls to one node's admin endpoint, with its admin token when one is given.
pub struct AdminClient {
    base: String,
    token: Option<String>,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl AdminClient {
    /// A client for read-only calls.
    pub fn open(admin: &str) -> anyhow::Result<Self> {
        Ok(AdminClient {
            base: admin_base_url(admin)?,
            token: None,
            client: Client::builder(TokioExecutor::new()).build_http(),
        })
    }

    /// A client carrying the target's admin token, if it has one.
    pub fn new(target: &AdminTarget) -> anyhow::Result<Self> {
        let token = target
            .admin_token_file
            .as_deref()
            .map(|path| read_secret_file("admin token", path))
            .transpose()?;
        Ok(AdminClient {
            token,
            ..AdminClient::open(&target.admin)?
        })
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.call(Method::GET, path, Bytes::new()).await
    }

    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> anyhow::Result<T> {
        let body = serde_json::to_vec(body).context("request body")?;
        self.call(Method::POST, path, body.into()).await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> anyhow::Result<T> {
        let url = format!("{}{path}", self.base);
        let mut request = Request::builder().method(method).uri(&url);
        if !body.is_empty() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        if let Some(token) = &self.token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(Full::new(body))
            .with_context(|| format!("invalid admin URL {url}"))?;
        let unreachable = || format!("cannot reach the admin endpoint {}", self.base);
        let (status, body) = tokio::time::timeout(CALL_TIMEOUT, async {
            let response = self.client.request(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, body))
        })
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {CALL_TIMEOUT:?}"))
        .with_context(unreachable)?
        .with_context(unreachable)?;
        if !status.is_success() {
            let reason = String::from_utf8_lossy(&body);
            bail!("{url} answered HTTP {status}: {}", reason.trim());
        }
        serde_json::from_slice(&body).with_context(|| format!("{url} did not answer as expected"))
    }
}

pub async fn run(args: MembersArgs) -> anyhow::Result<()> {
    let response = fetch(&args.admin).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&response)?);
        return Ok(());
    }
    print!("{}", members_table(&response.members));
    let live = response.members.iter().filter(|m| m.live).count();
    println!(
        "\ncluster {:?} as seen by {}: {live} live, {} dead",
        response.cluster,
        response.self_id,
        response.members.len() - live
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_urls() {
        assert_eq!(
            admin_base_url("127.0.0.1:7951").unwrap(),
            "http://127.0.0.1:7951"
        );
        assert_eq!(admin_base_url("http://h:1/").unwrap(), "http://h:1");
        assert!(admin_base_url("https://h").is_err());
    }
}
