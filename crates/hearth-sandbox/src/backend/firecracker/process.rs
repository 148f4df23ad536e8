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
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use crate::pidfd::PidfdError;
pub use crate::process_stamp::ProcessStamp;

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
    use std::time::Duration;

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
