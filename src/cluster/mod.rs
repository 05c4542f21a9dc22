//! The cluster layer: who is in the cluster ([`membership`]), the wire
//! format between nodes ([`codec`]), the TCP links that carry it
//! ([`transport`]), and who owns which agent instance ([`placement`]).
//! Routing through `AgentRef`, leases and `valueverse node` build on these.

pub mod bench;
pub mod codec;
pub mod membership;
pub mod placement;
pub mod transport;
