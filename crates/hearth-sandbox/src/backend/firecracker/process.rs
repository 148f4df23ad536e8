//! The VMM process: spawning it (in the sandbox's netns when run directly), recording it as
//! `PID STARTTIME`, and finding or killing exactly that process again later.
//!
//! A pid alone could name a different process by the time hearth reads it back; the start
//! time (field 22 of `/proc/PID/stat`) of one pid never repeats, so the pair names one process
//! for good. Killing opens a pidfd first and checks the stamp after, so the signal goes to the
//! process that was checked even if the pid is reused in between.
//!
//! Run directly, the VMM also gets a mount namespace of its own in which its sandbox's `vm/`
//! dir is bind-mounted on one fixed path ([`MountView`]). Firecracker records the paths of its
//! drives in a snapshot and reopens them on restore; seen through the view they are the same
//! for every sandbox (as in a jail, where they are `/config.img`), so a snapshot restores into
//! any sandbox, also after its source is gone.

use std::ffi::{CString, OsString};
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
    #[error("VMM mount view {path}: {source}")]
    View { path: PathBuf, source: io::Error },
    #[error("open VMM log {path}: {source}")]
    Log { path: PathBuf, source: io::Error },
    #[error("spawn {program}{setup}: {source}")]
    Spawn {
        program: PathBuf,
        /// What the child did before exec, which the error may come from.
        setup: &'static str,
        source: io::Error,
    },
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
    /// Direct mode: the VMM's private view of its files (the jailer chroots instead).
    pub view: Option<MountView>,
}

/// `host_dir` bind-mounted on `mount_point` in a mount namespace of the VMM's own: the VMM
/// names its files under `mount_point`, the host finds them in `host_dir`.
#[derive(Debug, Clone)]
pub struct MountView {
    pub host_dir: PathBuf,
    /// An empty directory on the host; only inside the VMM's namespace is anything mounted on it.
    pub mount_point: PathBuf,
}

impl MountView {
    fn c_paths(&self) -> Result<(CString, CString), ProcessError> {
        let c = |path: &PathBuf| {
            use std::os::unix::ffi::OsStrExt;
            CString::new(path.as_os_str().as_bytes()).map_err(|_| ProcessError::View {
                path: path.clone(),
                source: io::Error::from(io::ErrorKind::InvalidInput),
            })
        };
        Ok((c(&self.host_dir)?, c(&self.mount_point)?))
    }
}

/// In the forked child: a new mount namespace in which nothing propagates back to the host,
/// and `host_dir` bound on `mount_point`. Only system calls on pre-built C strings.
fn enter_view(host_dir: &CString, mount_point: &CString) -> io::Result<()> {
    use nix::mount::{mount, MsFlags};
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)?;
    // The host's mounts are usually shared: without this the bind below would appear there.
    mount(
        None::<&std::ffi::CStr>,
        c"/",
        None::<&std::ffi::CStr>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&std::ffi::CStr>,
    )?;
    mount(
        Some(host_dir.as_c_str()),
        mount_point.as_c_str(),
        None::<&std::ffi::CStr>,
        MsFlags::MS_BIND,
        None::<&std::ffi::CStr>,
    )?;
    Ok(())
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
        let view = self.view.as_ref().map(MountView::c_paths).transpose()?;
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        // SAFETY: the closure runs in the forked child before exec and only makes system calls
        // (setns, unshare, mount, setsid), all async-signal-safe, on a file and C strings made
        // before the fork; it allocates nothing and touches no lock. The netns file and the
        // strings stay alive in the parent until `spawn` returns.
        unsafe {
            command.pre_exec(move || {
                if let Some(ns) = &netns {
                    nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(io::Error::from)?;
                }
                if let Some((host_dir, mount_point)) = &view {
                    enter_view(host_dir, mount_point)?;
                }
                nix::unistd::setsid().map_err(io::Error::from)?;
                Ok(())
            });
        }
        let setup = match (&self.netns, &self.view) {
            (_, Some(_)) => " (joining the sandbox's netns, a mount namespace of its own)",
            (Some(_), None) => " (joining the sandbox's netns)",
            (None, None) => "",
        };
        command.spawn().map_err(|source| ProcessError::Spawn {
            program: self.program.clone(),
            setup,
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
            view: None,
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
            view: None,
        };
        assert!(matches!(command.spawn(), Err(ProcessError::Netns { .. })));
    }

    #[test]
    fn the_view_shows_the_vm_dir_to_the_vmm_only() {
        let tmp = tempfile::tempdir().unwrap();
        let (vm_dir, view) = (tmp.path().join("vm"), tmp.path().join("view"));
        std::fs::create_dir(&vm_dir).unwrap();
        std::fs::create_dir(&view).unwrap();
        std::fs::write(vm_dir.join("config.img"), "mine").unwrap();
        let log = tmp.path().join("vmm.log");
        let command = VmmCommand {
            program: "/bin/sh".into(),
            args: vec![
                "-c".into(),
                format!(
                    "cat {0}/config.img; echo; echo made > {0}/made",
                    view.display()
                )
                .into(),
            ],
            netns: None,
            log: log.clone(),
            view: Some(MountView {
                host_dir: vm_dir.clone(),
                mount_point: view.clone(),
            }),
        };
        let status = command.spawn().unwrap().wait().unwrap();
        assert!(
            status.success(),
            "{}",
            std::fs::read_to_string(&log).unwrap()
        );
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "mine\n");
        // What the VMM wrote in its view is in the VM dir; the host's mount point stays empty.
        assert_eq!(
            std::fs::read_to_string(vm_dir.join("made")).unwrap(),
            "made\n"
        );
        assert_eq!(std::fs::read_dir(&view).unwrap().count(), 0);
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mounts.contains(view.to_str().unwrap()), "{mounts}");
    }
}
