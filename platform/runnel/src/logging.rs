//! Diagnostic logging: `tracing` to stderr, filtered by `RUST_LOG` (default `info,openraft=warn`).
//!
//! `RUST_LOG` rather than a `RUNNEL_*` variable, because every `RUNNEL_*` variable is read as
//! a configuration key. Stdout is kept for the startup banner. Colours only on a terminal.

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

/// openraft logs every election and heartbeat change at info; warnings are enough by default.
const DEFAULT_FILTER: &str = "info,openraft=warn";

/// Installs the global subscriber. A `RUST_LOG` that does not parse falls back to the default
/// filter, with a warning, rather than stopping the node.
pub fn init() {
    let configured = std::env::var("RUST_LOG").ok().filter(|v| !v.is_empty());
    let (filter, rejected) = match configured {
        None => (EnvFilter::new(DEFAULT_FILTER), None),
        Some(directives) => match EnvFilter::try_new(&directives) {
            Ok(filter) => (filter, None),
            Err(error) => (EnvFilter::new(DEFAULT_FILTER), Some((directives, error))),
        },
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    if let Some((directives, error)) = rejected {
        tracing::warn!(
            rust_log = %directives,
            %error,
            default = DEFAULT_FILTER,
            "ignoring RUST_LOG that does not parse; logging at the default level"
        );
    }
}

/// An error and its causes on one line, `outer: cause: root cause`, for the `error: ...` line
/// on stderr. A cause whose text the line already ends with is left out: some errors (e.g.
/// `runnel_log::LogError::Io`) print their source and also return it from `source()`.
pub fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.is_empty() {
            line = text;
        } else if !line.ends_with(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Prints its source and returns it too, as `thiserror` does for a `source` field that
    /// is also in the message.
    #[derive(Debug)]
    struct Repeats {
        source: std::io::Error,
    }

    impl std::fmt::Display for Repeats {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "create /data/partitions: {}", self.source)
        }
    }

    impl std::error::Error for Repeats {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.source)
        }
    }

    #[test]
    fn causes_are_joined_once() {
        let io = std::io::Error::other("not a directory");
        let error = anyhow::Error::new(Repeats { source: io }).context("open the log");
        assert_eq!(
            one_line(&error),
            "open the log: create /data/partitions: not a directory"
        );

        let error = anyhow::Error::new(std::io::Error::other("denied")).context("bind");
        assert_eq!(one_line(&error), "bind: denied");
    }
}
