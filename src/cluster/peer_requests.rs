//! Requests one node makes to another's HTTP API (an operator action
//! passed on with `?node=`, a dashboard panel), signed per request under
//! the cluster secret instead of carrying the caller's API key.
//!
//! The signature covers the sending and the receiving node, a timestamp, a
//! random nonce, the method, the path with its query, the content type and
//! correlation id headers, and the body's SHA-256; the receiver takes it
//! only when it names this node, within [`TTL_MS`] of its timestamp, and
//! only once (it remembers nonces until they are too old to pass anyway),
//! so a request seen on the wire can be neither replayed (to this node or
//! another) nor altered. Senders follow no redirect. The answer is
//! signed too, bound to the request's nonce, its status and its body, so a
//! forged or swapped answer is refused by the node that asked.

use std::collections::HashMap;
use std::sync::Mutex;

use hmac::Mac;
use sha2::{Digest, Sha256};

/// The request's signature: `<node>.<unix ms>.<nonce hex>.<mac hex>`.
pub const HEADER: &str = "x-valueverse-peer";
/// The answer's signature: `<mac hex>`.
pub const REPLY_HEADER: &str = "x-valueverse-peer-reply";
/// How far a request's timestamp may be from the receiver's clock.
pub const TTL_MS: i64 = 30_000;
/// Nonces remembered at most; past it (after dropping the expired ones)
/// peer requests are refused rather than remembered unboundedly.
const MAX_REMEMBERED: usize = 100_000;
/// Largest body a peer request may carry.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Why a peer request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerRefusal {
    #[error("this node has no cluster secret")]
    NoSecret,
    #[error("malformed peer signature")]
    Malformed,
    #[error("the peer signature is older or newer than {TTL_MS} ms")]
    Stale,
    #[error("bad peer signature")]
    BadSignature,
    #[error("this peer request was already taken (a replay)")]
    Replayed,
    #[error("too many peer requests to remember; try again")]
    Busy,
}

/// Signs this node's peer requests and checks those of others.
pub struct PeerRequests {
    node: String,
    secret: Option<String>,
    /// Nonces taken, with the time after which they can no longer pass.
    seen: Mutex<HashMap<[u8; 16], i64>>,
}

/// What a peer request's signature covers besides who and when.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a str,
    /// As the receiver sees it on the request line.
    pub path_and_query: &'a str,
    /// The `content-type` and `x-correlation-id` headers ("" when absent).
    pub content_type: &'a str,
    pub correlation_id: &'a str,
    pub body: &'a [u8],
}

/// The sending and the receiving node.
struct Who<'a> {
    from: &'a str,
    to: &'a str,
}

/// A signed request, as the receiver accepted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    pub node: String,
    pub nonce: String,
}

impl PeerRequests {
    /// `secret` is `None` on a cluster of one: nothing is signed or taken.
    pub fn new(node: &str, secret: Option<String>) -> PeerRequests {
        PeerRequests {
            node: node.to_owned(),
            secret,
            seen: Mutex::new(HashMap::new()),
        }
    }

    fn mac(
        secret: &str,
        who: &Who<'_>,
        at: &str,
        nonce: &str,
        request: &Request<'_>,
    ) -> hmac::Hmac<Sha256> {
        let digest = Sha256::digest(request.body);
        super::signed(
            secret,
            &[
                b"valueverse-peer-request-v2",
                who.from.as_bytes(),
                who.to.as_bytes(),
                at.as_bytes(),
                nonce.as_bytes(),
                request.method.as_bytes(),
                request.path_and_query.as_bytes(),
                request.content_type.as_bytes(),
                request.correlation_id.as_bytes(),
                &digest,
            ],
        )
    }

    /// The [`HEADER`] value for a request to the node `to`, and its
    /// nonce; `None` without a secret.
    pub fn sign(&self, to: &str, request: &Request<'_>, now_ms: i64) -> Option<(String, String)> {
        let secret = self.secret.as_ref()?;
        let nonce = hex::encode(rand::random::<[u8; 16]>());
        let at = now_ms.to_string();
        let who = Who {
            from: &self.node,
            to,
        };
        let mac = Self::mac(secret, &who, &at, &nonce, request);
        let header = format!(
            "{}.{at}.{nonce}.{}",
            self.node,
            hex::encode(mac.finalize().into_bytes())
        );
        Some((header, nonce))
    }

    /// Checks a request's [`HEADER`] value against what it asks and against
    /// this node's name; takes its nonce, so the same request is never
    /// accepted twice.
    pub fn verify(
        &self,
        header: &str,
        request: &Request<'_>,
        now_ms: i64,
    ) -> Result<Signed, PeerRefusal> {
        let secret = self.secret.as_ref().ok_or(PeerRefusal::NoSecret)?;
        // The node name may hold dots: the last three fields are fixed.
        let mut fields = header.rsplitn(4, '.');
        let (Some(mac), Some(nonce), Some(at), Some(node)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(PeerRefusal::Malformed);
        };
        let at_ms: i64 = at.parse().map_err(|_| PeerRefusal::Malformed)?;
        let mac = hex::decode(mac).map_err(|_| PeerRefusal::Malformed)?;
        let nonce_bytes: [u8; 16] = hex::decode(nonce)
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or(PeerRefusal::Malformed)?;
        if now_ms.abs_diff(at_ms) > TTL_MS as u64 {
            return Err(PeerRefusal::Stale);
        }
        let who = Who {
            from: node,
            to: &self.node,
        };
        Self::mac(secret, &who, at, nonce, request)
            .verify_slice(&mac)
            .map_err(|_| PeerRefusal::BadSignature)?;
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= MAX_REMEMBERED {
            seen.retain(|_, until| *until >= now_ms);
            if seen.len() >= MAX_REMEMBERED {
                return Err(PeerRefusal::Busy);
            }
        }
        if seen
            .insert(nonce_bytes, at_ms.saturating_add(TTL_MS))
            .is_some()
        {
            return Err(PeerRefusal::Replayed);
        }
        Ok(Signed {
            node: node.to_owned(),
            nonce: nonce.to_owned(),
        })
    }

    /// The [`REPLY_HEADER`] value for the answer to the request `nonce`.
    pub fn sign_reply(&self, nonce: &str, status: u16, body: &[u8]) -> Option<String> {
        let secret = self.secret.as_ref()?;
        let mac = Self::reply_mac(secret, nonce, status, body);
        Some(hex::encode(mac.finalize().into_bytes()))
    }

    /// Whether an answer's [`REPLY_HEADER`] value is the one its receiver
    /// would have signed for the request `nonce`.
    pub fn reply_is_good(&self, nonce: &str, status: u16, body: &[u8], header: &str) -> bool {
        let (Some(secret), Ok(mac)) = (self.secret.as_ref(), hex::decode(header)) else {
            return false;
        };
        Self::reply_mac(secret, nonce, status, body)
            .verify_slice(&mac)
            .is_ok()
    }

    fn reply_mac(secret: &str, nonce: &str, status: u16, body: &[u8]) -> hmac::Hmac<Sha256> {
        let digest = Sha256::digest(body);
        super::signed(
            secret,
            &[
                b"valueverse-peer-reply-v1",
                nonce.as_bytes(),
                &status.to_be_bytes(),
                &digest,
            ],
        )
    }
}

impl std::fmt::Debug for PeerRequests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerRequests")
            .field("node", &self.node)
            .field("secret", &self.secret.as_ref().map(|_| "***"))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "a cluster secret of some length";

    fn peers(node: &str) -> PeerRequests {
        PeerRequests::new(node, Some(SECRET.into()))
    }

    fn request<'a>(method: &'a str, path: &'a str, body: &'a [u8]) -> Request<'a> {
        Request {
            method,
            path_and_query: path,
            content_type: "application/json",
            correlation_id: "c-1",
            body,
        }
    }

    #[test]
    fn a_signed_request_passes_once_only_as_signed_and_only_where_sent() {
        let (n1, n2, n3) = (peers("n1.eu"), peers("n2"), peers("n3"));
        let now = 1_800_000_000_000;
        let path = "/api/v1/actors/architect/m-1/crash?node=n2";
        let (header, nonce) = n1.sign("n2", &request("POST", path, b"{}"), now).unwrap();
        // Altered in any part: refused.
        let other_correlation = Request {
            correlation_id: "c-2",
            ..request("POST", path, b"{}")
        };
        for altered in [
            request("PUT", path, b"{}"),
            request("POST", "/api/v1/actors/architect/m-2/crash?node=n2", b"{}"),
            request("POST", path, b"{\"reason\":\"x\"}"),
            other_correlation,
        ] {
            assert_eq!(
                n2.verify(&header, &altered, now),
                Err(PeerRefusal::BadSignature)
            );
        }
        // Sent to n2: no good on n3.
        assert_eq!(
            n3.verify(&header, &request("POST", path, b"{}"), now),
            Err(PeerRefusal::BadSignature)
        );
        let signed = n2
            .verify(&header, &request("POST", path, b"{}"), now + 1)
            .unwrap();
        assert_eq!(signed.node, "n1.eu");
        assert_eq!(signed.nonce, nonce);
        // Replayed: refused.
        assert_eq!(
            n2.verify(&header, &request("POST", path, b"{}"), now + 2),
            Err(PeerRefusal::Replayed)
        );
        // Too old, too far in the future, or under another secret: refused.
        let (old, _) = n1
            .sign("n2", &request("GET", "/x", b""), now - TTL_MS - 1)
            .unwrap();
        assert_eq!(
            n2.verify(&old, &request("GET", "/x", b""), now),
            Err(PeerRefusal::Stale)
        );
        let (far, _) = n1.sign("n2", &request("GET", "/x", b""), i64::MIN).unwrap();
        assert_eq!(
            n2.verify(&far, &request("GET", "/x", b""), now),
            Err(PeerRefusal::Stale)
        );
        let stranger = PeerRequests::new("n9", Some("another secret, just as long".into()));
        let (forged, _) = stranger
            .sign("n2", &request("GET", "/x", b""), now)
            .unwrap();
        assert_eq!(
            n2.verify(&forged, &request("GET", "/x", b""), now),
            Err(PeerRefusal::BadSignature)
        );
        for garbage in ["", "...", "n1.now.nonce.mac", "n1.1.zz.00"] {
            assert_eq!(
                n2.verify(garbage, &request("GET", "/x", b""), now),
                Err(PeerRefusal::Malformed),
                "{garbage}"
            );
        }
        // Without a secret nothing passes.
        let solo = PeerRequests::new("solo", None);
        assert!(solo.sign("n2", &request("GET", "/x", b""), now).is_none());
        assert_eq!(
            solo.verify(&header, &request("POST", path, b"{}"), now),
            Err(PeerRefusal::NoSecret)
        );
    }

    #[test]
    fn an_answer_is_bound_to_its_request_status_and_body() {
        let (n1, n2) = (peers("n1"), peers("n2"));
        let reply = n2.sign_reply("abcd", 200, b"{\"ok\":1}").unwrap();
        assert!(n1.reply_is_good("abcd", 200, b"{\"ok\":1}", &reply));
        assert!(!n1.reply_is_good("abce", 200, b"{\"ok\":1}", &reply));
        assert!(!n1.reply_is_good("abcd", 500, b"{\"ok\":1}", &reply));
        assert!(!n1.reply_is_good("abcd", 200, b"{\"ok\":2}", &reply));
        assert!(!n1.reply_is_good("abcd", 200, b"{\"ok\":1}", "zz"));
    }
}
