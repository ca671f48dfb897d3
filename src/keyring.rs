//! `tandem keyring`: a node's gossip keyring through its admin endpoint.

use tandem_cluster::admin::KeyringRequest;
use tandem_cluster::keyring::{ClusterKey, KeyringView};

use crate::cli::{KeyringAction, KeyringArgs, PlainChoice};
use crate::members::AdminClient;

pub async fn run(args: KeyringArgs) -> anyhow::Result<()> {
    let admin = AdminClient::new(&args.target)?;
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
    let path = format!("/v1/keyring{path}");
    let view: KeyringView = match &body {
        Some(body) => admin.post(&path, body).await?,
        None => admin.get(&path).await?,
    };
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
