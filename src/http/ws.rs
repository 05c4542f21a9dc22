//! The one way a WebSocket stream is served: the server's messages go out
//! in order while, beside them, the client's pings are answered and its
//! leaving is noticed. Neither side's pending work is cancelled by the
//! other's traffic.

use std::future::Future;

use actix_web::{HttpRequest, HttpResponse, web};
use actix_ws::Message;

/// What a stream sends next.
pub(crate) enum Outgoing {
    /// Send this and go on.
    Text(String),
    /// Send this, then close: the stream is complete.
    Last(String),
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
    let (response, mut session, stream) = actix_ws::handle(request, payload)?;
    let mut stream = stream.max_frame_size(max_frame);
    let mut replies = session.clone();
    actix_web::rt::spawn(async move {
        let client = async move {
            loop {
                match stream.recv().await {
                    Some(Ok(Message::Ping(bytes))) => {
                        if replies.pong(&bytes).await.is_err() {
                            return;
                        }
                    }
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                    Some(Ok(_)) => {}
                }
            }
        };
        let server = async move {
            loop {
                let (text, last) = match source.next().await {
                    Outgoing::Text(text) => (text, false),
                    Outgoing::Last(text) => (text, true),
                    Outgoing::End => break,
                };
                if session.text(text).await.is_err() {
                    return;
                }
                if last {
                    break;
                }
            }
            let _ = session.close(None).await;
        };
        tokio::select! {
            () = client => {}
            () = server => {}
        }
    });
    Ok(response)
}
