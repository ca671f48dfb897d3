//! `tandem keyring`: a node's gossip keyring through its admin endpoint.

use anyhow::{Context, bail};
use tandem_cluster::admin::KeyringRequest;
use tandem_cluster::keyring::{ClusterKey, KeyringView};
use tandem_common::secret::read_secret_file;

use crate::cli::{KeyringAction, KeyringArgs, PlainChoice};
use crate::members::{admin_base_url, admin_client};

pub async fn run(args: KeyringArgs) -> anyhow::Result<()> {
    let base = admin_base_url(&args.admin);
    let token = args
        .admin_token_file
        .as_deref()
        .map(|path| read_secret_file("admin token", path))
        .transpose()?;
    let (path, body) = match args.action {
        KeyringAction::List => ("", None),
        KeyringAction::Install { key_file } => {
            let key = ClusterKey::read_file(&key_file)?.remove(0);
            let body = KeyringRequest {
                key: Some(key.encode()),
                ..KeyringRequest::default()
            };
            ("/install", Some(body))
        }
        KeyringAction::Use { id } => ("/use", Some(with_id(id))),
        KeyringAction::Remove { id } => ("/remove", Some(with_id(id))),
        KeyringAction::Plain { choice } => {
            let body = KeyringRequest {
                accept: Some(matches!(choice, PlainChoice::Accept)),
                ..KeyringRequest::default()
            };
            ("/plain", Some(body))
        }
    };
    let url = format!("{base}/v1/keyring{path}");
    let client = admin_client()?;
    let mut request = match &body {
        Some(body) => client.post(&url).json(body),
        None => client.get(&url),
    };
    if let Some(token) = &token {
        request = request.bearer_auth(token);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("cannot reach the admin endpoint {base}"))?;
    let status = response.status();
    if !status.is_success() {
        let reason = response.text().await.unwrap_or_default();
        bail!("{url} answered HTTP {status}: {}", reason.trim());
    }
    let view: KeyringView = response
        .json()
        .await
        .with_context(|| format!("{url} did not answer with a keyring"))?;
    for key in &view.keys {
        println!("{}{}", key.id, if key.primary { "  primary" } else { "" });
    }
    if view.keys.is_empty() {
        println!("no keys: gossip is not sealed");
    }
    if view.accept_plain {
        println!("unsealed gossip is accepted");
    }
    Ok(())
}

fn with_id(id: String) -> KeyringRequest {
    KeyringRequest {
        id: Some(id),
        ..KeyringRequest::default()
    }
}
