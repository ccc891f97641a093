//! SIGINT and SIGTERM, installed once when a command starts and kept until it exits: a signal
//! that arrives while the command is still starting, or while it is already stopping, is
//! queued for it rather than lost (tokio keeps a handler installed once it has been, so a
//! signal with no listener left would be swallowed) or left to kill the process with whatever
//! it had created still there.

use anyhow::Context;
use tokio::signal::unix::{Signal, SignalKind, signal};

/// The stop signals of this process.
pub(crate) struct Signals {
    int: Signal,
    term: Signal,
}

impl Signals {
    /// Takes over SIGINT and SIGTERM from now on.
    pub(crate) fn install() -> anyhow::Result<Self> {
        Ok(Signals {
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
        })
    }

    /// The next stop signal: its name.
    pub(crate) async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
        }
    }
}

/// The conventional exit status after a signal: 128 + its number.
pub(crate) fn exit_code(name: &str) -> i32 {
    if name == "SIGINT" { 130 } else { 143 }
}
