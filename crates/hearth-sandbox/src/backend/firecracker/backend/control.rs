//! Controlling a running VM (pause, resume, snapshot), finding out how its VMM ended, and
//! which VMs exist.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use hearth_seccomp::audit::VmmFault;

use super::{FirecrackerBackend, LaunchMode};
use crate::backend::firecracker::api::{SnapshotCreate, SnapshotType, Vm, VmState};
use crate::backend::firecracker::client::ApiClient;
use crate::backend::firecracker::layout;
use crate::backend::firecracker::process::{ProcessError, ProcessStamp};
use crate::backend::firecracker::FirecrackerError;
use crate::id::SandboxId;
use crate::pidfd::Pidfd;

/// How much of each log a [`VmmExit`] carries.
const LOG_TAIL: u64 = 64 * 1024;

/// How a VMM ended, for the audit (`SeccompAuditLog::record_vmm_fault(exit_status(), &log)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmmExit {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    /// The tails of Firecracker's logger file and of its stdout/stderr.
    pub log: String,
}

impl VmmExit {
    /// The status as a shell reports it: the code, or 128 + the signal.
    pub fn exit_status(&self) -> i32 {
        self.code.or(self.signal.map(|s| 128 + s)).unwrap_or(-1)
    }

    /// What the exit says about the VMM's seccomp filter (148 = a filtered syscall).
    pub fn fault(&self) -> VmmFault {
        VmmFault::from_exit(self.exit_status(), &self.log)
    }
}

/// A snapshot's two files, on the host, in the VM's directory (the caller moves them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFiles {
    pub state: PathBuf,
    pub memory: PathBuf,
}

impl FirecrackerBackend {
    /// How the VMM ended, if this process spawned it and it has exited (non-blocking). Read
    /// before `remove`, which deletes the logs.
    pub fn vmm_exit(&self, id: &SandboxId) -> Option<VmmExit> {
        let status = self.children().get_mut(id)?.try_wait().ok()??;
        Some(self.collect_exit(id, status))
    }

    /// Blocks until the VMM this process spawned exits (run it on a blocking thread); `None`
    /// when this process did not spawn it.
    pub fn wait_vmm_exit(&self, id: &SandboxId) -> Option<VmmExit> {
        let pid = self.children().get(id)?.id();
        // Wait through a pidfd so the lock is not held while the VMM runs; it turns readable
        // when the whole process has exited, so the `wait` below returns at once.
        if let Some(pidfd) = i32::try_from(pid)
            .ok()
            .and_then(|pid| Pidfd::open(pid).ok().flatten())
        {
            while !pidfd.wait(Duration::from_secs(60)).unwrap_or(true) {}
        }
        let status = self.children().get_mut(id)?.wait().ok()?;
        Some(self.collect_exit(id, status))
    }

    fn collect_exit(&self, id: &SandboxId, status: ExitStatus) -> VmmExit {
        use std::os::unix::process::ExitStatusExt;
        VmmExit {
            code: status.code(),
            signal: status.signal(),
            log: self.vmm_log_tail(id),
        }
    }

    /// The tails of Firecracker's logger file and of its stdout/stderr. For a VMM this process
    /// did not spawn (so no exit status), `VmmFault::from_exit(-1, &log)` still finds a
    /// seccomp fault by its "bad syscall (N)" line.
    pub fn vmm_log_tail(&self, id: &SandboxId) -> String {
        let logger = self.layout(id).host(layout::FIRECRACKER_LOG);
        let stdio = self.dirs(id).vm_log();
        format!("{}{}", tail(&logger), tail(&stdio))
    }

    /// A client for a sandbox whose VMM runs.
    fn running_client(&self, id: &SandboxId) -> Result<ApiClient, FirecrackerError> {
        if self.vm_running(id)? {
            Ok(self.api_client(id))
        } else {
            Err(FirecrackerError::NotRunning { id: id.clone() })
        }
    }

    /// `PATCH /vm {"state": "Paused"}`: vCPUs stop; memory and devices stay.
    pub async fn pause(&self, id: &SandboxId) -> Result<(), FirecrackerError> {
        let client = self.running_client(id)?;
        Ok(client
            .send(&Vm {
                state: VmState::Paused,
            })
            .await?)
    }

    /// `PATCH /vm {"state": "Resumed"}`.
    pub async fn resume(&self, id: &SandboxId) -> Result<(), FirecrackerError> {
        let client = self.running_client(id)?;
        Ok(client
            .send(&Vm {
                state: VmState::Resumed,
            })
            .await?)
    }

    /// Takes a full snapshot into the VM's directory: pauses the VM if it runs, and resumes it
    /// afterwards (also when the snapshot failed, so a failed snapshot does not leave the
    /// sandbox frozen). A paused VM stays paused.
    pub async fn snapshot(&self, id: &SandboxId) -> Result<SnapshotFiles, FirecrackerError> {
        let client = self.running_client(id)?;
        let layout = self.layout(id);
        let was_paused = client.instance_info().await?.state == "Paused";
        if !was_paused {
            client
                .send(&Vm {
                    state: VmState::Paused,
                })
                .await?;
        }
        let created = client
            .send(&SnapshotCreate {
                snapshot_path: layout.vmm(layout::SNAPSHOT_STATE),
                mem_file_path: layout.vmm(layout::SNAPSHOT_MEMORY),
                snapshot_type: SnapshotType::Full,
            })
            .await;
        let resumed = if was_paused {
            Ok(())
        } else {
            client
                .send(&Vm {
                    state: VmState::Resumed,
                })
                .await
        };
        created?;
        resumed?;
        Ok(SnapshotFiles {
            state: layout.host(layout::SNAPSHOT_STATE),
            memory: layout.host(layout::SNAPSHOT_MEMORY),
        })
    }

    pub(super) fn vm_running(&self, id: &SandboxId) -> Result<bool, FirecrackerError> {
        if let Some(child) = self.children().get_mut(id) {
            return Ok(matches!(child.try_wait(), Ok(None)));
        }
        let path = self.dirs(id).vm_pid_file();
        let stamp =
            ProcessStamp::read(&path).map_err(|source| ProcessError::PidFile { path, source })?;
        Ok(stamp.is_some_and(|s| s.is_alive()))
    }

    pub(super) fn list_vms(&self) -> Result<Vec<String>, FirecrackerError> {
        let mut ids = BTreeSet::new();
        for name in self.config.runtime.list_sandbox_dirs()? {
            let Ok(id) = SandboxId::parse(&name) else {
                continue;
            };
            if self.vm_running(&id)? {
                ids.insert(name);
            }
        }
        if let LaunchMode::Jailed(jailer) = &self.config.mode {
            // A jail left by a crash is still something to remove.
            ids.extend(jailer.list());
        }
        Ok(ids.into_iter().collect())
    }
}

/// The last [`LOG_TAIL`] bytes of a file, or nothing.
fn tail(path: &Path) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL)));
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}
