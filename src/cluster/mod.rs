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

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// HMAC-SHA256 keyed by the cluster secret over `parts` in order: what a
/// node signs to prove it holds the secret (leases, the dashboard's peer
/// requests).
pub(crate) fn signed(secret: &str, parts: &[&[u8]]) -> Hmac<Sha256> {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac
}
