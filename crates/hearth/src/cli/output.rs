//! Everything the CLI prints goes through here: text for people escaped ([`super::escape`]),
//! and a closed pipe turned into an error the commands return.
//!
//! Rust ignores SIGPIPE, so a write to a pipe whose reader is gone (`hearth sandbox audit |
//! head`) fails with EPIPE, on which `println!` panics. hearth keeps SIGPIPE ignored: `hearth
//! run` and `hearth serve` talk over sockets, and a signal must never kill them halfway (a killed
//! `hearth run` would leave its sandbox behind). Instead these functions map EPIPE to
//! [`OutputError::Closed`], which commands return with `?`, so their cleanup still runs, and
//! which `main` turns into a quiet exit with [`crate::exit::OUTPUT_CLOSED`].
//!
//! JSON is written as serde_json made it, byte for byte: scripts read it, and serde_json already
//! escapes the C0 controls.

use std::fmt;
use std::io::{IsTerminal, Write};

use hearth_proto::StreamName;
use hearth_sandbox::guest_client::OutputChunk;
use serde::Serialize;

use super::escape::{self, TerminalFilter};

/// One of the CLI's own output streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl fmt::Display for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// The reader went away (`| head`): the command ends quietly, as one killed by SIGPIPE would.
    #[error("{0} was closed")]
    Closed(Stream),
    #[error("cannot write to {stream}")]
    Write {
        stream: Stream,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot serialize the output as JSON")]
    Json(#[from] serde_json::Error),
}

impl OutputError {
    /// A failed write to `stream`: [`OutputError::Closed`] when its reader is gone.
    pub fn io(stream: Stream, source: std::io::Error) -> Self {
        if source.kind() == std::io::ErrorKind::BrokenPipe {
            Self::Closed(stream)
        } else {
            Self::Write { stream, source }
        }
    }
}

/// Whether `err` is a closed output, which `main` reports with an exit code and no message.
pub fn is_closed(err: &anyhow::Error) -> bool {
    matches!(
        err.downcast_ref::<OutputError>(),
        Some(OutputError::Closed(_))
    )
}

/// `println!` for people: the formatted line, escaped with [`escape::text`], on stdout;
/// a `Result<(), OutputError>` to return with `?`.
macro_rules! outln {
    () => {
        $crate::cli::output::write_text($crate::cli::output::Stream::Stdout, "")
    };
    ($($arg:tt)*) => {
        $crate::cli::output::write_text(
            $crate::cli::output::Stream::Stdout,
            &::std::format!($($arg)*),
        )
    };
}

/// [`outln!`] on stderr, for progress and messages.
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::cli::output::write_text(
            $crate::cli::output::Stream::Stderr,
            &::std::format!($($arg)*),
        )
    };
}

pub(crate) use {errln, outln};

/// Writes `text` and a line feed, with every control but `\n` and `\t` escaped. Single-line
/// fields inside `text` should have been escaped with [`escape::field`] already.
pub fn write_text(stream: Stream, text: &str) -> Result<(), OutputError> {
    let mut line = escape::text(text).into_owned();
    line.push('\n');
    write_bytes(stream, line.as_bytes())
}

/// Writes `text` and a line feed as they are: JSON, or a rendering a script reads.
pub fn write_raw_line(stream: Stream, text: &str) -> Result<(), OutputError> {
    let mut line = String::with_capacity(text.len() + 1);
    line.push_str(text);
    line.push('\n');
    write_bytes(stream, line.as_bytes())
}

/// `value` as pretty JSON on stdout (what `--json` prints).
pub fn print_json(value: &impl Serialize) -> Result<(), OutputError> {
    write_raw_line(Stream::Stdout, &serde_json::to_string_pretty(value)?)
}

/// `value` as one compact JSON line on stdout (JSON Lines).
pub fn print_json_line(value: &impl Serialize) -> Result<(), OutputError> {
    write_raw_line(Stream::Stdout, &serde_json::to_string(value)?)
}

/// Writes and flushes `bytes`, so nothing waits in a buffer when the command ends or stalls.
pub fn write_bytes(stream: Stream, bytes: &[u8]) -> Result<(), OutputError> {
    let written = match stream {
        Stream::Stdout => {
            let mut out = std::io::stdout().lock();
            out.write_all(bytes).and_then(|()| out.flush())
        }
        Stream::Stderr => std::io::stderr().lock().write_all(bytes),
    };
    written.map_err(|source| OutputError::io(stream, source))
}

/// Where `hearth sandbox exec` relays the command's own output: byte for byte into a file or a
/// pipe (it is data, maybe binary, as with `ssh` or `docker exec`), through a
/// [`TerminalFilter`] for a stream that is a terminal.
///
/// The first failed write is sent on `failed`, so `exec` can stop waiting: hanging up on the
/// guest makes it kill the command, as a closed pipe kills a command run by `ssh`.
#[derive(Debug)]
pub struct CommandOutput {
    stdout: Option<TerminalFilter>,
    stderr: Option<TerminalFilter>,
    failed: Option<tokio::sync::oneshot::Sender<OutputError>>,
}

impl CommandOutput {
    pub fn new(failed: tokio::sync::oneshot::Sender<OutputError>) -> Self {
        Self {
            stdout: std::io::stdout()
                .is_terminal()
                .then(TerminalFilter::default),
            stderr: std::io::stderr()
                .is_terminal()
                .then(TerminalFilter::default),
            failed: Some(failed),
        }
    }

    /// Writes one chunk; nothing more once a write has failed.
    pub fn relay(&mut self, chunk: OutputChunk) {
        if self.failed.is_none() {
            return;
        }
        let written = match chunk {
            OutputChunk::Stdout(data) => self.write(Stream::Stdout, &data),
            OutputChunk::Stderr(data) => self.write(Stream::Stderr, &data),
            OutputChunk::Truncated {
                stream,
                dropped_bytes,
            } => {
                let name = match stream {
                    StreamName::Stdout => Stream::Stdout,
                    StreamName::Stderr => Stream::Stderr,
                };
                errln!(
                    "hearth: {name} truncated: {dropped_bytes} bytes over the output limit were dropped"
                )
            }
        };
        if let Err(err) = written {
            if let Some(failed) = self.failed.take() {
                let _ = failed.send(err);
            }
        }
    }

    fn write(&mut self, stream: Stream, data: &[u8]) -> Result<(), OutputError> {
        let filter = match stream {
            Stream::Stdout => &mut self.stdout,
            Stream::Stderr => &mut self.stderr,
        };
        match filter {
            Some(filter) => write_bytes(stream, &filter.push(data)),
            None => write_bytes(stream, data),
        }
    }

    /// Writes what the terminal filters still hold once the command has ended.
    pub fn finish(mut self) -> Result<(), OutputError> {
        for stream in [Stream::Stdout, Stream::Stderr] {
            let filter = match stream {
                Stream::Stdout => self.stdout.as_mut(),
                Stream::Stderr => self.stderr.as_mut(),
            };
            if let Some(rest) = filter.map(TerminalFilter::finish) {
                if !rest.is_empty() {
                    write_bytes(stream, &rest)?;
                }
            }
        }
        Ok(())
    }
}
