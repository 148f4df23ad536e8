//! Starting QEMU inside the sandbox's namespace and knowing it again later by `PID STARTTIME`.

use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use nix::sched::{setns, CloneFlags};

use super::QemuError;

/// A process as recorded in `vmm.pid`: pid and start time (clock ticks since boot); together
/// they name one process for good, where a pid alone may be reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmmStamp {
    pub pid: u32,
    pub start_time: u64,
}

impl VmmStamp {
    pub fn parse(text: &str) -> Option<Self> {
        let mut words = text.split_whitespace();
        let pid = words.next()?.parse().ok()?;
        let start_time = words.next()?.parse().ok()?;
        words.next().is_none().then_some(Self { pid, start_time })
    }

    /// The stamp of the live process `pid`.
    pub fn of(pid: u32) -> io::Result<Self> {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // The command name (field 2) is in parentheses and may contain spaces or ')'.
        let after_comm = stat
            .rfind(')')
            .map(|at| &stat[at + 1..])
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no ')' in stat"))?;
        let start_time = after_comm
            .split_whitespace()
            .nth(19)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no starttime in stat"))?;
        Ok(Self { pid, start_time })
    }

    /// Whether this very process still runs (a zombie counts as gone).
    pub fn is_alive(&self) -> bool {
        let Ok(stat) = fs::read_to_string(format!("/proc/{}/stat", self.pid)) else {
            return false;
        };
        let zombie = stat
            .rfind(')')
            .and_then(|at| stat[at + 1..].split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X");
        !zombie && Self::of(self.pid).is_ok_and(|now| now == *self)
    }

    /// Reads `path`; `None` when it is missing or unreadable as a stamp.
    pub fn read(path: &Path) -> Option<Self> {
        Self::parse(&fs::read_to_string(path).ok()?)
    }

    /// Writes the stamp exclusively (0600).
    pub fn write(&self, path: &Path) -> Result<(), QemuError> {
        let write = || -> io::Result<()> {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)?;
            writeln!(file, "{} {}", self.pid, self.start_time)
        };
        write().map_err(|source| QemuError::File {
            path: path.to_owned(),
            source,
        })
    }
}

/// Spawns `binary args` in the network namespace `netns` and a session of its own (so the
/// caller's terminal signals never reach it), stdout and stderr appended to `log`.
pub fn spawn_in_netns(
    binary: &Path,
    args: &[OsString],
    netns: OwnedFd,
    log: &Path,
) -> Result<Child, QemuError> {
    let log_file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(log)
        .map_err(|source| QemuError::File {
            path: log.to_owned(),
            source,
        })?;
    let log_err = log_file.try_clone().map_err(|source| QemuError::File {
        path: log.to_owned(),
        source,
    })?;
    let mut cmd = Command::new(binary);
    cmd.args(args)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(log_err);
    // SAFETY: the hook runs in the forked child before exec, where only async-signal-safe
    // work is allowed: it makes two system calls (setns, setsid) through nix's thin wrappers,
    // which neither allocate nor lock, on an fd the closure owns and that stays open until exec
    // (its CLOEXEC closes it there).
    unsafe {
        cmd.pre_exec(move || {
            setns(netns.as_fd(), CloneFlags::CLONE_NEWNET)?;
            nix::unistd::setsid()?;
            Ok(())
        });
    }
    cmd.spawn().map_err(|source| QemuError::Spawn {
        binary: binary.to_owned(),
        source,
    })
}

/// The last few non-empty lines of a log, to explain a failure in one line.
pub fn log_tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(3)..].join(" | ")
}
