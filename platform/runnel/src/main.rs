//! The `runnel` binary: parses the command line, loads the node configuration and runs the
//! node until it is told to stop.
//!
//! Exit codes of `dev` and `start`: `0` after a clean shutdown, `1` when the node failed to
//! start or to stop cleanly, `2` for a bad command line or configuration (one `error: ...`
//! line on stderr), `130` when a second Ctrl-C/SIGTERM cut a shutdown short. The client
//! commands (`topic`, `produce`, `consume`, `group`, `cluster`) have theirs in [`client`].

mod admin;
mod banner;
mod cli;
mod client;
mod connectors;
mod functions;
mod http;
mod logging;
mod metrics;
mod node;
mod signals;

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;

/// A malformed Kafka request must not abort the process (see [`runnel_kafka::alloc`]).
#[global_allocator]
static ALLOCATOR: runnel_kafka::alloc::GuardedAllocator = runnel_kafka::alloc::GuardedAllocator;

fn main() -> ExitCode {
    let started = Instant::now();
    let cli = cli::Cli::parse();
    if !cli.command.runs_a_node() {
        return client::run(cli.command);
    }
    logging::init();

    let config = match cli.command.load_config() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {}", logging::one_line(&error));
            return ExitCode::from(2);
        }
    };

    match node::run(config, started) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", logging::one_line(&error));
            ExitCode::FAILURE
        }
    }
}
