//! What replication needs from membership: the view of the cluster, and a way to publish
//! this agent's advertisement. Gossip in production; an in-memory board in simulations.

use async_trait::async_trait;
use tandem_cluster::gossip::GossipNode;
use tandem_common::member::Member;
use tandem_common::schema::NodeAdvert;

/// A change to this agent's advertisement.
pub type AdvertChange = Box<dyn FnOnce(&mut NodeAdvert) + Send>;

#[async_trait]
pub trait Membership: Send + Sync + 'static {
    /// Every known node, as this agent sees it now.
    async fn members(&self) -> Vec<Member>;
    /// Changes and republishes this agent's advertisement.
    async fn update(&self, change: AdvertChange);
}

#[async_trait]
impl Membership for GossipNode {
    async fn members(&self) -> Vec<Member> {
        GossipNode::members(self).await
    }

    async fn update(&self, change: AdvertChange) {
        GossipNode::update(self, change).await;
    }
}
