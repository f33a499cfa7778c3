//! A batching producer: records wait up to `linger` (or until a batch is full) and go out
//! as one request per topic and partition, over one `ProduceStream` whose answers come
//! back in order, so the records of a partition keep the order they were sent in.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::proto::producer_client::ProducerClient;
use crate::{Acks, Error, Position, Record, proto};

/// How a [`Producer`] batches.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// How long a record may wait for others to share its request.
    pub linger: Duration,
    /// A batch this full is sent at once.
    pub batch_records: usize,
    pub batch_bytes: usize,
    pub acks: Acks,
    /// Records accepted but not yet acknowledged; `send` waits beyond this.
    pub max_pending: usize,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            linger: Duration::from_millis(5),
            batch_records: 10_000,
            batch_bytes: 1 << 20,
            acks: Acks::All,
            max_pending: 100_000,
        }
    }
}

type Reply = oneshot::Sender<Result<Position, Error>>;

struct Queued {
    topic: String,
    partition: Option<i32>,
    record: Record,
    reply: Reply,
}

/// Sends records in batches; cheap to clone. Dropping every clone flushes what is queued.
#[derive(Clone)]
pub struct Producer {
    queue: mpsc::Sender<Command>,
}

enum Command {
    Send(Queued),
    Flush(oneshot::Sender<()>),
}

/// The acknowledgement of one record: where it was written, or why not.
pub struct Delivery {
    receiver: oneshot::Receiver<Result<Position, Error>>,
}

impl Future for Delivery {
    type Output = Result<Position, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.receiver)
            .poll(cx)
            .map(|answer| answer.unwrap_or(Err(Error::Closed)))
    }
}

impl Producer {
    pub(crate) fn start(client: ProducerClient<Channel>, config: ProducerConfig) -> Producer {
        let (queue, commands) = mpsc::channel(config.max_pending.max(1));
        tokio::spawn(Batcher::new(client, config).run(commands));
        Producer { queue }
    }

    /// Queues `record` for `topic` (its partition chosen by key, as Kafka's default
    /// partitioner does); the returned [`Delivery`] resolves once it is acknowledged.
    /// Waits only while `max_pending` records are outstanding.
    pub async fn enqueue(&self, topic: &str, record: Record) -> Delivery {
        self.enqueue_to(topic, None, record).await
    }

    /// Like [`Producer::enqueue`], to a given partition (`None`: by key).
    pub async fn enqueue_to(
        &self,
        topic: &str,
        partition: Option<i32>,
        record: Record,
    ) -> Delivery {
        let (reply, receiver) = oneshot::channel();
        let queued = Queued {
            topic: topic.to_string(),
            partition,
            record,
            reply,
        };
        // If the batcher is gone, the dropped reply resolves the delivery as Closed.
        let _ = self.queue.send(Command::Send(queued)).await;
        Delivery { receiver }
    }

    /// Sends `record` and waits for its acknowledgement. To batch, enqueue many and await
    /// their deliveries afterwards.
    pub async fn send(&self, topic: &str, record: Record) -> Result<Position, Error> {
        self.enqueue(topic, record).await.await
    }

    /// Sends everything queued now, without waiting for the linger.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.queue.send(Command::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

/// Records waiting for their request.
struct Batch {
    records: Vec<proto::Record>,
    replies: Vec<Reply>,
    bytes: usize,
    due: Instant,
}

/// The requests on the current stream still waiting for their answers, in order.
type InFlight = Arc<Mutex<VecDeque<(u64, Vec<Reply>)>>>;

struct Stream {
    requests: mpsc::Sender<proto::ProduceRequest>,
    in_flight: InFlight,
}

struct Batcher {
    client: ProducerClient<Channel>,
    config: ProducerConfig,
    batches: HashMap<(String, Option<i32>), Batch>,
    stream: Option<Stream>,
    next_request: u64,
}

impl Batcher {
    fn new(client: ProducerClient<Channel>, config: ProducerConfig) -> Batcher {
        Batcher {
            client,
            config,
            batches: HashMap::new(),
            stream: None,
            next_request: 0,
        }
    }

    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        loop {
            let due = self.batches.values().map(|b| b.due).min();
            let command = match due {
                Some(due) => tokio::select! {
                    command = commands.recv() => command,
                    _ = tokio::time::sleep_until(due) => {
                        self.send_due(Instant::now()).await;
                        continue;
                    }
                },
                None => commands.recv().await,
            };
            match command {
                Some(Command::Send(queued)) => self.add(queued).await,
                Some(Command::Flush(done)) => {
                    self.send_due(Instant::now() + self.config.linger).await;
                    let _ = done.send(());
                }
                None => {
                    self.send_due(Instant::now() + self.config.linger).await;
                    return;
                }
            }
        }
    }

    async fn add(&mut self, queued: Queued) {
        let key = (queued.topic, queued.partition);
        let linger = self.config.linger;
        let batch = self.batches.entry(key.clone()).or_insert_with(|| Batch {
            records: Vec::new(),
            replies: Vec::new(),
            bytes: 0,
            due: Instant::now() + linger,
        });
        batch.bytes += queued.record.encoded_len();
        batch.records.push(queued.record.into_proto());
        batch.replies.push(queued.reply);
        let full = batch.records.len() >= self.config.batch_records
            || batch.bytes >= self.config.batch_bytes;
        if full && let Some(batch) = self.batches.remove(&key) {
            self.send(key, batch).await;
        }
    }

    /// Sends every batch due by `now`.
    async fn send_due(&mut self, now: Instant) {
        let due: Vec<(String, Option<i32>)> = self
            .batches
            .iter()
            .filter(|(_, b)| b.due <= now)
            .map(|(key, _)| key.clone())
            .collect();
        for key in due {
            if let Some(batch) = self.batches.remove(&key) {
                self.send(key, batch).await;
            }
        }
    }

    async fn send(&mut self, (topic, partition): (String, Option<i32>), batch: Batch) {
        self.next_request += 1;
        let request = proto::ProduceRequest {
            topic,
            partition,
            records: batch.records,
            acks: self.config.acks as i32,
            request_id: self.next_request,
        };
        let stream = match self.stream.take() {
            Some(stream) if !stream.requests.is_closed() => stream,
            _ => match self.open().await {
                Ok(stream) => stream,
                Err(error) => {
                    for reply in batch.replies {
                        let _ = reply.send(Err(error.clone()));
                    }
                    return;
                }
            },
        };
        stream
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back((self.next_request, batch.replies));
        if stream.requests.send(request).await.is_ok() {
            self.stream = Some(stream);
        }
        // Else the stream ended: its reader fails what is in flight, this request included.
    }

    /// Opens a ProduceStream and a task that hands its answers to the waiting records.
    async fn open(&mut self) -> Result<Stream, Error> {
        let (requests, outgoing) = mpsc::channel(64);
        let in_flight: InFlight = Arc::default();
        let mut answers = self
            .client
            .produce_stream(tokio_stream::wrappers::ReceiverStream::new(outgoing))
            .await?
            .into_inner();
        let waiting = in_flight.clone();
        tokio::spawn(async move {
            let failure = loop {
                match answers.message().await {
                    Ok(Some(answer)) => {
                        let next = waiting
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .pop_front();
                        let Some((id, replies)) = next else {
                            break Error::Status {
                                code: tonic::Code::Internal,
                                message: "an answer to no request".to_string(),
                            };
                        };
                        if id != answer.request_id || answer.positions.len() != replies.len() {
                            break Error::Status {
                                code: tonic::Code::Internal,
                                message: format!(
                                    "answer {} does not match request {id}",
                                    answer.request_id
                                ),
                            };
                        }
                        for (reply, position) in replies.into_iter().zip(answer.positions) {
                            let _ = reply.send(Ok(position));
                        }
                    }
                    Ok(None) => break Error::Closed,
                    Err(status) => break Error::from(status),
                }
            };
            // Everything still in flight on this stream failed with it.
            let failed: Vec<_> = waiting
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .drain(..)
                .collect();
            for (_, replies) in failed {
                for reply in replies {
                    let _ = reply.send(Err(failure.clone()));
                }
            }
        });
        Ok(Stream {
            requests,
            in_flight,
        })
    }
}
