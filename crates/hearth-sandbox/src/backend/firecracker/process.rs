//! The VMM process: spawning it (in the sandbox's netns when run directly), recording it as
//! `PID STARTTIME`, and finding or killing exactly that process again later.
//!
//! A pid alone could name a different process by the time hearth reads it back; the start
//! time (field 22 of `/proc/PID/stat`) of one pid never repeats, so the pair names one process
//! for good. Killing opens a pidfd first and checks the stamp after, so the signal goes to the
//! process that was checked even if the pid is reused in between.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::pidfd::{Pidfd, PidfdError};

/// Errors of the VMM process.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("open network namespace {path}: {source}")]
    Netns { path: PathBuf, source: io::Error },
    #[error("open VMM log {path}: {source}")]
    Log { path: PathBuf, source: io::Error },
    #[error("spawn {program}: {source}")]
    Spawn { program: PathBuf, source: io::Error },
    #[error("{path}: {source}")]
    PidFile { path: PathBuf, source: io::Error },
    #[error("read /proc/{pid}/stat: {source}")]
    Stat { pid: u32, source: io::Error },
    #[error(transparent)]
    Pidfd(#[from] PidfdError),
}

/// A process as recorded in `vmm.pid`: `PID STARTTIME` (clock ticks since boot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessStamp {
    pub pid: u32,
    pub start_time: u64,
}

impl ProcessStamp {
    pub fn parse(text: &str) -> Option<Self> {
        let mut words = text.split_whitespace();
        let pid = words.next()?.parse().ok()?;
        let start_time = words.next()?.parse().ok()?;
        words.next().is_none().then_some(Self { pid, start_time })
    }

    /// The stamp of a live process.
    pub fn of(pid: u32) -> Result<Self, ProcessError> {
        let (start_time, _) = stat(pid).map_err(|source| ProcessError::Stat { pid, source })?;
        Ok(Self { pid, start_time })
    }

    pub fn write(&self, path: &Path) -> Result<(), ProcessError> {
        std::fs::write(path, format!("{} {}\n", self.pid, self.start_time)).map_err(|source| {
            ProcessError::PidFile {
                path: path.to_owned(),
                source,
            }
        })
    }

    /// The stamp in `path`; `None` when the file is missing or unreadable as a stamp.
    pub fn read(path: &Path) -> Result<Option<Self>, ProcessError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(Self::parse(&text)),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(ProcessError::PidFile {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Whether this very process still runs (a zombie has finished running).
    pub fn is_alive(&self) -> bool {
        matches!(stat(self.pid), Ok((start, state)) if start == self.start_time && state != 'Z')
    }

    /// Kills this process, if it is still the one recorded, and waits until it is gone.
    /// Returns whether it had to be killed.
    pub fn kill(&self, timeout: Duration) -> Result<bool, ProcessError> {
        let Ok(pid) = i32::try_from(self.pid) else {
            return Ok(false);
        };
        let Some(pidfd) = Pidfd::open(pid)? else {
            return Ok(false);
        };
        // Checked after the pidfd is open: from here on the pid can't be reused under us.
        if !self.is_alive() {
            return Ok(false);
        }
        pidfd.signal(libc::SIGKILL)?;
        if pidfd.wait(timeout)? {
            Ok(true)
        } else {
            Err(PidfdError::StillRunning {
                pid,
                waited: timeout,
            }
            .into())
        }
    }
}

/// Field 22 (start time) and field 3 (state) of `/proc/PID/stat`.
fn stat(pid: u32) -> io::Result<(u64, char)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed /proc stat");
    // The command name (field 2) is in parentheses and may contain spaces or ')'.
    let after_comm = &text[text.rfind(')').ok_or_else(bad)? + 1..];
    let mut fields = after_comm.split_whitespace();
    let state = fields
        .next()
        .and_then(|s| s.chars().next())
        .ok_or_else(bad)?;
    // After the state come fields 4.., so starttime (22) is 18 further on.
    let start = fields
        .nth(18)
        .and_then(|f| f.parse().ok())
        .ok_or_else(bad)?;
    Ok((start, state))
}

/// What to run for the VMM.
#[derive(Debug, Clone)]
pub struct VmmCommand {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// Join this network namespace before exec (direct mode; the jailer joins it itself).
    pub netns: Option<PathBuf>,
    /// stdout and stderr go here (appended).
    pub log: PathBuf,
}

impl VmmCommand {
    /// Spawns the VMM in its own session, so a signal to hearth's terminal or process group
    /// never reaches it (what the jailer's `--daemonize` would do, minus losing its output).
    pub fn spawn(&self) -> Result<Child, ProcessError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|source| ProcessError::Log {
                path: self.log.clone(),
                source,
            })?;
        let log_err = log.try_clone().map_err(|source| ProcessError::Log {
            path: self.log.clone(),
            source,
        })?;
        let netns = match &self.netns {
            Some(path) => Some(File::open(path).map_err(|source| ProcessError::Netns {
                path: path.clone(),
                source,
            })?),
            None => None,
        };
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        // SAFETY: the closure runs in the forked child before exec and only makes two system
        // calls (setns, setsid), both async-signal-safe; it allocates nothing and touches no
        // lock. The netns file stays open in the parent until `spawn` returns.
        unsafe {
            command.pre_exec(move || {
                if let Some(ns) = &netns {
                    nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(io::Error::from)?;
                }
                nix::unistd::setsid().map_err(io::Error::from)?;
                Ok(())
            });
        }
        command.spawn().map_err(|source| ProcessError::Spawn {
            program: self.program.clone(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip_and_name_a_live_process() {
        let me = ProcessStamp::of(std::process::id()).unwrap();
        assert!(me.is_alive());
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("vmm.pid");
        me.write(&path).unwrap();
        assert_eq!(ProcessStamp::read(&path).unwrap(), Some(me));
        assert_eq!(ProcessStamp::read(&tmp.path().join("none")).unwrap(), None);
        assert_eq!(ProcessStamp::parse("12"), None);
        assert_eq!(ProcessStamp::parse("12 3 4"), None);
        let reused = ProcessStamp {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(!reused.is_alive(), "another start time is another process");
        // And it is not killed either: this test process survives.
        assert!(!reused.kill(Duration::from_secs(1)).unwrap());
    }

    #[test]
    fn spawned_vmm_runs_in_its_own_session_and_netns_and_dies_on_kill() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("vmm.log");
        // A process in a network namespace made for this test stands in for the sandbox's.
        let mut holder = Command::new("unshare")
            .args(["--net", "sleep", "60"])
            .spawn()
            .unwrap();
        let holder_ns = PathBuf::from(format!("/proc/{}/ns/net", holder.id()));
        // unshare execs sleep once the namespace exists; wait until the link differs.
        let own = std::fs::read_link("/proc/self/ns/net").unwrap();
        while std::fs::read_link(&holder_ns).map_or(true, |l| l == own) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let command = VmmCommand {
            program: "/bin/sh".into(),
            args: vec![
                "-c".into(),
                // Field 6 of /proc/PID/stat is the session id (sh's comm has no spaces).
                "readlink /proc/self/ns/net; read -r _ _ _ _ _ sid _ < /proc/$$/stat; \
                 echo $sid; echo $$; exec sleep 60"
                    .into(),
            ],
            netns: Some(holder_ns.clone()),
            log: log.clone(),
        };
        let mut child = command.spawn().unwrap();
        let pid = child.id();
        while std::fs::read_to_string(&log).unwrap().lines().count() < 3 {
            std::thread::sleep(Duration::from_millis(5));
        }
        let text = std::fs::read_to_string(&log).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            std::fs::read_link(&holder_ns).unwrap().to_str().unwrap()
        );
        assert_eq!(lines[1].trim(), pid.to_string(), "not a session leader");
        let stamp = ProcessStamp::of(pid).unwrap();
        assert!(stamp.kill(Duration::from_secs(5)).unwrap());
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));
        assert!(!stamp.is_alive());
        holder.kill().unwrap();
        holder.wait().unwrap();
    }

    #[test]
    fn a_missing_netns_fails_before_spawning() {
        let tmp = tempfile::tempdir().unwrap();
        let command = VmmCommand {
            program: "/bin/true".into(),
            args: vec![],
            netns: Some(tmp.path().join("no-such-ns")),
            log: tmp.path().join("vmm.log"),
        };
        assert!(matches!(command.spawn(), Err(ProcessError::Netns { .. })));
    }
}
