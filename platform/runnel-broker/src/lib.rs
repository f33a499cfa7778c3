//! runnel-broker: a broker's partitions and the operations on them.
//!
//! [`Broker`] is the API every frontend (Kafka, gRPC) calls: produce, read, topic
//! administration through the controller, producer ids. Beside it, the reconciliation of
//! local partitions with the cluster metadata: the controller's metadata says which
//! partitions this node hosts and with which configs; the broker creates the ones it is missing, applies config changes, and deletes the ones the
//! metadata no longer gives it. [`reconcile::plan`] decides (pure, tested without I/O);
//! [`reconcile::run`] follows metadata changes and carries the plans out.

pub mod broker;
pub mod groups;
pub mod partitioner;
pub mod peers;
pub mod reconcile;
pub mod replication;

pub use broker::{Broker, BrokerError, BrokerSettings, PendingProduce, Produced, TopicConfigs};
