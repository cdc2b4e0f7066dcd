//! Rebuild news heard over gossip (`shoal/rebuild/1`): where it goes.
//!
//! A member holding a tag at its old digest during a rebuild, or switching it, tells every other
//! member with a [`shoal_proto::gossip::TagNews`]. The swarm task judges it like threat scores
//! (members only, decoded and checked by `proto`, a token bucket per author shared in shape with
//! `p2p::threat`) and hands what passes to the [`RebuildNews`] sink (the node's tag holds), which
//! says whether it changed anything: only then is it forwarded.

use libp2p::PeerId;
use shoal_proto::gossip::TagNews;

/// Where rebuild news from peers goes.
pub trait RebuildNews: Send + Sync {
    /// Applies what `author` published; true when it was newer than what this node had. Must not
    /// block: it runs on the swarm task.
    fn received(&self, author: PeerId, news: TagNews) -> bool;
}
