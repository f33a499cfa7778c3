//! The Kafka listener: accepts connections and serves each on its own tasks.
//!
//! Per connection, a reader takes frames off the socket, decodes each request and runs the
//! first step of its handler in arrival order (see [`crate::handlers`]); the rest runs on
//! a task of its own, and a writer sends the responses back in request order, as Kafka
//! clients require. At most [`MAX_IN_FLIGHT`] requests and [`MAX_IN_FLIGHT_BYTES`] of
//! request frames of one connection are under way (a larger single request goes alone);
//! beyond that the reader stops reading (TCP backpressure).
//!
//! Bad input closes only its own connection: a frame above `socket.request.max.bytes` is
//! refused from its length prefix before anything is allocated for it, and a request that
//! does not decode is logged once. A request of an api key or version that is not served
//! gets UNSUPPORTED_VERSION and the connection stays open. A produce with acks=0 that
//! fails gets no response, so it closes its connection, as in Kafka.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::handlers::Backends;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::codec::{self, FrameDecoder};
use crate::handlers;
use crate::versions;

/// Requests of one connection under way at once.
pub const MAX_IN_FLIGHT: usize = 64;

/// Bytes of request frames of one connection under way at once.
pub const MAX_IN_FLIGHT_BYTES: usize = 128 << 20;

/// The Kafka listener's settings.
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    /// `socket.request.max.bytes`: larger frames close the connection.
    pub max_request_bytes: usize,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        KafkaSettings {
            max_request_bytes: codec::DEFAULT_MAX_REQUEST_BYTES,
        }
    }
}

pub struct KafkaServer {
    address: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl KafkaServer {
    /// Serves Kafka clients on `listener` until [`KafkaServer::stop`].
    pub fn start(
        listener: TcpListener,
        backends: Arc<Backends>,
        settings: KafkaSettings,
    ) -> std::io::Result<KafkaServer> {
        let address = listener.local_addr()?;
        let stop = CancellationToken::new();
        let task = tokio::spawn(accept_loop(listener, backends, settings, stop.clone()));
        Ok(KafkaServer {
            address,
            stop,
            task,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.address
    }

    /// Stops accepting and closes every connection (requests under way are dropped; a
    /// client retries them elsewhere or after a restart).
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

async fn accept_loop(
    listener: TcpListener,
    broker: Arc<Backends>,
    settings: KafkaSettings,
    stop: CancellationToken,
) {
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.cancelled() => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let broker = broker.clone();
                let settings = settings.clone();
                let stop = stop.clone();
                connections.spawn(async move {
                    tokio::select! {
                        _ = serve_connection(stream, peer, broker, settings) => {}
                        _ = stop.cancelled() => {}
                    }
                });
            }
            Err(error) => {
                // Out of file descriptors and the like: wait a little rather than spin.
                tracing::warn!(%error, "accepting a kafka connection");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
    connections.close();
    connections.wait().await;
}

/// What the writer sends for one request, in order.
enum Outgoing {
    /// A response already encoded.
    Ready(bytes::BytesMut),
    /// A handler still running.
    Pending {
        api_key: kafka_protocol::messages::ApiKey,
        version: i16,
        correlation_id: i32,
        reply: JoinHandle<handlers::Answer>,
        /// The request's share of [`MAX_IN_FLIGHT_BYTES`], returned once answered.
        _budget: OwnedSemaphorePermit,
    },
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    broker: Arc<Backends>,
    settings: KafkaSettings,
) {
    let (mut reader, mut writer) = stream.into_split();
    let (outgoing, mut queue) = mpsc::channel::<Outgoing>(MAX_IN_FLIGHT);
    // Aborted if this connection is dropped (the server stopping), so the socket closes.
    let write_task = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
        while let Some(next) = queue.recv().await {
            let frame = match next {
                Outgoing::Ready(frame) => frame,
                Outgoing::Pending {
                    api_key,
                    version,
                    correlation_id,
                    reply,
                    _budget,
                } => match reply.await {
                    Ok(handlers::Answer::Respond(body)) => {
                        match codec::encode_response(api_key, version, correlation_id, &body) {
                            Ok(frame) => frame,
                            Err(error) => {
                                tracing::error!(%peer, ?api_key, version, error = %format!("{error:#}"), "cannot encode a response; closing the connection");
                                return;
                            }
                        }
                    }
                    Ok(handlers::Answer::Nothing) => continue,
                    Ok(handlers::Answer::Close) => {
                        tracing::debug!(%peer, ?api_key, "closing the connection after a failed request without a response");
                        return;
                    }
                    Err(error) => {
                        tracing::error!(%peer, ?api_key, %error, "a request handler failed; closing the connection");
                        return;
                    }
                },
            };
            if writer.write_all(&frame).await.is_err() {
                return;
            }
        }
    }));

    let budget = Arc::new(Semaphore::new(MAX_IN_FLIGHT_BYTES));
    let mut frames = FrameDecoder::new(settings.max_request_bytes);
    'connection: loop {
        match reader.read_buf(frames.buffer()).await {
            Ok(0) => {
                if frames.pending() > 0 {
                    tracing::debug!(%peer, pending = frames.pending(), "connection closed in the middle of a frame");
                }
                break;
            }
            Ok(_) => {}
            Err(error) => {
                tracing::debug!(%peer, %error, "reading from a kafka connection");
                break;
            }
        }
        loop {
            let frame = match frames.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(error) => {
                    tracing::warn!(%peer, %error, "refusing a request; closing the connection");
                    break 'connection;
                }
            };
            let id = match codec::peek_request_id(&frame) {
                Ok(id) => id,
                Err(error) => {
                    tracing::warn!(%peer, %error, "malformed request; closing the connection");
                    break 'connection;
                }
            };
            if !versions::is_served(id.api_key, id.version) {
                tracing::debug!(%peer, api_key = id.api_key, version = id.version, "unsupported api key or version");
                let answer = codec::unsupported_version_response(id);
                if outgoing.send(Outgoing::Ready(answer)).await.is_err() {
                    break 'connection;
                }
                continue;
            }
            let share = frame.len().clamp(1, MAX_IN_FLIGHT_BYTES) as u32;
            let Ok(permit) = budget.clone().acquire_many_owned(share).await else {
                break 'connection;
            };
            let request = match codec::decode_request(frame) {
                Ok(request) => request,
                Err(error) => {
                    tracing::warn!(%peer, %error, "malformed request; closing the connection");
                    break 'connection;
                }
            };
            let api_key = request.api_key;
            let version = request.version();
            let correlation_id = request.header.correlation_id;
            let reply = tokio::spawn(handlers::handle(&broker, request).await);
            let pending = Outgoing::Pending {
                api_key,
                version,
                correlation_id,
                reply,
                _budget: permit,
            };
            if outgoing.send(pending).await.is_err() {
                break 'connection;
            }
        }
    }
    drop(outgoing);
    let _ = write_task.await;
}
