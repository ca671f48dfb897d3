//! `tandem members`: the cluster as one node's admin endpoint sees it.

use std::time::Duration;

use anyhow::{Context, bail};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tandem_common::member::{MembersResponse, members_table};
use tandem_common::secret::read_secret_file;

use crate::cli::{AdminTarget, MembersArgs};

/// Accepts `http://host:port`, `https://…` or a bare `host:port`; no trailing slash.
pub fn admin_base_url(admin: &str) -> String {
    let admin = admin.trim_end_matches('/');
    if admin.starts_with("http://") || admin.starts_with("https://") {
        admin.to_string()
    } else {
        format!("http://{admin}")
    }
}

/// The HTTP client of the commands that talk to an admin endpoint.
pub fn admin_client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .context("HTTP client")
}

/// Fetches `/v1/members` from an admin endpoint.
pub async fn fetch(admin: &str) -> anyhow::Result<MembersResponse> {
    AdminClient::open(admin)?.get("/v1/members").await
}

/// Calls to one node's admin endpoint, with its admin token when one is given.
pub struct AdminClient {
    base: String,
    token: Option<String>,
    client: reqwest::Client,
}

impl AdminClient {
    /// A client for read-only calls.
    pub fn open(admin: &str) -> anyhow::Result<Self> {
        Ok(AdminClient {
            base: admin_base_url(admin),
            token: None,
            client: admin_client()?,
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
        self.call(self.client.get(format!("{}{path}", self.base)), path)
            .await
    }

    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> anyhow::Result<T> {
        let request = self.client.post(format!("{}{path}", self.base)).json(body);
        self.call(request, path).await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        mut request: reqwest::RequestBuilder,
        path: &str,
    ) -> anyhow::Result<T> {
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let url = format!("{}{path}", self.base);
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach the admin endpoint {}", self.base))?;
        let status = response.status();
        if !status.is_success() {
            let reason = response.text().await.unwrap_or_default();
            bail!("{url} answered HTTP {status}: {}", reason.trim());
        }
        response
            .json()
            .await
            .with_context(|| format!("{url} did not answer as expected"))
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
        assert_eq!(admin_base_url("127.0.0.1:7951"), "http://127.0.0.1:7951");
        assert_eq!(admin_base_url("http://h:1/"), "http://h:1");
        assert_eq!(admin_base_url("https://h"), "https://h");
    }
}
