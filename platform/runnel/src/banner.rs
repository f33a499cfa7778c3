//! The startup banner, printed to stdout once the node is ready.
//!
//! The format is stable, since scripts and the integration tests read it: one `name: value`
//! line per item, no indentation, in this order:
//!
//! ```text
//! runnel 0.1.0, node 1
//! data: /abs/path/runnel-data (1 partition open)
//! http: http://127.0.0.1:9644
//! health: http://127.0.0.1:9644/health/ready
//! metrics: http://127.0.0.1:9644/metrics
//! kafka: 127.0.0.1:9092
//! grpc: 127.0.0.1:9093 (coming)
//! cluster: 127.0.0.1:9094 (coming)
//! ready in 12 ms
//! ```
//!
//! The `http:` line is exactly `http: http://<bound address>` and the `kafka:` line
//! `kafka: <bound address>`, with nothing after them; the bound address is the real one,
//! also when the listener asked for port 0. Listeners marked
//! `(coming)` are configured but not served by this build: nothing is bound there.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A listener a later release serves; shown with its configured address.
pub struct ComingListener {
    pub name: &'static str,
    pub listen: SocketAddr,
}

pub struct Banner {
    pub node_id: u64,
    pub data_dir: PathBuf,
    pub partitions_open: usize,
    pub partitions_offline: usize,
    pub http: SocketAddr,
    /// The cluster RPC address, when this node serves it (a multi-voter quorum).
    pub cluster: Option<SocketAddr>,
    /// The Kafka listener's bound address.
    pub kafka: SocketAddr,
    /// The gRPC API's bound address.
    pub grpc: SocketAddr,
    pub coming: Vec<ComingListener>,
    pub ready_in: Duration,
}

impl fmt::Display for Banner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "runnel {}, node {}",
            env!("CARGO_PKG_VERSION"),
            self.node_id
        )?;
        let open = match self.partitions_open {
            1 => "1 partition open".to_string(),
            count => format!("{count} partitions open"),
        };
        if self.partitions_offline == 0 {
            writeln!(f, "data: {} ({open})", self.data_dir.display())?;
        } else {
            writeln!(
                f,
                "data: {} ({open}, {} offline: see the log)",
                self.data_dir.display(),
                self.partitions_offline
            )?;
        }
        writeln!(f, "http: http://{}", self.http)?;
        writeln!(f, "health: http://{}/health/ready", self.http)?;
        writeln!(f, "metrics: http://{}/metrics", self.http)?;
        writeln!(f, "kafka: {}", self.kafka)?;
        writeln!(f, "grpc: {}", self.grpc)?;
        if let Some(cluster) = self.cluster {
            writeln!(f, "cluster: {cluster}")?;
        }
        for listener in &self.coming {
            writeln!(f, "{}: {} (coming)", listener.name, listener.listen)?;
        }
        writeln!(f, "ready in {} ms", self.ready_in.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_format_is_stable() {
        let banner = Banner {
            node_id: 7,
            data_dir: PathBuf::from("/var/lib/runnel"),
            partitions_open: 2,
            partitions_offline: 1,
            http: "127.0.0.1:40123".parse().unwrap(),
            cluster: None,
            kafka: "127.0.0.1:40124".parse().unwrap(),
            grpc: "127.0.0.1:40125".parse().unwrap(),
            coming: vec![ComingListener {
                name: "cluster",
                listen: "127.0.0.1:9094".parse().unwrap(),
            }],
            ready_in: Duration::from_micros(12_700),
        };
        let expected = format!(
            "runnel {}, node 7\n\
             data: /var/lib/runnel (2 partitions open, 1 offline: see the log)\n\
             http: http://127.0.0.1:40123\n\
             health: http://127.0.0.1:40123/health/ready\n\
             metrics: http://127.0.0.1:40123/metrics\n\
             kafka: 127.0.0.1:40124\n\
             grpc: 127.0.0.1:40125\n\
             cluster: 127.0.0.1:9094 (coming)\n\
             ready in 12 ms\n",
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(banner.to_string(), expected);
    }
}
