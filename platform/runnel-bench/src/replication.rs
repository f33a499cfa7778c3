//! `runnel-bench replication`: what replication costs a producer. Three `runnel start`
//! processes form a cluster on this machine; librdkafka produces the same records with
//! acks=all to a topic with one replica and to one with three, in alternating rounds of
//! one run: records/s, MB/s and produce latency (send to acknowledgement).
//!
//! All three nodes share this machine's cores and disk, so the three-replica figure is
//! what three copies cost one machine, not what a cluster of three machines does.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::kafka::{Case, NodeProcess, Produced, create_replicated_topic, ms, produce};

#[derive(clap::Args)]
pub struct ReplicationOptions {
    /// MiB of 1 KiB records per topic and round.
    #[arg(long, default_value_t = 128)]
    pub mib: u64,
    #[arg(long, default_value_t = 6)]
    pub partitions: i32,
    /// Rounds, each producing to both topics in turn.
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    /// Where the nodes' data goes.
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// The `runnel` binary; by default the one beside this program.
    #[arg(long)]
    pub runnel: Option<PathBuf>,
}

pub fn run(options: &ReplicationOptions) -> Result<()> {
    let work = crate::tempfile_in(&options.dir)?;
    let result = run_in(options, &work);
    let _ = std::fs::remove_dir_all(&work);
    result
}

/// A free port on 127.0.0.1 (bound, then released for a node to take).
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Starts three voters, each with its config file under `work`; ready together.
fn start_cluster(runnel: Option<&Path>, work: &Path) -> Result<Vec<NodeProcess>> {
    let ports = [free_port()?, free_port()?, free_port()?];
    let voters = ports
        .iter()
        .enumerate()
        .map(|(i, port)| format!("{}@127.0.0.1:{port}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let mut starting = Vec::new();
    for (index, port) in ports.iter().enumerate() {
        let id = index + 1;
        let dir = work.join(format!("node-{id}"));
        std::fs::create_dir_all(&dir)?;
        let config = format!(
            "[node]\nid = {id}\ndata_dir = \"{data}\"\n\
             [kafka]\nlisten = \"127.0.0.1:0\"\n[grpc]\nlisten = \"127.0.0.1:0\"\n\
             [http]\nlisten = \"127.0.0.1:0\"\n[cluster]\nlisten = \"127.0.0.1:{port}\"\n\
             [controller]\nvoters = \"{voters}\"\n",
            data = dir.join("data").display(),
        );
        let file = dir.join("runnel.toml");
        std::fs::write(&file, config)?;
        let args: Vec<OsString> = vec!["start".into(), "--config".into(), file.into()];
        // The nodes' warnings (peers going away as the run ends) go to a file of each.
        let stderr = std::fs::File::create(dir.join("stderr.log"))?;
        starting.push(NodeProcess::spawn(runnel, &args, stderr.into())?);
    }
    starting
        .into_iter()
        .enumerate()
        .map(|(index, node)| {
            node.ready().map_err(|error| {
                let log = work.join(format!("node-{}/stderr.log", index + 1));
                let stderr = std::fs::read_to_string(log).unwrap_or_default();
                error.context(format!("node {} did not start:\n{stderr}", index + 1))
            })
        })
        .collect()
}

fn run_in(options: &ReplicationOptions, work: &Path) -> Result<()> {
    println!(
        "runnel-bench replication: librdkafka {}, acks=all, three runnel nodes on this machine",
        rdkafka::util::get_rdkafka_version().1
    );
    let nodes = start_cluster(options.runnel.as_deref(), work)?;
    let bootstrap = nodes
        .iter()
        .map(|n| n.kafka.as_str())
        .collect::<Vec<_>>()
        .join(",");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let records = (options.mib << 20) / 1024;
    let mut rows: Vec<(usize, i32, Produced)> = Vec::new();
    for round in 1..=options.rounds.max(1) {
        for replicas in [1, 3] {
            let case = Case {
                topic: format!("bench-rf{replicas}-round{round}"),
                record_bytes: 1024,
                records,
            };
            runtime.block_on(create_replicated_topic(
                &bootstrap,
                &case.topic,
                options.partitions,
                replicas,
            ))?;
            // The leaders take their epochs just after creation: let them.
            std::thread::sleep(std::time::Duration::from_secs(1));
            rows.push((
                round,
                replicas,
                produce(&bootstrap, &case, options.partitions, 1)?,
            ));
        }
    }
    drop(nodes);

    println!(
        "\n{:<6} {:<34} {:>11} {:>8} {:>8} {:>8} {:>9}",
        "round", "produce (acks=all)", "records/s", "MB/s", "p50 ms", "p99 ms", "p99.9 ms"
    );
    for (round, replicas, produced) in &rows {
        println!(
            "{:<6} {:<34} {:>11.0} {:>8.1} {:>8.2} {:>8.2} {:>9.2}",
            round,
            format!(
                "1 KiB, {} partitions, {} replica{}",
                options.partitions,
                replicas,
                if *replicas == 1 { "" } else { "s" }
            ),
            produced.records_per_s,
            produced.mb_per_s,
            ms(produced.latency.value_at_quantile(0.50)),
            ms(produced.latency.value_at_quantile(0.99)),
            ms(produced.latency.value_at_quantile(0.999)),
        );
    }
    println!();
    for round in 1..=options.rounds.max(1) {
        let rate = |replicas: i32| {
            rows.iter()
                .find(|(r, n, _)| *r == round && *n == replicas)
                .map_or(0.0, |(_, _, p)| p.mb_per_s)
        };
        println!(
            "round {round}: three replicas at {:.0}% of one ({:.1} / {:.1} MB/s)",
            100.0 * rate(3) / rate(1).max(f64::MIN_POSITIVE),
            rate(3),
            rate(1)
        );
    }
    Ok(())
}
