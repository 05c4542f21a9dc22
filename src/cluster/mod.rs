//! The cluster layer: the wire format between nodes ([`codec`]), the TCP
//! links that carry it ([`transport`]), and who owns which agent instance
//! ([`placement`]). Membership and routing through `AgentRef` build on
//! these.

pub mod bench;
pub mod codec;
pub mod placement;
pub mod transport;
