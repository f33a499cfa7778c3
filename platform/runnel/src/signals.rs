//! Shutdown on Ctrl-C (SIGINT) and SIGTERM.
//!
//! The first signal cancels the node's shutdown token and the node stops cleanly (see
//! [`crate::node`]). A second signal, while that shutdown runs, exits the process at once with
//! code 130, for when a clean shutdown takes longer than the operator will wait; the log then
//! recovers on the next start as after a crash.

use tokio_util::sync::CancellationToken;

/// The exit code of a shutdown cut short by a second signal (128 + SIGINT, as shells use).
const EXIT_ON_SECOND_SIGNAL: i32 = 130;

/// Installs the handlers; from now on the signals no longer kill the process by default.
/// Must be called inside the runtime.
#[cfg(unix)]
pub fn install(shutdown: CancellationToken) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use tokio::signal::unix::{SignalKind, signal};

    let mut interrupt = signal(SignalKind::interrupt()).context("install the SIGINT handler")?;
    let mut terminate = signal(SignalKind::terminate()).context("install the SIGTERM handler")?;
    tokio::spawn(async move {
        loop {
            let name = tokio::select! {
                Some(()) = interrupt.recv() => "SIGINT",
                Some(()) = terminate.recv() => "SIGTERM",
                else => return,
            };
            on_signal(name, &shutdown);
        }
    });
    Ok(())
}

#[cfg(not(unix))]
pub fn install(shutdown: CancellationToken) -> anyhow::Result<()> {
    tokio::spawn(async move {
        while tokio::signal::ctrl_c().await.is_ok() {
            on_signal("Ctrl-C", &shutdown);
        }
    });
    Ok(())
}

fn on_signal(name: &'static str, shutdown: &CancellationToken) {
    if shutdown.is_cancelled() {
        tracing::warn!(
            signal = name,
            exit_code = EXIT_ON_SECOND_SIGNAL,
            "second signal during shutdown; exiting now"
        );
        std::process::exit(EXIT_ON_SECOND_SIGNAL);
    }
    tracing::info!(
        signal = name,
        "shutting down; send the signal again to exit at once"
    );
    shutdown.cancel();
}
