//! The wire format between nodes: length-prefixed frames (a big-endian
//! `u32` length, then a bincode 2 body), size-checked before anything is
//! read into memory; they travel inside the link's encrypted records
//! ([`super::channel`]). bincode has no schema evolution, so the layout of
//! frames is versioned: the handshake settles each link on the highest
//! protocol version both ends speak, and the link's frames are encoded and
//! read at that version (this release speaks 4 and the one before, 3).
//! Payloads carry their kind's explicit message id and version; the
//! runtime decides which message versions it takes.
//!
//! Envelopes borrow their strings and payload: a sender encodes from its
//! own, a receiver decodes views into the bytes it read (no allocation per
//! message), and either takes an owned copy only to keep one.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

/// The highest version of the frames and envelopes below this node speaks.
/// 2: links inside the Noise channel, replies bound to their link.
/// 3: envelopes carry the version of their message (`type_version`); the
///    hello lists the message versions a node speaks.
/// 4: envelopes carry who the message acts for (`actor`: an API key's id or
///    a person's subject), which the audit log records.
pub const PROTOCOL_VERSION: u16 = 4;
/// The lowest version this node still speaks: a link to a node of the
/// release before settles on it.
pub const MIN_PROTOCOL_VERSION: u16 = 3;
/// Largest frame body a node sends or accepts.
pub const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

/// bincode with the frame limit, so that a length inside a frame cannot
/// make the decoder allocate more than a frame holds.
fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_FRAME_BYTES>()
}

/// Which agent instance a message is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target<'a> {
    #[serde(borrow)]
    pub kind: Cow<'a, str>,
    #[serde(borrow)]
    pub key: Cow<'a, str>,
}

/// One message between nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope<'a> {
    pub message_id: u64,
    /// Set on an ask: the reply carries it back.
    pub ask_id: Option<u64>,
    /// The id that ties together everything done for one request.
    pub correlation_id: Option<Cow<'a, str>>,
    /// Who the message acts for (none on a link at protocol 3).
    pub actor: Option<Cow<'a, str>>,
    /// W3C `traceparent` of the sender's span.
    pub trace_context: Option<Cow<'a, str>>,
    /// Unix milliseconds after which the receiver drops the message.
    pub deadline_ms: Option<u64>,
    #[serde(borrow)]
    pub target: Target<'a>,
    /// Stable id of the payload's type.
    pub type_id: u32,
    /// The version of that type the payload is encoded at.
    pub type_version: u16,
    /// The message: MessagePack with field names (self-describing, so
    /// tagged and flattened serde types survive, which bincode cannot do).
    /// Bytes, not a sequence: one copy instead of a visit per byte.
    #[serde(borrow, with = "serde_bytes")]
    pub payload: Cow<'a, [u8]>,
}

impl Envelope<'_> {
    /// The same envelope, owning what it borrowed.
    pub fn into_owned(self) -> Envelope<'static> {
        Envelope {
            message_id: self.message_id,
            ask_id: self.ask_id,
            correlation_id: self.correlation_id.map(|id| Cow::Owned(id.into_owned())),
            actor: self.actor.map(|actor| Cow::Owned(actor.into_owned())),
            trace_context: self.trace_context.map(|tc| Cow::Owned(tc.into_owned())),
            deadline_ms: self.deadline_ms,
            target: Target {
                kind: Cow::Owned(self.target.kind.into_owned()),
                key: Cow::Owned(self.target.key.into_owned()),
            },
            type_id: self.type_id,
            type_version: self.type_version,
            payload: Cow::Owned(self.payload.into_owned()),
        }
    }
}

/// Why a remote ask failed on the far side. The agent's own errors keep
/// their shape, so a refusal reaches an HTTP client on another node as the
/// same 422 naming the same field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RemoteFailure {
    /// The receiving node does not own the target (placement moved).
    NotOwner {
        owner: Option<String>,
    },
    /// No handler for the type id (an older or newer peer).
    UnknownType {
        type_id: u32,
    },
    /// The receiving node does not host the kind.
    UnknownKind {
        kind: String,
    },
    /// The payload is not a message of the kind.
    Undecodable {
        reason: String,
    },
    DeadlineExpired,
    MailboxFull {
        capacity: u64,
    },
    Rejected {
        code: String,
        message: String,
        field: Option<String>,
    },
    Failed {
        last_failure: String,
    },
    Stopped,
    /// Any other error of the agent, as text.
    Agent {
        message: String,
    },
}

/// The answer to an envelope that carried a correlation id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub ask_id: u64,
    pub outcome: Result<Vec<u8>, RemoteFailure>,
}

/// What travels on a link once the handshake is done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame<'a> {
    #[serde(borrow)]
    Message(Envelope<'a>),
    Reply(Reply),
}

/// An envelope as protocol 3 lays it out (no `actor`).
#[derive(Debug, Serialize, Deserialize)]
struct EnvelopeV3<'a> {
    message_id: u64,
    ask_id: Option<u64>,
    correlation_id: Option<Cow<'a, str>>,
    trace_context: Option<Cow<'a, str>>,
    deadline_ms: Option<u64>,
    #[serde(borrow)]
    target: Target<'a>,
    type_id: u32,
    type_version: u16,
    #[serde(borrow, with = "serde_bytes")]
    payload: Cow<'a, [u8]>,
}

/// A frame as protocol 3 lays it out.
#[derive(Debug, Deserialize)]
enum FrameV3<'a> {
    #[serde(borrow)]
    Message(EnvelopeV3<'a>),
    Reply(Reply),
}

/// [`FrameV3`] to encode, borrowing the frame (variants in the same order).
#[derive(Serialize)]
enum FrameV3Out<'a> {
    Message(EnvelopeV3<'a>),
    Reply(&'a Reply),
}

/// Borrows `value` (no copy of strings or payload).
fn borrowed<T: ?Sized + ToOwned>(value: &T) -> Cow<'_, T> {
    Cow::Borrowed(value)
}

impl<'a> FrameV3Out<'a> {
    fn of(frame: &'a Frame<'_>) -> FrameV3Out<'a> {
        match frame {
            Frame::Reply(reply) => FrameV3Out::Reply(reply),
            Frame::Message(envelope) => FrameV3Out::Message(EnvelopeV3 {
                message_id: envelope.message_id,
                ask_id: envelope.ask_id,
                correlation_id: envelope.correlation_id.as_deref().map(borrowed),
                trace_context: envelope.trace_context.as_deref().map(borrowed),
                deadline_ms: envelope.deadline_ms,
                target: Target {
                    kind: borrowed(&envelope.target.kind),
                    key: borrowed(&envelope.target.key),
                },
                type_id: envelope.type_id,
                type_version: envelope.type_version,
                payload: borrowed(&envelope.payload),
            }),
        }
    }
}

impl<'a> FrameV3<'a> {
    fn into_frame(self) -> Frame<'a> {
        match self {
            FrameV3::Reply(reply) => Frame::Reply(reply),
            FrameV3::Message(envelope) => Frame::Message(Envelope {
                message_id: envelope.message_id,
                ask_id: envelope.ask_id,
                correlation_id: envelope.correlation_id,
                actor: None,
                trace_context: envelope.trace_context,
                deadline_ms: envelope.deadline_ms,
                target: envelope.target,
                type_id: envelope.type_id,
                type_version: envelope.type_version,
                payload: envelope.payload,
            }),
        }
    }
}

/// Encodes `frame` as protocol `version` lays it out, onto `out`.
pub fn encode_frame(frame: &Frame<'_>, version: u16, out: &mut Vec<u8>) -> Result<(), CodecError> {
    if version >= 4 {
        encode_into(frame, out)
    } else {
        encode_into(&FrameV3Out::of(frame), out)
    }
}

/// [`next_frame`] for a frame laid out as protocol `version` lays it out.
pub fn next_frame_at(
    bytes: &[u8],
    version: u16,
) -> Result<Result<(Frame<'_>, usize), usize>, CodecError> {
    if version >= 4 {
        next_frame(bytes)
    } else {
        Ok(next_frame::<FrameV3>(bytes)?.map(|(frame, used)| (frame.into_frame(), used)))
    }
}

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("frame of {size} bytes exceeds the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("undecodable frame: {0}")]
    Decode(String),
    #[error("unencodable frame: {0}")]
    Encode(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Encodes `value` as one frame (length prefix included) onto `out`.
pub fn encode_into<T: Serialize>(value: &T, out: &mut Vec<u8>) -> Result<(), CodecError> {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    bincode::serde::encode_into_std_write(value, out, config())
        .map_err(|error| CodecError::Encode(error.to_string()))?;
    let size = out.len() - start - 4;
    if size > MAX_FRAME_BYTES {
        out.truncate(start);
        return Err(CodecError::TooLarge {
            size,
            limit: MAX_FRAME_BYTES,
        });
    }
    out[start..start + 4].copy_from_slice(&(size as u32).to_be_bytes());
    Ok(())
}

/// The first whole frame in `bytes`, decoded as a view into them, and
/// the bytes it took; or, when no whole frame is there yet, the size in
/// all of the one that has begun (0 when not even its length has come),
/// so that a reader knows how much more to read. An oversized length is
/// an error before its body is read.
pub fn next_frame<'a, T: Deserialize<'a>>(
    bytes: &'a [u8],
) -> Result<Result<(T, usize), usize>, CodecError> {
    let Some(prefix) = bytes.get(..4) else {
        return Ok(Err(0));
    };
    let size = u32::from_be_bytes(prefix.try_into().expect("four bytes")) as usize;
    if size > MAX_FRAME_BYTES {
        return Err(CodecError::TooLarge {
            size,
            limit: MAX_FRAME_BYTES,
        });
    }
    let Some(body) = bytes.get(4..4 + size) else {
        return Ok(Err(4 + size));
    };
    Ok(Ok((decode(body)?, 4 + size)))
}

/// Decodes one frame body; trailing bytes are an error.
pub fn decode<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, CodecError> {
    let (value, used) = bincode::serde::borrow_decode_from_slice(body, config())
        .map_err(|error| CodecError::Decode(error.to_string()))?;
    if used != body.len() {
        return Err(CodecError::Decode(format!(
            "{} bytes left after the frame's value",
            body.len() - used
        )));
    }
    Ok(value)
}

/// Encodes a payload for an [`Envelope`] or a [`Reply`].
pub fn encode_payload<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    bincode::serde::encode_to_vec(value, config())
        .map_err(|error| CodecError::Encode(error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope() -> Envelope<'static> {
        Envelope {
            message_id: 7,
            ask_id: Some(9),
            correlation_id: Some("req-1".into()),
            actor: Some("key:01-k".into()),
            trace_context: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            deadline_ms: Some(1_800_000_000_000),
            target: Target {
                kind: "architect".into(),
                key: "m-1".into(),
            },
            type_id: 3,
            type_version: 2,
            payload: encode_payload(&("hello", 42u32)).unwrap().into(),
        }
    }

    /// A link at protocol 3 carries envelopes without an actor: written
    /// and read at 3 they come back without one, the rest intact; read at
    /// the wrong version they do not decode.
    #[test]
    fn frames_at_the_previous_protocol_lose_only_the_actor() {
        let reply = Frame::Reply(Reply {
            ask_id: 4,
            outcome: Ok(vec![1, 2, 3]),
        });
        for frame in [Frame::Message(envelope()), reply] {
            let mut v3 = Vec::new();
            encode_frame(&frame, 3, &mut v3).unwrap();
            let mut v4 = Vec::new();
            encode_frame(&frame, 4, &mut v4).unwrap();
            let (read, used) = next_frame_at(&v3, 3).unwrap().unwrap();
            assert_eq!(used, v3.len());
            let expected = match frame.clone() {
                Frame::Message(envelope) => Frame::Message(Envelope {
                    actor: None,
                    ..envelope
                }),
                reply => reply,
            };
            assert_eq!(read, expected);
            assert_eq!(next_frame_at(&v4, 4).unwrap().unwrap().0, frame);
            if matches!(frame, Frame::Message(_)) {
                assert_ne!(v3, v4);
                assert!(next_frame_at(&v3, 4).is_err() || next_frame_at(&v3, 4).unwrap().is_err());
            }
        }
    }

    #[tokio::test]
    async fn frames_round_trip_back_to_back() {
        let frames = vec![
            Frame::Message(envelope()),
            Frame::Reply(Reply {
                ask_id: 9,
                outcome: Err(RemoteFailure::NotOwner {
                    owner: Some("n2".into()),
                }),
            }),
        ];
        let mut bytes = Vec::new();
        for frame in &frames {
            encode_into(frame, &mut bytes).unwrap();
        }
        // A partial frame asks for its whole size, or for its length.
        let first = bytes.len() - encode_payload(&frames[1]).unwrap().len() - 4;
        assert_eq!(
            next_frame::<Frame>(&bytes[..first - 1]).unwrap(),
            Err(first)
        );
        assert_eq!(next_frame::<Frame>(&bytes[..3]).unwrap(), Err(0));
        let mut taken = 0;
        for frame in &frames {
            let (read, used) = next_frame::<Frame>(&bytes[taken..]).unwrap().unwrap();
            assert_eq!(&read, frame);
            // A view into the bytes read, not a copy.
            if let Frame::Message(envelope) = &read {
                assert!(matches!(envelope.target.key, Cow::Borrowed(_)));
                assert!(matches!(envelope.payload, Cow::Borrowed(_)));
            }
            taken += used;
        }
        assert_eq!(taken, bytes.len());
        assert_eq!(next_frame::<Frame>(&bytes[taken..]).unwrap(), Err(0));
    }

    #[test]
    fn an_oversized_length_is_refused_before_reading_the_body() {
        let mut bytes = ((MAX_FRAME_BYTES + 1) as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(&[0; 16]);
        let error = next_frame::<Frame>(&bytes).unwrap_err();
        assert!(matches!(error, CodecError::TooLarge { .. }), "{error}");
    }

    #[test]
    fn garbage_and_trailing_bytes_are_decode_errors() {
        assert!(matches!(
            decode::<Frame>(&[0xff; 12]),
            Err(CodecError::Decode(_))
        ));
        let mut body = encode_payload(&Frame::Message(envelope())).unwrap();
        body.push(0);
        assert!(matches!(decode::<Frame>(&body), Err(CodecError::Decode(_))));
        // A length inside the body claiming more than a frame can hold.
        let lying = [0u8, 0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f];
        assert!(decode::<Frame>(&lying).is_err());
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;
    use crate::largest_allocation;

    fn envelope() -> impl Strategy<Value = Envelope<'static>> {
        (
            any::<u64>(),
            proptest::option::of(any::<u64>()),
            proptest::option::of("[a-z0-9-]{0,40}"),
            proptest::option::of(any::<u64>()),
            "[a-z_]{1,12}",
            ".{0,40}",
            (any::<u32>(), 1..=u16::MAX),
            proptest::collection::vec(any::<u8>(), 0..300),
        )
            .prop_map(
                |(
                    message_id,
                    ask_id,
                    correlation,
                    deadline,
                    kind,
                    key,
                    (type_id, type_version),
                    payload,
                )| {
                    Envelope {
                        message_id,
                        ask_id,
                        actor: correlation
                            .clone()
                            .map(|id| Cow::Owned(format!("key:{id}"))),
                        correlation_id: correlation.map(Cow::Owned),
                        trace_context: None,
                        deadline_ms: deadline,
                        target: Target {
                            kind: kind.into(),
                            key: key.into(),
                        },
                        type_id,
                        type_version,
                        payload: payload.into(),
                    }
                },
            )
    }

    fn frame() -> impl Strategy<Value = Frame<'static>> {
        prop_oneof![
            envelope().prop_map(Frame::Message),
            (any::<u64>(), proptest::collection::vec(any::<u8>(), 0..100)).prop_map(
                |(ask_id, outcome)| Frame::Reply(Reply {
                    ask_id,
                    outcome: Ok(outcome),
                })
            ),
            (any::<u64>(), ".{0,30}").prop_map(|(ask_id, reason)| Frame::Reply(Reply {
                ask_id,
                outcome: Err(RemoteFailure::Undecodable { reason }),
            })),
        ]
    }

    proptest! {
        #![proptest_config(crate::regressions_at(512, "proptest-regressions/codec.txt"))]

        /// Arbitrary bytes: an error or a frame, never a panic, and never
        /// an allocation past the frame limit.
        #[test]
        fn arbitrary_bytes_decode_or_fail_within_the_limit(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let (outcome, largest) = largest_allocation::during(|| {
                let mut taken = 0;
                loop {
                    match next_frame::<Frame>(&bytes[taken..]) {
                        Ok(Ok((_, used))) => taken += used,
                        Ok(Err(wanted)) => break Ok(wanted),
                        Err(error) => break Err(error),
                    }
                }
            });
            if let Ok(wanted) = outcome {
                prop_assert!(wanted <= 4 + MAX_FRAME_BYTES);
            }
            prop_assert!(largest <= MAX_FRAME_BYTES, "allocated {largest} bytes");
        }

        /// Any sequence of frames, cut anywhere, reads back whole and in order.
        #[test]
        fn frame_sequences_round_trip_across_any_cut(
            frames in proptest::collection::vec(frame(), 0..12),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut bytes = Vec::new();
            for frame in &frames {
                encode_into(frame, &mut bytes).unwrap();
            }
            let cut = if bytes.is_empty() { 0 } else { cut.index(bytes.len()) };
            let mut buffer = bytes[..cut].to_vec();
            let mut read = Vec::new();
            let mut taken = 0;
            for rest in [&bytes[cut..], &[][..]] {
                while let Ok((frame, used)) = next_frame::<Frame>(&buffer[taken..]).unwrap() {
                    read.push(frame_owned(frame));
                    taken += used;
                }
                buffer.extend_from_slice(rest);
            }
            prop_assert_eq!(read, frames);
        }
    }

    proptest! {
        #![proptest_config(crate::regressions_at(256, "proptest-regressions/codec.txt"))]

        /// At either protocol version a link speaks, any sequence of frames
        /// reads back as written, but for the actor protocol 3 has no room
        /// for.
        #[test]
        fn frames_round_trip_at_every_protocol_version(
            frames in proptest::collection::vec(frame(), 0..12),
            version in MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION,
        ) {
            let mut bytes = Vec::new();
            for frame in &frames {
                encode_frame(frame, version, &mut bytes).unwrap();
            }
            let mut read = Vec::new();
            let mut taken = 0;
            while let Ok((frame, used)) = next_frame_at(&bytes[taken..], version).unwrap() {
                read.push(frame_owned(frame));
                taken += used;
            }
            prop_assert_eq!(taken, bytes.len());
            let expected: Vec<Frame<'static>> = frames
                .into_iter()
                .map(|frame| match frame {
                    Frame::Message(envelope) if version < 4 => Frame::Message(Envelope {
                        actor: None,
                        ..envelope
                    }),
                    frame => frame,
                })
                .collect();
            prop_assert_eq!(read, expected);
        }
    }

    fn frame_owned(frame: Frame<'_>) -> Frame<'static> {
        match frame {
            Frame::Message(envelope) => Frame::Message(envelope.into_owned()),
            Frame::Reply(reply) => Frame::Reply(reply),
        }
    }
}
