//! The one way a WebSocket stream is served: the server's messages go out
//! in order while, beside them, the client's pings are answered and its
//! leaving is noticed. Neither side's pending work is cancelled by the
//! other's traffic. The server pings; a client silent for the idle time, or
//! whose key is revoked, is closed.

use std::future::Future;

use actix_web::{HttpRequest, HttpResponse, web};
use actix_ws::Message;

/// Pings and idle time of a socket opened without a ticket (no limits set).
const DEFAULT_PING: std::time::Duration = std::time::Duration::from_secs(10);
const DEFAULT_IDLE: std::time::Duration = std::time::Duration::from_secs(30);

/// Time a close frame has to go out before the socket is dropped.
const CLOSE_WITHIN: std::time::Duration = std::time::Duration::from_secs(1);

/// `send`'s outcome, or `None` when it did not finish within `limit` (the
/// client reads nothing and the session's queue is full).
async fn within<T>(limit: std::time::Duration, send: impl Future<Output = T>) -> Option<T> {
    tokio::time::timeout(limit, send).await.ok()
}

/// What a stream sends next.
pub(crate) enum Outgoing {
    /// Send this and go on (a shared buffer is sent without a copy).
    Text(bytestring::ByteString),
    /// Send this, then close: the stream is complete.
    Last(bytestring::ByteString),
    /// Close now (the node is stopping, or the source is gone).
    End,
}

/// Where a stream's messages come from.
pub(crate) trait Source: 'static {
    fn next(&mut self) -> impl Future<Output = Outgoing>;
}

/// Upgrades the request and relays `source` to the client until either ends.
/// Client frames larger than `max_frame` bytes drop the connection.
pub(crate) fn relay(
    request: &HttpRequest,
    payload: web::Payload,
    max_frame: usize,
    mut source: impl Source,
) -> Result<HttpResponse, actix_web::Error> {
    let ticket = super::limits::take_ticket(request);
    let (response, mut session, stream) = actix_ws::handle(request, payload)?;
    let mut stream = stream.max_frame_size(max_frame);
    let mut replies = session.clone();
    let closer = session.clone();
    actix_web::rt::spawn(async move {
        // Held until the socket ends: its places of key and address.
        let ends_at = ticket.as_ref().and_then(|ticket| ticket.ends_at);
        let (ping, idle, mut revoked) = match &ticket {
            Some(ticket) => (ticket.ping, ticket.idle, Some(ticket.revoked.clone())),
            None => (DEFAULT_PING, DEFAULT_IDLE, None),
        };
        let client = async move {
            let mut pings = tokio::time::interval_at(tokio::time::Instant::now() + ping, ping);
            let mut heard = tokio::time::Instant::now();
            loop {
                tokio::select! {
                    frame = stream.recv() => {
                        heard = tokio::time::Instant::now();
                        match frame {
                            Some(Ok(Message::Ping(bytes))) => {
                                match within(idle, replies.pong(&bytes)).await {
                                    Some(Ok(())) => {}
                                    _ => return "gone",
                                }
                            }
                            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return "gone",
                            Some(Ok(_)) => {}
                        }
                    }
                    _ = pings.tick() => {
                        if heard.elapsed() >= idle {
                            return "idle";
                        }
                        // A client that reads nothing fills the session's
                        // queue: a ping that cannot go out in time ends it.
                        match within(ping, replies.ping(b"")).await {
                            Some(Ok(())) => {}
                            Some(Err(_)) => return "gone",
                            None => return "idle",
                        }
                    }
                }
            }
        };
        let revocation = async move {
            match &mut revoked {
                Some(revoked) => {
                    // Ends when the flag is raised (or its sender is gone).
                    let _ = revoked.wait_for(|revoked| *revoked).await;
                }
                None => std::future::pending().await,
            }
        };
        // A person's socket lives as long as their sign-in.
        let expiry = async move {
            match ends_at {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        let server = async move {
            loop {
                let (text, last) = match source.next().await {
                    Outgoing::Text(text) => (text, false),
                    Outgoing::Last(text) => (text, true),
                    Outgoing::End => break,
                };
                match within(idle, session.text(text)).await {
                    Some(Ok(())) => {}
                    _ => return,
                }
                if last {
                    break;
                }
            }
            let _ = within(CLOSE_WITHIN, session.close(None)).await;
        };
        tokio::select! {
            reason = client => {
                if reason == "idle" {
                    let reason = actix_ws::CloseReason {
                        code: actix_ws::CloseCode::Away,
                        description: Some("idle".into()),
                    };
                    let _ = within(CLOSE_WITHIN, closer.close(Some(reason))).await;
                }
            }
            () = server => {}
            () = revocation => {
                let reason = actix_ws::CloseReason {
                    code: actix_ws::CloseCode::Policy,
                    description: Some("the API key was revoked".into()),
                };
                let _ = within(CLOSE_WITHIN, closer.close(Some(reason))).await;
            }
            () = expiry => {
                let reason = actix_ws::CloseReason {
                    code: actix_ws::CloseCode::Policy,
                    description: Some("the sign-in expired".into()),
                };
                let _ = within(CLOSE_WITHIN, closer.close(Some(reason))).await;
            }
        }
        drop(ticket);
    });
    Ok(response)
}
