//! The OCI runtime binary (runc, crun or runsc): finding it and running its commands.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cgroup::CgroupVersion;
use crate::host_tools::find_in_path;

/// The OCI runtimes hearth knows how to drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OciRuntimeKind {
    Runc,
    Crun,
    /// gVisor: a user-space kernel in front of the host's.
    Runsc,
}

impl OciRuntimeKind {
    pub const ALL: [Self; 3] = [Self::Runc, Self::Crun, Self::Runsc];

    pub fn binary_name(self) -> &'static str {
        match self {
            Self::Runc => "runc",
            Self::Crun => "crun",
            Self::Runsc => "runsc",
        }
    }

    /// Whether this runtime works with the host's cgroups (crun 1.x refuses hybrid hierarchies).
    pub fn supports(self, cgroups: CgroupVersion) -> bool {
        !(self == Self::Crun && cgroups == CgroupVersion::Hybrid)
    }
}

impl fmt::Display for OciRuntimeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.binary_name())
    }
}

impl FromStr for OciRuntimeKind {
    type Err = RuntimeError;
    fn from_str(raw: &str) -> Result<Self, RuntimeError> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.binary_name() == raw)
            .ok_or_else(|| RuntimeError::UnknownKind(raw.to_owned()))
    }
}

/// Errors finding or running the OCI runtime.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("unknown OCI runtime {0:?}; choose runc, crun or runsc")]
    UnknownKind(String),
    #[error("no usable OCI runtime found in PATH (tried {tried}); install one, e.g. `apt-get install runc`")]
    NoneFound { tried: String },
    #[error("OCI runtime {kind} not found in PATH; install it, e.g. `apt-get install {kind}`")]
    NotInstalled { kind: OciRuntimeKind },
    #[error("{kind} does not support this host's {cgroups} cgroups; use runc")]
    UnsupportedCgroups {
        kind: OciRuntimeKind,
        cgroups: CgroupVersion,
    },
    #[error("cannot run {binary}: {source}")]
    Spawn { binary: PathBuf, source: io::Error },
    #[error("cannot open {path}: {source}")]
    Log { path: PathBuf, source: io::Error },
    #[error("`{kind} {command}` failed: {message}")]
    Failed {
        kind: OciRuntimeKind,
        command: &'static str,
        message: String,
    },
    #[error("`{kind} {command}` printed output hearth cannot parse: {source}")]
    Parse {
        kind: OciRuntimeKind,
        command: &'static str,
        source: serde_json::Error,
    },
}

/// A located OCI runtime, with hearth's private state root.
#[derive(Debug, Clone)]
pub struct OciRuntime {
    pub kind: OciRuntimeKind,
    pub binary: PathBuf,
    /// `--root`: where the runtime keeps container state, private to hearth.
    pub state_root: PathBuf,
}

#[derive(Debug, Deserialize)]
struct ContainerState {
    id: String,
    status: String,
    #[serde(default)]
    pid: i32,
}

impl OciRuntime {
    /// Finds the requested runtime, or the best one for this host: runc on v1 and hybrid
    /// hosts, crun (faster to start) on v2 hosts when it is installed.
    pub fn detect(
        requested: Option<OciRuntimeKind>,
        state_root: PathBuf,
    ) -> Result<Self, RuntimeError> {
        let cgroups = CgroupVersion::detect();
        if let Some(kind) = requested {
            if !kind.supports(cgroups) {
                return Err(RuntimeError::UnsupportedCgroups { kind, cgroups });
            }
            let binary =
                find_in_path(kind.binary_name()).ok_or(RuntimeError::NotInstalled { kind })?;
            return Ok(Self {
                kind,
                binary,
                state_root,
            });
        }
        let order: &[OciRuntimeKind] = if cgroups == CgroupVersion::V2 {
            &[OciRuntimeKind::Crun, OciRuntimeKind::Runc]
        } else {
            &[OciRuntimeKind::Runc, OciRuntimeKind::Crun]
        };
        order
            .iter()
            .filter(|kind| kind.supports(cgroups))
            .find_map(|&kind| {
                find_in_path(kind.binary_name()).map(|binary| Self {
                    kind,
                    binary,
                    state_root: state_root.clone(),
                })
            })
            .ok_or_else(|| RuntimeError::NoneFound {
                tried: "crun, runc".to_owned(),
            })
    }

    /// The runtime's first `--version` line, e.g. `runc version 1.1.5+ds1`.
    pub fn version(&self) -> Option<String> {
        let out = Command::new(&self.binary).arg("--version").output().ok()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .map(str::to_owned)
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--root").arg(&self.state_root);
        cmd.stdin(Stdio::null());
        cmd
    }

    /// `run --detach`: creates and starts the container; the runtime exits once PID 1 runs and
    /// its host pid is in `pid_file`.
    /// PID 1's stdout and stderr go to `stdio_log`; `pass_fds` reach PID 1 as fds 3, 4, ...
    /// (`--preserve-fds`).
    pub fn run_detached(
        &self,
        container: &str,
        bundle: &Path,
        runtime_log: &Path,
        stdio_log: &Path,
        pid_file: &Path,
        pass_fds: &[BorrowedFd<'_>],
    ) -> Result<(), RuntimeError> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(stdio_log)
            .map_err(|source| RuntimeError::Log {
                path: stdio_log.to_owned(),
                source,
            })?;
        let log_err = log.try_clone().map_err(|source| RuntimeError::Log {
            path: stdio_log.to_owned(),
            source,
        })?;
        let mut cmd = self.command();
        cmd.arg("--log")
            .arg(runtime_log)
            .arg("--log-format")
            .arg("json");
        cmd.args(["run", "--detach", "--pid-file"]).arg(pid_file);
        // Copies numbered above every target, so placing one cannot overwrite another.
        let sources = pass_fds
            .iter()
            .map(|fd| nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(10)))
            .map(|raw| {
                // SAFETY: F_DUPFD_CLOEXEC just returned this fd; this Vec alone owns it.
                raw.map(|raw| unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) })
            })
            .collect::<Result<Vec<OwnedFd>, _>>()
            .map_err(|errno| RuntimeError::Spawn {
                binary: self.binary.clone(),
                source: errno.into(),
            })?;
        if !sources.is_empty() {
            cmd.arg("--preserve-fds").arg(sources.len().to_string());
            let raws: Vec<i32> = sources.iter().map(AsRawFd::as_raw_fd).collect();
            // SAFETY: between fork and exec only dup2 runs, an async-signal-safe call on fds
            // the child inherited (all numbered 10 and up, the targets 3 and up); dup2 leaves
            // the targets without close-on-exec, as the runtime needs.
            unsafe {
                cmd.pre_exec(move || {
                    for (target, &raw) in (3..).zip(&raws) {
                        nix::unistd::dup2(raw, target)?;
                    }
                    Ok(())
                });
            }
        }
        cmd.arg("--bundle").arg(bundle).arg(container);
        cmd.stdout(log).stderr(log_err);
        let status = cmd.status().map_err(|source| RuntimeError::Spawn {
            binary: self.binary.clone(),
            source,
        })?;
        if status.success() {
            return Ok(());
        }
        Err(RuntimeError::Failed {
            kind: self.kind,
            command: "run",
            message: last_error_in_log(runtime_log),
        })
    }

    /// `delete --force`: kills and removes the container and its cgroup. A container that does
    /// not exist is not an error.
    pub fn delete_force(&self, container: &str) -> Result<(), RuntimeError> {
        let out = self.output("delete", &["delete", "--force", container])?;
        if out.status.success() || mentions_missing(&out) {
            return Ok(());
        }
        Err(self.failed("delete", &out))
    }

    /// Kills the container's init (which takes every other process of its PID namespace with
    /// it), waits for it through a pidfd, then deletes the stopped container. Much faster than
    /// `delete --force`, which polls in 100 ms steps; that stays the fallback.
    pub fn stop_and_delete(&self, container: &str) -> Result<(), RuntimeError> {
        let state = match self.state(container) {
            Ok(None) => return Ok(()),
            Ok(Some(state)) => state,
            Err(_) => return self.delete_force(container),
        };
        if state.pid > 0 && state.status != "stopped" {
            if let Err(err) = crate::pidfd::kill_and_wait(state.pid, Duration::from_secs(5)) {
                tracing::warn!(%container, error = %err, "fast stop failed; falling back to delete --force");
                return self.delete_force(container);
            }
        }
        let out = self.output("delete", &["delete", container])?;
        if out.status.success() || mentions_missing(&out) {
            return Ok(());
        }
        self.delete_force(container)
    }

    /// The container's status (`running`, `created`, `stopped`, ...), `None` if it is unknown.
    pub fn status(&self, container: &str) -> Result<Option<String>, RuntimeError> {
        Ok(self.state(container)?.map(|state| state.status))
    }

    /// `state`: the container's status and init pid, `None` if the runtime does not know it.
    fn state(&self, container: &str) -> Result<Option<ContainerState>, RuntimeError> {
        let out = self.output("state", &["state", container])?;
        if !out.status.success() {
            return if mentions_missing(&out) {
                Ok(None)
            } else {
                Err(self.failed("state", &out))
            };
        }
        serde_json::from_slice(&out.stdout)
            .map(Some)
            .map_err(|source| RuntimeError::Parse {
                kind: self.kind,
                command: "state",
                source,
            })
    }

    /// Ids of all containers under hearth's state root.
    pub fn list(&self) -> Result<Vec<String>, RuntimeError> {
        let out = self.output("list", &["list", "--format", "json"])?;
        if !out.status.success() {
            return Err(self.failed("list", &out));
        }
        // runc prints `null` when there are no containers.
        let states: Option<Vec<ContainerState>> =
            serde_json::from_slice(&out.stdout).map_err(|source| RuntimeError::Parse {
                kind: self.kind,
                command: "list",
                source,
            })?;
        Ok(states
            .unwrap_or_default()
            .into_iter()
            .map(|s| s.id)
            .collect())
    }

    fn output(&self, _command: &'static str, args: &[&str]) -> Result<Output, RuntimeError> {
        self.command()
            .args(args)
            .output()
            .map_err(|source| RuntimeError::Spawn {
                binary: self.binary.clone(),
                source,
            })
    }

    fn failed(&self, command: &'static str, out: &Output) -> RuntimeError {
        let message = String::from_utf8_lossy(&out.stderr)
            .trim()
            .lines()
            .last()
            .unwrap_or("no error output")
            .to_owned();
        RuntimeError::Failed {
            kind: self.kind,
            command,
            message,
        }
    }
}

fn mentions_missing(out: &Output) -> bool {
    let stderr = String::from_utf8_lossy(&out.stderr);
    stderr.contains("does not exist")
        || stderr.contains("not found")
        || stderr.contains("No such file")
}

/// The runtime's last error message from its JSON log (`{"level":"error","msg":...}`).
fn last_error_in_log(path: &Path) -> String {
    let Ok(text) = std::fs::read_to_string(path) else {
        return "no runtime log".to_owned();
    };
    text.lines()
        .rev()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|entry| entry["level"] == "error")
        .and_then(|entry| entry["msg"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "the runtime failed without logging an error".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_runtime_names() {
        assert_eq!(
            "runc".parse::<OciRuntimeKind>().unwrap(),
            OciRuntimeKind::Runc
        );
        assert_eq!(
            "runsc".parse::<OciRuntimeKind>().unwrap(),
            OciRuntimeKind::Runsc
        );
        assert!(matches!(
            "docker".parse::<OciRuntimeKind>(),
            Err(RuntimeError::UnknownKind(_))
        ));
    }

    #[test]
    fn crun_is_refused_on_hybrid_cgroups() {
        assert!(!OciRuntimeKind::Crun.supports(CgroupVersion::Hybrid));
        assert!(OciRuntimeKind::Crun.supports(CgroupVersion::V2));
        assert!(OciRuntimeKind::Runc.supports(CgroupVersion::Hybrid));
    }

    #[test]
    fn reads_last_error_from_json_log() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("log");
        std::fs::write(
            &log,
            "{\"level\":\"info\",\"msg\":\"a\"}\n{\"level\":\"error\",\"msg\":\"boom\"}\n",
        )
        .unwrap();
        assert_eq!(last_error_in_log(&log), "boom");
    }
}
