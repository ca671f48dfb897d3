//! The one write path of every front end: run a command on the store (its writes go to
//! the partner's link as the hold of the store ends), then, in sync mode, wait for the
//! partner before the front end answers.

use crate::replication::{Replicated, Replicator};
use crate::store::{Keyspace, Outcome, SessionStore};

/// The store and its replication. Cheap to clone.
#[derive(Clone)]
pub struct Sessions {
    pub store: SessionStore,
    pub replicator: Replicator,
}

impl Sessions {
    pub fn new(store: SessionStore, replicator: Replicator) -> Self {
        Sessions { store, replicator }
    }

    /// Sessions that are never replicated (tests of the front ends).
    pub fn local(store: SessionStore) -> Self {
        let replicator = Replicator::disabled(store.clone(), "local");
        Sessions { store, replicator }
    }

    /// Runs one command atomically and replicates what it wrote (in sync mode, before
    /// returning).
    pub async fn run<T>(&self, command: impl FnOnce(&mut Keyspace, u64) -> T) -> T {
        self.run_replicated(command).await.0
    }

    /// As [`Sessions::run`], also saying how the writes reached the partner (`None`: the
    /// command wrote nothing).
    pub async fn run_replicated<T>(
        &self,
        command: impl FnOnce(&mut Keyspace, u64) -> T,
    ) -> (T, Option<Replicated>) {
        // A script holds the keyspace: wait for it here rather than block on the lock.
        self.store.gate().idle().await;
        let Outcome {
            value, recorded, ..
        } = self.store.run(command);
        let replicated = if recorded {
            Some(self.replicator.replicated().await)
        } else {
            None
        };
        (value, replicated)
    }
}
