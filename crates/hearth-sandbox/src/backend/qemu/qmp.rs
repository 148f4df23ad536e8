//! A small QMP client: JSON lines over QEMU's control socket.
//!
//! Blocking, with a timeout on every read and write, because the [`SandboxBackend`] methods
//! that use it (`remove`, pause, resume) are synchronous and may be called both from plain
//! threads and from inside a tokio runtime (where nesting a runtime would panic). Each call is a
//! few hundred microseconds on a local socket.
//!
//! [`SandboxBackend`]: crate::backend::SandboxBackend

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd};

use nix::sys::socket::{self, ControlMessage, MsgFlags};
use serde::Deserialize;
use serde_json::{json, Value};

/// How long one QMP read or write may take.
pub const QMP_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a QMP exchange failed; every variant names the socket.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("cannot connect to QMP socket {path}: {source}")]
    Connect { path: PathBuf, source: io::Error },
    #[error("QMP I/O on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("QMP socket {path} closed the connection")]
    Closed { path: PathBuf },
    #[error("unreadable QMP message on {path}: {source}")]
    Decode {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path} did not greet like QMP: {line}")]
    NoGreeting { path: PathBuf, line: String },
    #[error("QMP command {command} failed ({class}): {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
}

/// What `query-status` reports.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct VmStatus {
    /// `running`, `paused`, `prelaunch`, `shutdown`, ...
    pub status: String,
    pub running: bool,
}

/// A QMP session in command mode.
#[derive(Debug)]
pub struct Qmp {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Connects, reads the greeting and leaves capabilities negotiation.
    pub fn connect(path: &Path) -> Result<Self, QmpError> {
        let stream = UnixStream::connect(path).map_err(|source| QmpError::Connect {
            path: path.to_owned(),
            source,
        })?;
        let io_err = |source| QmpError::Io {
            path: path.to_owned(),
            source,
        };
        stream.set_read_timeout(Some(QMP_TIMEOUT)).map_err(io_err)?;
        stream
            .set_write_timeout(Some(QMP_TIMEOUT))
            .map_err(io_err)?;
        let writer = stream.try_clone().map_err(io_err)?;
        let mut qmp = Self {
            path: path.to_owned(),
            reader: BufReader::new(stream),
            writer,
        };
        let greeting = qmp.read_message()?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::NoGreeting {
                path: qmp.path,
                line: greeting.to_string(),
            });
        }
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    /// Runs `command` and returns its `return` value, skipping asynchronous events.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, QmpError> {
        let line = request_line(command, arguments);
        self.writer
            .write_all(line.as_bytes())
            .map_err(|source| self.io_err(source))?;
        self.answer(command)
    }

    /// Like [`Self::execute`], passing `fd` along (SCM_RIGHTS), as `getfd` and `add-fd` need.
    pub fn execute_with_fd(
        &mut self,
        command: &str,
        arguments: Option<Value>,
        fd: BorrowedFd<'_>,
    ) -> Result<Value, QmpError> {
        let line = request_line(command, arguments);
        let fds = [fd.as_raw_fd()];
        let sent = socket::sendmsg::<()>(
            self.writer.as_raw_fd(),
            &[IoSlice::new(line.as_bytes())],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .map_err(|errno| self.io_err(errno.into()))?;
        if sent != line.len() {
            // The fd went with the first bytes; the rest of a short line follows plainly.
            self.writer
                .write_all(&line.as_bytes()[sent..])
                .map_err(|source| self.io_err(source))?;
        }
        self.answer(command)
    }

    fn answer(&mut self, command: &str) -> Result<Value, QmpError> {
        loop {
            let mut message = self.read_message()?;
            if let Some(value) = message.get_mut("return") {
                return Ok(value.take());
            }
            if let Some(error) = message.get("error") {
                let text = |key: &str| error.get(key).and_then(Value::as_str).unwrap_or("?");
                return Err(QmpError::Command {
                    command: command.to_owned(),
                    class: text("class").to_owned(),
                    desc: text("desc").to_owned(),
                });
            }
            // An event (`{"event": ..}`): not the answer.
        }
    }

    /// Pauses every vCPU (`stop`).
    pub fn stop(&mut self) -> Result<(), QmpError> {
        self.execute("stop", None).map(drop)
    }

    /// Resumes the vCPUs (`cont`).
    pub fn cont(&mut self) -> Result<(), QmpError> {
        self.execute("cont", None).map(drop)
    }

    pub fn query_status(&mut self) -> Result<VmStatus, QmpError> {
        let value = self.execute("query-status", None)?;
        serde_json::from_value(value).map_err(|source| QmpError::Decode {
            path: self.path.clone(),
            source,
        })
    }

    /// Asks QEMU to exit. QEMU may close the socket before or after answering; both are a
    /// success.
    pub fn quit(&mut self) -> Result<(), QmpError> {
        match self.execute("quit", None) {
            Ok(_) | Err(QmpError::Closed { .. }) => Ok(()),
            Err(QmpError::Io { source, .. })
                if matches!(
                    source.kind(),
                    io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
                ) =>
            {
                Ok(())
            }
            Err(err) => Err(err),
        }
    }

    fn read_message(&mut self) -> Result<Value, QmpError> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .map_err(|source| self.io_err(source))?;
        if n == 0 {
            return Err(QmpError::Closed {
                path: self.path.clone(),
            });
        }
        serde_json::from_str(&line).map_err(|source| QmpError::Decode {
            path: self.path.clone(),
            source,
        })
    }

    fn io_err(&self, source: io::Error) -> QmpError {
        QmpError::Io {
            path: self.path.clone(),
            source,
        }
    }
}

fn request_line(command: &str, arguments: Option<Value>) -> String {
    let mut request = json!({ "execute": command });
    if let Some(arguments) = arguments {
        request["arguments"] = arguments;
    }
    let mut line = request.to_string();
    line.push('\n');
    line
}
