//! The command line: `runnel dev`, `runnel start --config FILE`, and the overrides both take.
//!
//! Every flag that changes the node is only a shorthand for a configuration key, applied as
//! the last layer of [`NodeConfig::load`] (defaults < file < `RUNNEL_*` variables < flags), so
//! the command line cannot express anything the file cannot.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use runnel_config::NodeConfig;

const CONFIG_HELP: &str = "\
Configuration layers, each overriding the one before:
  built-in defaults < the file (`start`) < RUNNEL_<SECTION>__<KEY> variables < flags
Keys are <section>.<field>, e.g. node.id, node.data_dir, http.listen, log.segment_bytes;
deploy/runnel.toml lists every key with its default.
Log level: RUST_LOG (default `info,openraft=warn`), e.g. RUST_LOG=runnel_log=debug.";

/// Runnel: a Kafka-compatible event-streaming platform.
#[derive(Debug, Parser)]
#[command(
    name = "runnel",
    version,
    propagate_version = true,
    arg_required_else_help = true,
    after_help = CONFIG_HELP
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a single node with zero configuration
    ///
    /// The built-in defaults: data in ./runnel-data, every listener on 127.0.0.1 (Kafka 9092,
    /// gRPC 9093, cluster 9094, HTTP 9644). RUNNEL_* variables and flags still apply.
    #[command(after_help = CONFIG_HELP)]
    Dev(DevArgs),
    /// Run a node from a configuration file
    ///
    /// Keys missing from the file keep their built-in defaults; unknown keys are reported as
    /// warnings and ignored.
    #[command(after_help = CONFIG_HELP)]
    Start(StartArgs),
    /// Create, list, describe, alter, grow and delete topics
    Topic(crate::client::TopicArgs),
    /// Write lines from stdin to a topic
    Produce(crate::client::ProduceArgs),
    /// Print a topic's records, following new ones until Ctrl-C
    Consume(crate::client::ConsumeArgs),
    /// List, describe, reset and delete consumer groups
    Group(crate::client::GroupArgs),
    /// The cluster's nodes
    Cluster(crate::client::ClusterArgs),
    /// Wasm functions: deploy, list, describe, logs, pause, resume, delete; run one
    /// locally over sample records, or start a new one
    Fn(crate::functions::FnArgs),
    /// Connectors (Wasm sources and sinks): create, list, describe, pause, resume, delete
    Connector(crate::connectors::ConnectorArgs),
}

#[derive(Debug, Args)]
pub struct DevArgs {
    #[command(flatten)]
    pub overrides: Overrides,
}

#[derive(Debug, Args)]
pub struct StartArgs {
    /// The node's configuration file (TOML), e.g. deploy/runnel.toml
    #[arg(long, short, value_name = "FILE")]
    pub config: PathBuf,
    #[command(flatten)]
    pub overrides: Overrides,
}

/// Flags shared by every command that runs a node.
#[derive(Debug, Args)]
pub struct Overrides {
    /// Keep the node's data in DIR; the same as `--set node.data_dir=DIR`, and applied after
    /// every --set
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Set one configuration key, over the file and RUNNEL_* variables (repeatable), e.g.
    /// `--set http.listen=127.0.0.1:0`
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub set: Vec<(String, String)>,
}

impl Overrides {
    /// The overrides as `(key, value)` pairs, in the order they apply.
    fn pairs(&self) -> anyhow::Result<Vec<(String, String)>> {
        let mut pairs = self.set.clone();
        if let Some(data_dir) = &self.data_dir {
            let data_dir = data_dir
                .to_str()
                .with_context(|| format!("--data-dir {} is not valid UTF-8", data_dir.display()))?;
            pairs.push(("node.data_dir".to_string(), data_dir.to_string()));
        }
        Ok(pairs)
    }
}

impl Command {
    /// Whether this command runs a node (rather than talk to one).
    pub fn runs_a_node(&self) -> bool {
        matches!(self, Command::Dev(_) | Command::Start(_))
    }

    /// Loads and validates the node configuration for this command, logging the warnings of
    /// the load (unknown keys and the like). Errors name the key or file at fault.
    pub fn load_config(&self) -> anyhow::Result<NodeConfig> {
        let (file, overrides) = match self {
            Command::Dev(args) => (None, &args.overrides),
            Command::Start(args) => (Some(args.config.as_path()), &args.overrides),
            _ => anyhow::bail!("a client command runs no node"),
        };
        let loaded = NodeConfig::load(file, environment(), &overrides.pairs()?)?;
        for warning in &loaded.warnings {
            tracing::warn!(%warning, "configuration");
        }
        Ok(loaded.config)
    }
}

/// The process environment as strings. A variable whose name or value is not UTF-8 cannot be
/// a configuration key; it is skipped (with a warning if it looks like one) instead of
/// panicking as `std::env::vars` would.
fn environment() -> Vec<(String, String)> {
    let mut variables = Vec::new();
    for (name, value) in std::env::vars_os() {
        match (name.into_string(), value.into_string()) {
            (Ok(name), Ok(value)) => variables.push((name, value)),
            (Ok(name), Err(_)) if looks_like_config(&name) => {
                tracing::warn!(variable = %name, "ignoring a configuration variable whose value is not UTF-8");
            }
            (Err(name), _) if looks_like_config(&name.to_string_lossy()) => {
                tracing::warn!(variable = ?name, "ignoring a variable whose name is not UTF-8");
            }
            _ => {}
        }
    }
    variables
}

fn looks_like_config(name: &str) -> bool {
    name.to_ascii_uppercase().starts_with("RUNNEL_")
}

/// Parses `KEY=VALUE`; the value may itself contain `=`.
fn parse_key_value(text: &str) -> Result<(String, String), String> {
    let Some((key, value)) = text.split_once('=') else {
        return Err(format!(
            "expected KEY=VALUE (e.g. http.listen=127.0.0.1:0), got `{text}`"
        ));
    };
    let key = key.trim();
    if key.is_empty() {
        return Err(format!("the key is empty in `{text}`"));
    }
    Ok((key.to_string(), value.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use std::path::Path;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn key_value_pairs() {
        assert_eq!(
            parse_key_value("http.listen=127.0.0.1:0"),
            Ok(("http.listen".to_string(), "127.0.0.1:0".to_string()))
        );
        assert_eq!(
            parse_key_value("node.data_dir=/a=b"),
            Ok(("node.data_dir".to_string(), "/a=b".to_string()))
        );
        assert!(parse_key_value("http.listen").is_err());
        assert!(parse_key_value("=1").is_err());
    }

    #[test]
    fn data_dir_is_the_last_override() {
        let cli = Cli::try_parse_from([
            "runnel",
            "dev",
            "--data-dir",
            "/tmp/a",
            "--set",
            "node.data_dir=/tmp/b",
            "--set",
            "node.id=3",
        ])
        .unwrap();
        let Command::Dev(args) = cli.command else {
            panic!("expected dev");
        };
        assert_eq!(
            args.overrides.pairs().unwrap(),
            vec![
                ("node.data_dir".to_string(), "/tmp/b".to_string()),
                ("node.id".to_string(), "3".to_string()),
                ("node.data_dir".to_string(), "/tmp/a".to_string()),
            ]
        );
    }

    #[test]
    fn start_needs_a_config_file() {
        assert!(Cli::try_parse_from(["runnel", "start"]).is_err());
        let cli = Cli::try_parse_from(["runnel", "start", "--config", "runnel.toml"]).unwrap();
        assert!(
            matches!(cli.command, Command::Start(args) if args.config == Path::new("runnel.toml"))
        );
    }
}
