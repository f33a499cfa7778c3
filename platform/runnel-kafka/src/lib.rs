//! runnel-kafka: the Kafka wire-protocol frontend.
//!
//! Unmodified Kafka clients (librdkafka/kcat, confluent-kafka, kafka-python, kafkajs, Java)
//! talk to the broker through this crate: [`server`] accepts connections and keeps
//! responses in request order, [`codec`] splits frames and decodes requests with the
//! `kafka-protocol` crate, [`versions`] is the table ApiVersions advertises, [`handlers`]
//! answers each API through the `Broker` API, and [`errors`] is the one place Kafka error
//! codes are named. [`alloc`] is a global allocator the binary installs so that a
//! malformed request cannot make the process abort (see there).

pub mod alloc;
pub mod codec;
pub mod errors;
pub mod handlers;
pub mod server;
pub mod versions;

pub use handlers::Backends;
pub use server::{KafkaServer, KafkaSettings};
