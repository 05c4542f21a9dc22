//! The cluster layer: who is in the cluster ([`membership`]), the wire
//! format between nodes ([`codec`]), the TCP links that carry it
//! ([`transport`]), and who owns which agent instance ([`placement`]).
//! [`router`] sends an `AgentRef`'s messages to the owner's node.

pub mod bench;
pub mod codec;
pub mod launch;
pub mod membership;
pub mod node;
pub mod placement;
pub mod router;
pub mod transport;
