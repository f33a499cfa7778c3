//! The Rust client of Runnel's gRPC API (`runnel.v1`, see `docs/grpc.md`).
//!
//! ```no_run
//! use runnel_client::{Client, Record, Start};
//! use tokio_stream::StreamExt;
//!
//! # async fn example() -> Result<(), runnel_client::Error> {
//! let client = Client::connect("127.0.0.1:9093").await?;
//! client.admin().create_topic("orders", 3, &[]).await?;
//!
//! // A producer batches records (up to `linger` or a full batch) and keeps their order.
//! let producer = client.producer();
//! let position = producer
//!     .send("orders", Record::new("order 1").key("customer-7").header("source", "web"))
//!     .await?;
//! println!("written to {}-{} at {}", "orders", position.partition, position.offset);
//!
//! // Every record of the topic from the beginning, then new ones as they come.
//! let mut records = client.subscribe("orders", Start::Earliest).await?;
//! while let Some(record) = records.next().await {
//!     let record = record?;
//!     println!("{} {:?}", record.offset, record.value);
//! }
//! # Ok(())
//! # }
//! ```

pub mod admin;
mod error;
pub mod functions;
mod group;
mod producer;

use std::time::Duration;

use futures::{Stream, StreamExt};
use tonic::transport::{Channel, Endpoint};

pub use admin::Admin;
pub use error::Error;
pub use functions::Functions;
pub use group::{Assignment, GroupEvent, GroupSubscription, Reset};
pub use producer::{Delivery, Producer, ProducerConfig};

/// The generated messages and clients of `runnel.v1`.
pub mod proto {
    tonic::include_proto!("runnel.v1");
}

pub use proto::{Acks, ConsumedRecord, RecordPosition as Position};

/// The largest message sent or taken (as the server's limit).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// HTTP/2 flow-control windows: what may be in flight on one call and on the connection.
const STREAM_WINDOW_BYTES: u32 = 8 << 20;
const CONNECTION_WINDOW_BYTES: u32 = 32 << 20;

/// A record to produce.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
    /// Milliseconds since the Unix epoch; `None`: the broker's time of arrival.
    pub timestamp_ms: Option<i64>,
}

impl Record {
    pub fn new(value: impl Into<Vec<u8>>) -> Record {
        Record {
            value: Some(value.into()),
            ..Record::default()
        }
    }

    /// A record with a null value (a tombstone on a compacted topic).
    pub fn tombstone(key: impl Into<Vec<u8>>) -> Record {
        Record {
            key: Some(key.into()),
            ..Record::default()
        }
    }

    pub fn key(mut self, key: impl Into<Vec<u8>>) -> Record {
        self.key = Some(key.into());
        self
    }

    pub fn header(mut self, key: impl Into<String>, value: impl Into<Vec<u8>>) -> Record {
        self.headers.push((key.into(), value.into()));
        self
    }

    pub fn timestamp_ms(mut self, timestamp_ms: i64) -> Record {
        self.timestamp_ms = Some(timestamp_ms);
        self
    }

    fn into_proto(self) -> proto::Record {
        proto::Record {
            key: self.key,
            value: self.value,
            headers: self
                .headers
                .into_iter()
                .map(|(key, value)| proto::Header { key, value })
                .collect(),
            timestamp_ms: self.timestamp_ms,
        }
    }

    fn encoded_len(&self) -> usize {
        self.key.as_ref().map_or(0, Vec::len)
            + self.value.as_ref().map_or(0, Vec::len)
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
            + 16
    }
}

/// Where a subscription starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// The first record still kept.
    Earliest,
    /// Only records written from now on.
    Latest,
    /// The same offset in every partition read.
    Offset(i64),
    /// A consumer group's committed offsets (the earliest where it has none).
    Committed { group: String },
}

/// What a fetch returned.
#[derive(Debug, Clone, PartialEq)]
pub struct Fetched {
    pub records: Vec<ConsumedRecord>,
    /// The offset to fetch next.
    pub next_offset: i64,
    pub high_watermark: i64,
    pub log_start_offset: i64,
}

/// A connection to a Runnel node's gRPC API; cheap to clone.
#[derive(Clone)]
pub struct Client {
    channel: Channel,
}

impl Client {
    /// Connects to `server`: `host:port` or an `http://` URL.
    pub async fn connect(server: &str) -> Result<Client, Error> {
        let url = if server.contains("://") {
            server.to_string()
        } else {
            format!("http://{server}")
        };
        let endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| Error::Connect(format!("{server}: {e}")))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            // HTTP/2's default 64 KiB windows held a producer to ~60 MB/s.
            .initial_stream_window_size(STREAM_WINDOW_BYTES)
            .initial_connection_window_size(CONNECTION_WINDOW_BYTES);
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| Error::Connect(format!("{server}: {}", error::sources(&e))))?;
        Ok(Client { channel })
    }

    fn producer_client(&self) -> proto::producer_client::ProducerClient<Channel> {
        proto::producer_client::ProducerClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    fn consumer_client(&self) -> proto::consumer_client::ConsumerClient<Channel> {
        proto::consumer_client::ConsumerClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// Topic, group and cluster administration.
    pub fn admin(&self) -> Admin {
        Admin::new(self.channel.clone())
    }

    /// Deploying and running Wasm functions.
    pub fn functions(&self) -> Functions {
        Functions::new(self.channel.clone())
    }

    /// A batching producer with the default settings (5 ms linger, acks=all).
    pub fn producer(&self) -> Producer {
        self.producer_with(ProducerConfig::default())
    }

    pub fn producer_with(&self, config: ProducerConfig) -> Producer {
        Producer::start(self.producer_client(), config)
    }

    /// Writes `records` to `topic` in one request (to `partition`, or by key) and returns
    /// where each landed, in order.
    pub async fn produce(
        &self,
        topic: &str,
        partition: Option<i32>,
        records: Vec<Record>,
        acks: Acks,
    ) -> Result<Vec<Position>, Error> {
        let request = proto::ProduceRequest {
            topic: topic.to_string(),
            partition,
            records: records.into_iter().map(Record::into_proto).collect(),
            acks: acks as i32,
            request_id: 0,
        };
        let answer = self.producer_client().produce(request).await?;
        Ok(answer.into_inner().positions)
    }

    /// Records of one partition from `offset`: at most `max_records` (0: no count limit),
    /// waiting up to `max_wait` for one if there is none yet.
    pub async fn fetch(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        max_records: u32,
        max_wait: Duration,
    ) -> Result<Fetched, Error> {
        let answer = self
            .consumer_client()
            .fetch(proto::FetchRequest {
                topic: topic.to_string(),
                partition,
                offset,
                max_records,
                max_bytes: 0,
                max_wait_ms: max_wait.as_millis().min(u128::from(u32::MAX)) as u32,
            })
            .await?
            .into_inner();
        Ok(Fetched {
            records: answer.records,
            next_offset: answer.next_offset,
            high_watermark: answer.high_watermark,
            log_start_offset: answer.log_start_offset,
        })
    }

    /// Every partition of `topic` from `start`, following new records until dropped.
    pub async fn subscribe(
        &self,
        topic: &str,
        start: Start,
    ) -> Result<impl Stream<Item = Result<ConsumedRecord, Error>> + use<>, Error> {
        self.subscribe_partitions(topic, &[], start).await
    }

    /// Like [`Client::subscribe`], for some partitions only (empty: all).
    pub async fn subscribe_partitions(
        &self,
        topic: &str,
        partitions: &[i32],
        start: Start,
    ) -> Result<impl Stream<Item = Result<ConsumedRecord, Error>> + use<>, Error> {
        use proto::subscribe_request::Start as Wire;
        let (start, group) = match start {
            Start::Earliest => (
                Wire::Position(proto::StartPosition::StartEarliest as i32),
                "",
            ),
            Start::Latest => (Wire::Position(proto::StartPosition::StartLatest as i32), ""),
            Start::Offset(offset) => (Wire::Offset(offset), ""),
            Start::Committed { ref group } => (
                Wire::Position(proto::StartPosition::StartCommitted as i32),
                group.as_str(),
            ),
        };
        let stream = self
            .consumer_client()
            .subscribe(proto::SubscribeRequest {
                topic: topic.to_string(),
                partitions: partitions.to_vec(),
                start: Some(start),
                group: group.to_string(),
                max_records: 0,
            })
            .await?
            .into_inner();
        Ok(stream
            .map(|message| match message {
                Ok(message) => message.records.into_iter().map(Ok).collect::<Vec<_>>(),
                Err(status) => vec![Err(Error::from(status))],
            })
            .flat_map(futures::stream::iter))
    }

    /// Stores `group`'s committed offsets for partitions of `topic`: (partition, the next
    /// offset to read).
    pub async fn commit(
        &self,
        group: &str,
        topic: &str,
        offsets: &[(i32, i64)],
    ) -> Result<(), Error> {
        self.consumer_client()
            .commit(commit_request(group, topic, offsets, "", -1))
            .await?;
        Ok(())
    }

    /// Joins consumer group `group` as a new member reading `topics`: the server assigns
    /// it a share of their partitions (with the group's other members: other
    /// subscriptions, and Kafka consumers with `group.protocol=consumer`), starting from
    /// the group's committed offsets, or `reset` where there are none.
    ///
    /// ```no_run
    /// # async fn example(client: runnel_client::Client) -> Result<(), runnel_client::Error> {
    /// use runnel_client::{GroupEvent, Reset};
    /// let mut member = client.subscribe_group("billing", &["orders"], Reset::Earliest).await?;
    /// while let Some(event) = member.next().await {
    ///     match event? {
    ///         GroupEvent::Assigned(assignment) => println!("reading {:?}", assignment.partitions),
    ///         GroupEvent::Record(record) => {
    ///             // ... process it, then:
    ///             member.commit(&record.topic, &[(record.partition, record.offset + 1)]).await?;
    ///         }
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn subscribe_group(
        &self,
        group: &str,
        topics: &[&str],
        reset: Reset,
    ) -> Result<GroupSubscription, Error> {
        GroupSubscription::start(self.channel.clone(), group, topics, reset).await
    }
}

/// A commit of (partition, next offset) pairs of `topic`, as `member_id` at `member_epoch`
/// (empty and -1: no member).
fn commit_request(
    group: &str,
    topic: &str,
    offsets: &[(i32, i64)],
    member_id: &str,
    member_epoch: i32,
) -> proto::CommitRequest {
    proto::CommitRequest {
        group: group.to_string(),
        topic: topic.to_string(),
        offsets: offsets
            .iter()
            .map(|(partition, offset)| proto::PartitionOffset {
                partition: *partition,
                offset: *offset,
                metadata: String::new(),
            })
            .collect(),
        member_id: member_id.to_string(),
        member_epoch,
    }
}
