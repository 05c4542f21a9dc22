//! The secure channel under every link: the Noise protocol framework
//! (`Noise_NNpsk0_25519_AESGCM_SHA256`, by the `snow` crate) keyed by a
//! pre-shared key derived from the cluster secret.
//!
//! ```text
//! initiator                                   responder
//!   -> psk, e      Hello  (encrypted under the PSK: a peer without the
//!                          secret is refused at its first message)
//!   <- e, ee       Welcome (or Refused, with the reason)
//!   -> record 0    empty  (key confirmation: proves the initiator holds
//!                          its ephemeral key, so a replayed first message
//!                          opens nothing)
//! ```
//!
//! Then every byte both ways travels in records, `u16` length + AES-GCM
//! ciphertext under per-direction keys and counter nonces: a record
//! replayed, reordered, reflected or altered fails to decrypt and ends the
//! link. The handshake hash binds both hellos (names, listen addresses,
//! versions), so what a peer said it is cannot be swapped in transit.
//!
//! Before the handshake ends nothing is trusted: each handshake message is
//! at most [`MAX_HANDSHAKE_BYTES`], read into a fixed buffer.

use std::net::SocketAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The Noise pattern and primitives every node speaks.
const NOISE_PARAMS: &str = "Noise_NNpsk0_25519_AESGCM_SHA256";
/// Mixed into the handshake hash: what this channel is for.
const PROLOGUE: &[u8] = b"valueverse cluster link";
/// Largest handshake message a node reads or writes.
pub const MAX_HANDSHAKE_BYTES: usize = 1024;
/// Time the initiator has to send its whole first message.
pub const FIRST_MESSAGE_WITHIN: std::time::Duration = std::time::Duration::from_secs(1);
/// Noise's limit on one message, tag included.
const MAX_RECORD_BYTES: usize = 65_535;
const TAG_BYTES: usize = 16;
/// Plaintext bytes one record carries at most.
pub const MAX_RECORD_PLAIN: usize = MAX_RECORD_BYTES - TAG_BYTES;

/// Who a node says it is, inside the encrypted handshake. Its layout
/// outlives releases: a later one may only append fields, which this one
/// skips (a hello is read with trailing bytes allowed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The highest protocol version the node speaks.
    pub version: u16,
    pub node: String,
    /// Where the node's transport listens: an accepted link is kept under
    /// this address, so a pair of nodes shares one connection.
    pub listen: SocketAddr,
    /// The lowest protocol version it speaks.
    pub min_version: u16,
    /// `(message id, version)` of each agent kind it hosts.
    pub messages: Vec<(u32, u16)>,
}

/// Most message kinds a hello may list.
pub const MAX_HELLO_MESSAGES: usize = 64;

/// The responder's answer to a [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Welcome {
    Accepted(Hello),
    Refused { reason: String },
}

/// Why a channel could not be opened or used.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("handshake message of {size} bytes exceeds the limit of {MAX_HANDSHAKE_BYTES}")]
    HandshakeTooLarge { size: usize },
    #[error("the peer does not hold the cluster secret (or sent a malformed handshake)")]
    BadSecret,
    #[error("malformed handshake: {0}")]
    Malformed(String),
    #[error("refused by the peer: {0}")]
    Refused(String),
    #[error("record failed authentication")]
    BadRecord,
    #[error("no first handshake message within {FIRST_MESSAGE_WITHIN:?}")]
    Late,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The link key: HKDF-SHA256 of the cluster secret, so the secret itself
/// is never a cipher key and other uses of it (leases, peer requests) do
/// not share this one.
pub fn link_key(secret: &[u8]) -> [u8; 32] {
    let hkdf = hkdf::Hkdf::<sha2::Sha256>::new(Some(b"valueverse-cluster"), secret);
    let mut key = [0u8; 32];
    hkdf.expand(b"link psk v1", &mut key)
        .expect("32 bytes is a valid HKDF-SHA256 length");
    key
}

/// A fresh Noise handshake for one side.
fn handshake_state(psk: &[u8; 32], initiator: bool) -> Result<snow::HandshakeState, ChannelError> {
    let params = NOISE_PARAMS
        .parse()
        .map_err(|error: snow::Error| ChannelError::Malformed(error.to_string()))?;
    let builder = snow::Builder::new(params)
        .prologue(PROLOGUE)
        .and_then(|builder| builder.psk(0, psk));
    let state = if initiator {
        builder.and_then(|builder| builder.build_initiator())
    } else {
        builder.and_then(|builder| builder.build_responder())
    };
    state.map_err(|error| ChannelError::Malformed(error.to_string()))
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, ChannelError> {
    bincode::serde::encode_to_vec(value, handshake_config())
        .map_err(|error| ChannelError::Malformed(error.to_string()))
}

/// Decodes a handshake message; bytes after it are what a later release
/// appended (inside the authenticated, size-capped payload), skipped.
fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, ChannelError> {
    let (value, _used) = bincode::serde::decode_from_slice(bytes, handshake_config())
        .map_err(|error| ChannelError::Malformed(error.to_string()))?;
    Ok(value)
}

/// bincode limited to a handshake message, so a length inside one cannot
/// make the decoder allocate more.
fn handshake_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_HANDSHAKE_BYTES>()
}

/// Writes one handshake message: `u16` length, then the Noise message.
async fn write_message(
    writer: &mut (impl AsyncWrite + Unpin),
    message: &[u8],
) -> Result<(), ChannelError> {
    let mut bytes = Vec::with_capacity(2 + message.len());
    bytes.extend_from_slice(&(message.len() as u16).to_be_bytes());
    bytes.extend_from_slice(message);
    writer.write_all(&bytes).await?;
    writer.flush().await?;
    Ok(())
}

/// Reads one handshake message into `buffer` (fixed size: nothing a peer
/// declares makes it grow); answers its length.
async fn read_message(
    reader: &mut (impl AsyncRead + Unpin),
    buffer: &mut [u8; MAX_HANDSHAKE_BYTES],
) -> Result<usize, ChannelError> {
    let mut length = [0u8; 2];
    reader.read_exact(&mut length).await?;
    let size = usize::from(u16::from_be_bytes(length));
    if size > MAX_HANDSHAKE_BYTES {
        return Err(ChannelError::HandshakeTooLarge { size });
    }
    reader.read_exact(&mut buffer[..size]).await?;
    Ok(size)
}

/// Encrypts `value` as the next handshake message and sends it.
async fn send_payload<T: Serialize>(
    writer: &mut (impl AsyncWrite + Unpin),
    noise: &mut snow::HandshakeState,
    value: &T,
) -> Result<(), ChannelError> {
    let mut message = [0u8; MAX_HANDSHAKE_BYTES];
    let size = noise
        .write_message(&encode(value)?, &mut message)
        .map_err(|error| ChannelError::Malformed(error.to_string()))?;
    write_message(writer, &message[..size]).await
}

/// Reads the next handshake message and decrypts it: a peer under another
/// key fails here.
async fn receive_payload<T: for<'de> Deserialize<'de>>(
    reader: &mut (impl AsyncRead + Unpin),
    noise: &mut snow::HandshakeState,
) -> Result<T, ChannelError> {
    let mut received = [0u8; MAX_HANDSHAKE_BYTES];
    let size = read_message(reader, &mut received).await?;
    let mut payload = [0u8; MAX_HANDSHAKE_BYTES];
    let read = noise
        .read_message(&received[..size], &mut payload)
        .map_err(|_| ChannelError::BadSecret)?;
    decode(&payload[..read])
}

/// Opens the channel as the side that dialed: answers the responder's
/// hello and the channel's two ends. `check` vets the responder's hello
/// (its name, its version): an `Err` refuses it.
pub async fn initiate(
    reader: &mut (impl AsyncRead + Unpin),
    writer: &mut (impl AsyncWrite + Unpin),
    psk: &[u8; 32],
    hello: &Hello,
    check: impl FnOnce(&Hello) -> Result<(), String>,
) -> Result<(Hello, Sealer, Opener), ChannelError> {
    let mut noise = handshake_state(psk, true)?;
    send_payload(writer, &mut noise, hello).await?;
    let theirs = match receive_payload::<Welcome>(reader, &mut noise).await? {
        Welcome::Accepted(theirs) => theirs,
        Welcome::Refused { reason } => return Err(ChannelError::Refused(reason)),
    };
    check(&theirs).map_err(ChannelError::Refused)?;
    let transport = noise
        .into_stateless_transport_mode()
        .map_err(|error| ChannelError::Malformed(error.to_string()))?;
    let transport = Arc::new(transport);
    let mut sealer = Sealer {
        transport: Arc::clone(&transport),
        nonce: 0,
    };
    // Key confirmation: record 0, empty.
    let mut confirm = Vec::with_capacity(2 + TAG_BYTES);
    sealer.seal(&[], &mut confirm)?;
    writer.write_all(&confirm).await?;
    writer.flush().await?;
    Ok((theirs, sealer, Opener::new(transport)))
}

/// Opens the channel as the side that accepted: answers the initiator's
/// hello and the channel's two ends. `check` vets the initiator's hello:
/// an `Err` is sent back as the refusal's reason.
pub async fn respond(
    reader: &mut (impl AsyncRead + Unpin),
    writer: &mut (impl AsyncWrite + Unpin),
    psk: &[u8; 32],
    hello: &Hello,
    check: impl FnOnce(&Hello) -> Result<(), String>,
) -> Result<(Hello, Sealer, Opener), ChannelError> {
    let mut noise = handshake_state(psk, false)?;
    // An initiator sends its first message at once: one that dribbles it
    // holds a handshake place for nothing.
    let theirs: Hello =
        tokio::time::timeout(FIRST_MESSAGE_WITHIN, receive_payload(reader, &mut noise))
            .await
            .map_err(|_| ChannelError::Late)??;
    let verdict = check(&theirs);
    let welcome = match &verdict {
        Ok(()) => Welcome::Accepted(hello.clone()),
        Err(reason) => Welcome::Refused {
            reason: reason.clone(),
        },
    };
    send_payload(writer, &mut noise, &welcome).await?;
    if let Err(reason) = verdict {
        return Err(ChannelError::Refused(format!("refused the peer: {reason}")));
    }
    let transport = Arc::new(
        noise
            .into_stateless_transport_mode()
            .map_err(|error| ChannelError::Malformed(error.to_string()))?,
    );
    // The initiator's key confirmation: exactly one empty record.
    let mut length = [0u8; 2];
    reader.read_exact(&mut length).await?;
    let size = usize::from(u16::from_be_bytes(length));
    if size != TAG_BYTES {
        return Err(ChannelError::BadRecord);
    }
    let mut record = [0u8; TAG_BYTES];
    reader.read_exact(&mut record).await?;
    let mut nothing = [0u8; TAG_BYTES];
    transport
        .read_message(0, &record, &mut nothing)
        .map_err(|_| ChannelError::BadRecord)?;
    let mut opener = Opener::new(Arc::clone(&transport));
    opener.nonce = 1;
    Ok((
        theirs,
        Sealer {
            transport,
            nonce: 0,
        },
        opener,
    ))
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("nonce", &self.nonce)
            .finish()
    }
}

impl std::fmt::Debug for Opener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opener")
            .field("nonce", &self.nonce)
            .finish()
    }
}

/// The sending end: plaintext in, records out.
pub struct Sealer {
    transport: Arc<snow::StatelessTransportState>,
    nonce: u64,
}

impl Sealer {
    /// Appends `plain` to `out` as records of at most
    /// [`MAX_RECORD_PLAIN`] bytes each (one record for an empty `plain`).
    pub fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), ChannelError> {
        let mut chunks = plain.chunks(MAX_RECORD_PLAIN);
        let first = chunks.next().unwrap_or(&[]);
        for chunk in std::iter::once(first).chain(chunks) {
            let start = out.len();
            let size = chunk.len() + TAG_BYTES;
            out.resize(start + 2 + size, 0);
            out[start..start + 2].copy_from_slice(&(size as u16).to_be_bytes());
            self.transport
                .write_message(self.nonce, chunk, &mut out[start + 2..])
                .map_err(|_| ChannelError::BadRecord)?;
            // 2^64 records is beyond any link's life; wrapping would
            // reuse a nonce, so a link refuses to go on instead.
            self.nonce = self.nonce.checked_add(1).ok_or(ChannelError::BadRecord)?;
        }
        Ok(())
    }
}

/// The receiving end: records in, plaintext out.
pub struct Opener {
    transport: Arc<snow::StatelessTransportState>,
    nonce: u64,
    /// Ciphertext read and not yet a whole record.
    sealed: Vec<u8>,
}

impl Opener {
    fn new(transport: Arc<snow::StatelessTransportState>) -> Opener {
        Opener {
            transport,
            nonce: 0,
            sealed: Vec::new(),
        }
    }

    /// Reads what the socket has and appends the plaintext of every whole
    /// record to `plain`; answers the bytes read (0: the peer closed).
    pub async fn read(
        &mut self,
        reader: &mut (impl AsyncRead + Unpin),
        plain: &mut Vec<u8>,
        want: usize,
    ) -> Result<usize, ChannelError> {
        self.sealed.reserve(want);
        let read = reader.read_buf(&mut self.sealed).await?;
        self.open(plain)?;
        Ok(read)
    }

    /// Decrypts the whole records in the ciphertext buffer onto `plain`.
    fn open(&mut self, plain: &mut Vec<u8>) -> Result<(), ChannelError> {
        let mut taken = 0;
        while let Some(length) = self.sealed.get(taken..taken + 2) {
            let size = usize::from(u16::from_be_bytes([length[0], length[1]]));
            if size < TAG_BYTES {
                return Err(ChannelError::BadRecord);
            }
            let Some(record) = self.sealed.get(taken + 2..taken + 2 + size) else {
                break;
            };
            let start = plain.len();
            plain.resize(start + size - TAG_BYTES, 0);
            let Ok(opened) = self
                .transport
                .read_message(self.nonce, record, &mut plain[start..])
            else {
                plain.truncate(start);
                return Err(ChannelError::BadRecord);
            };
            plain.truncate(start + opened);
            self.nonce = self.nonce.checked_add(1).ok_or(ChannelError::BadRecord)?;
            taken += 2 + size;
        }
        self.sealed.drain(..taken);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(node: &str) -> Hello {
        Hello {
            version: 3,
            node: node.into(),
            listen: "127.0.0.1:7001".parse().unwrap(),
            min_version: 2,
            messages: vec![(1, 1)],
        }
    }

    async fn pair(
        initiator_secret: &[u8],
        responder_secret: &[u8],
    ) -> (
        Result<(Hello, Sealer, Opener), ChannelError>,
        Result<(Hello, Sealer, Opener), ChannelError>,
    ) {
        let (a, b) = tokio::io::duplex(4096);
        let (mut ar, mut aw) = tokio::io::split(a);
        let (mut br, mut bw) = tokio::io::split(b);
        let (ik, rk) = (link_key(initiator_secret), link_key(responder_secret));
        let initiator =
            async move { initiate(&mut ar, &mut aw, &ik, &hello("a"), |_| Ok(())).await };
        let responder = async move {
            let outcome = respond(&mut br, &mut bw, &rk, &hello("b"), |_| Ok(())).await;
            drop(bw);
            outcome
        };
        tokio::join!(initiator, responder)
    }

    #[tokio::test]
    async fn both_sides_learn_each_other_and_records_round_trip() {
        let (initiator, responder) = pair(b"same secret 0123", b"same secret 0123").await;
        let (theirs, mut sealer, mut initiator_opener) = initiator.unwrap();
        assert_eq!(theirs.node, "b");
        let (theirs, _, mut opener) = responder.unwrap();
        assert_eq!(theirs.node, "a");
        let plain: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let mut sealed = Vec::new();
        sealer.seal(&plain, &mut sealed).unwrap();
        // Fed in odd pieces, the records come out whole and in order.
        let mut out = Vec::new();
        for piece in sealed.chunks(7_777) {
            opener.sealed.extend_from_slice(piece);
            opener.open(&mut out).unwrap();
        }
        assert_eq!(out, plain);
        // A record reflected back to its sender fails (the directions have
        // keys of their own).
        let mut reflected = Vec::new();
        sealer.seal(b"from the initiator", &mut reflected).unwrap();
        initiator_opener.sealed.extend_from_slice(&reflected);
        assert!(matches!(
            initiator_opener.open(&mut Vec::new()),
            Err(ChannelError::BadRecord)
        ));
        // A record replayed fails.
        opener
            .sealed
            .extend_from_slice(&sealed[..2 + MAX_RECORD_BYTES]);
        assert!(matches!(
            opener.open(&mut out),
            Err(ChannelError::BadRecord)
        ));
    }

    #[tokio::test]
    async fn another_secret_is_refused_at_the_first_message() {
        let (initiator, responder) = pair(b"one secret 01234", b"another secret 0").await;
        assert!(
            matches!(responder, Err(ChannelError::BadSecret)),
            "{responder:?}"
        );
        assert!(initiator.is_err());
    }

    #[tokio::test]
    async fn a_declared_length_over_the_cap_is_refused_before_reading() {
        let (a, b) = tokio::io::duplex(64);
        let (mut br, mut bw) = tokio::io::split(b);
        let (_ar, mut aw) = tokio::io::split(a);
        aw.write_all(&u16::MAX.to_be_bytes()).await.unwrap();
        let key = link_key(b"k");
        let outcome = respond(&mut br, &mut bw, &key, &hello("b"), |_| Ok(())).await;
        assert!(
            matches!(
                outcome,
                Err(ChannelError::HandshakeTooLarge { size: 65_535 })
            ),
            "{outcome:?}"
        );
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;
    use crate::largest_allocation;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    }

    fn hello() -> Hello {
        Hello {
            version: 3,
            node: "n1".into(),
            listen: "127.0.0.1:7001".parse().unwrap(),
            min_version: 2,
            messages: Vec::new(),
        }
    }

    /// Whatever a stranger sends, neither side of the handshake panics,
    /// lets it in, or allocates past a fixed budget (the handshake's own
    /// state, a few KiB), far below the 64 KiB a declared `u16` length
    /// could ask for.
    const HANDSHAKE_ALLOCATION_CAP: usize = 16 * 1024;

    proptest! {
        #![proptest_config(crate::regressions_at(128, "proptest-regressions/channel.txt"))]

        #[test]
        fn arbitrary_bytes_never_open_a_channel(bytes in proptest::collection::vec(any::<u8>(), 0..3000)) {
            let runtime = runtime();
            let key = link_key(b"the cluster secret 0123");
            for initiator in [false, true] {
                let (outcome, largest) = largest_allocation::during(|| {
                    runtime.block_on(async {
                        let mut reader = bytes.as_slice();
                        let mut writer = tokio::io::sink();
                        if initiator {
                            initiate(&mut reader, &mut writer, &key, &hello(), |_| Ok(())).await.err()
                        } else {
                            respond(&mut reader, &mut writer, &key, &hello(), |_| Ok(())).await.err()
                        }
                    })
                });
                prop_assert!(outcome.is_some(), "random bytes opened a channel");
                prop_assert!(largest <= HANDSHAKE_ALLOCATION_CAP, "allocated {largest} bytes");
            }
        }

        #[test]
        fn arbitrary_records_after_a_handshake_fail_without_panic(
            pieces in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..2048), 0..8)
        ) {
            let runtime = runtime();
            let (initiator, responder) = runtime.block_on(async {
                let (a, b) = tokio::io::duplex(4096);
                let (mut ar, mut aw) = tokio::io::split(a);
                let (mut br, mut bw) = tokio::io::split(b);
                let key = link_key(b"the cluster secret 0123");
                let (mine, theirs) = (hello(), Hello { node: "n2".into(), ..hello() });
                tokio::join!(
                    initiate(&mut ar, &mut aw, &key, &mine, |_| Ok(())),
                    respond(&mut br, &mut bw, &key, &theirs, |_| Ok(())),
                )
            });
            let (_, _, _) = initiator.unwrap();
            let (_, _, mut opener) = responder.unwrap();
            let mut plain = Vec::new();
            let (outcome, largest) = largest_allocation::during(|| {
                let mut outcome = Ok(());
                for piece in &pieces {
                    opener.sealed.extend_from_slice(piece);
                    outcome = opener.open(&mut plain);
                    if outcome.is_err() {
                        break;
                    }
                }
                outcome
            });
            // Forged records never decrypt into plaintext.
            prop_assert!(plain.is_empty());
            prop_assert!(outcome.is_err() || opener.sealed.len() < 2 + MAX_RECORD_BYTES);
            prop_assert!(largest <= 2 * (MAX_RECORD_BYTES + 2 * 2048 * 8), "allocated {largest} bytes");
        }
    }
}
