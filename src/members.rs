//! `tandem members`: the cluster as one node's admin endpoint sees it.

use std::time::Duration;

use anyhow::{Context, bail};
use tandem_common::member::{MembersResponse, members_table};

use crate::cli::MembersArgs;

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
    let base = admin_base_url(admin);
    let url = format!("{base}/v1/members");
    let response = admin_client()?
        .get(&url)
        .send()
        .await
        .with_context(|| format!("cannot reach the admin endpoint {base}"))?;
    let status = response.status();
    if !status.is_success() {
        bail!("{url} answered HTTP {status}");
    }
    response
        .json()
        .await
        .with_context(|| format!("{url} did not answer with a members list"))
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
