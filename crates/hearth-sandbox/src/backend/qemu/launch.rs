//! Starting QEMU: the VM directory and config drive, the bridged tap, the process inside the
//! sandbox's namespace, and the wait until QEMU answers on QMP; a failed start removes them all.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::argv::{build_argv, Channel, PassedFds, QemuPlan};
use super::process::{self, VmmStamp};
use super::{snapshot, QemuBackend, QemuError, Qmp, MAX_SOCKET_PATH, START_TIMEOUT};
use crate::backend::vm;
use crate::backend::{GuestEndpoint, LaunchContext};
use crate::id::SandboxId;
use crate::net::netns;
use crate::spec::SandboxSpec;
use crate::vmm_cgroup::{VmmCgroup, VmmLimits, CFS_PERIOD_US};

impl QemuBackend {
    pub(super) fn start_inner(
        &self,
        spec: &SandboxSpec,
        ctx: &LaunchContext,
    ) -> Result<GuestEndpoint, QemuError> {
        let plan = self.plan(spec, ctx)?;
        self.start_planned(spec, ctx, &plan, None)
    }

    /// Starts QEMU for `plan`; with `incoming`, it waits for a snapshot's state, then loads it.
    pub(super) fn start_planned(
        &self,
        spec: &SandboxSpec,
        ctx: &LaunchContext,
        plan: &QemuPlan,
        incoming: Option<&Path>,
    ) -> Result<GuestEndpoint, QemuError> {
        check_inputs(plan)?;
        ctx.dirs.create_vm_dir()?;
        let launched = self
            .launch(spec, ctx, plan, incoming.is_some())
            .and_then(|()| {
                snapshot::write_launch_manifest(&ctx.dirs.vm_dir(), &self.config, plan)?;
                match incoming {
                    Some(state) => {
                        snapshot::load(&spec.id, &plan.qmp_socket, state, &ctx.dirs.vm_log())
                    }
                    None => Ok(()),
                }
            });
        match launched {
            Ok(()) => Ok(GuestEndpoint::UnixSocket {
                path: ctx.dirs.guest_socket(),
            }),
            Err(err) => {
                // Leave nothing of ours behind: the process (if any) and the VM directory.
                if let Err(cleanup) = self.remove_vm(&spec.id) {
                    tracing::warn!(id = %spec.id, error = %cleanup, "cleanup after failed start");
                }
                Err(err)
            }
        }
    }

    fn launch(
        &self,
        spec: &SandboxSpec,
        ctx: &LaunchContext,
        plan: &QemuPlan,
        incoming: bool,
    ) -> Result<(), QemuError> {
        let config = vm::spec_guest_config(spec)?;
        vm::write_config_drive(&ctx.dirs.vm_config_img(), &config)?;
        if let Some(net) = &ctx.net {
            let owner = ctx.ids.map(|ids| ids.root());
            crate::net::tap::bridge_for_vm(&ctx.netns_path, net.address, net.prefix, owner)?;
        }
        let ns = netns::open_ns(&ctx.netns_path)?;
        let log = ctx.dirs.vm_log();
        let (mut args, unprivileged) = match ctx.ids {
            Some(ids) => {
                let (argv_plan, unprivileged) = unprivileged(ctx, plan, ids)?;
                (build_argv(&argv_plan), Some(unprivileged))
            }
            None => (build_argv(plan), None),
        };
        if incoming {
            args.extend(["-incoming", "defer"].map(OsString::from));
        }
        let cgroup = VmmCgroup::create(&spec.id, &vmm_limits(spec, plan))?;
        let mut child =
            process::spawn_in_netns(&self.config.binary, &args, ns, &cgroup, &log, unprivileged)?;
        drop(cgroup); // QEMU is in it; only removal (`remove_vm`) touches it again
        let pid = child.id();
        let recorded = VmmStamp::of(pid)
            .map_err(|source| QemuError::File {
                path: PathBuf::from(format!("/proc/{pid}/stat")),
                source,
            })
            .and_then(|stamp| {
                let path = ctx.dirs.vm_pid_file();
                stamp
                    .write_new(&path)
                    .map_err(|source| QemuError::File { path, source })
            });
        let ready = recorded.and_then(|()| wait_qmp(&spec.id, &mut child, &plan.qmp_socket, &log));
        if ready.is_err() {
            let _ = child.kill();
            let _ = child.wait();
        } else {
            // Reap QEMU whenever it exits, should this process live that long (the daemon).
            std::thread::Builder::new()
                .name("hearth-qemu-reap".into())
                .spawn(move || {
                    let _ = child.wait();
                })
                .map_err(|source| QemuError::Spawn {
                    binary: PathBuf::from("(reaper thread)"),
                    source,
                })?;
        }
        ready
    }
}

/// What QEMU needs to run as the sandbox's own unprivileged host root instead of as root: a user
/// namespace that makes it that, and everything it would otherwise open in directories only
/// root may enter, opened (or bound) here and passed by fd: the image files and config drive,
/// the tap, the QMP and guest-channel sockets, the console file. The VM directory stays
/// root's, so an escaped QEMU can replace nothing in it that hearth later trusts (pid file,
/// sockets, logs). Returns the plan QEMU's argv is built from, naming those fds.
fn unprivileged(
    ctx: &LaunchContext,
    plan: &QemuPlan,
    ids: crate::userns::HostIds,
) -> Result<(QemuPlan, process::Unprivileged), QemuError> {
    let root = crate::userns::IdMapping {
        inside_start: 0,
        outside_start: ids.root(),
        count: 1,
    };
    let userns = crate::userns::new_userns(root, root)?;
    let mut argv_plan = plan.clone();
    let mut files: Vec<OwnedFd> = Vec::new();
    let mut keep = |fd: OwnedFd| -> i32 {
        let raw = fd.as_raw_fd();
        files.push(fd);
        raw
    };
    for path in [
        &mut argv_plan.image.kernel,
        &mut argv_plan.image.initrd,
        &mut argv_plan.image.rootfs,
    ] {
        let raw = keep(open_readable(path)?);
        *path = PathBuf::from(format!("/proc/self/fd/{raw}"));
    }
    if let Some(config) = &mut argv_plan.config_drive {
        let raw = keep(open_readable(config)?);
        *config = PathBuf::from(format!("/proc/self/fd/{raw}"));
    }
    if let Some(nic) = &mut argv_plan.nic {
        nic.fd = Some(keep(crate::net::tap::attach_vm_tap(&ctx.netns_path)?));
    }
    let qmp = keep(bind_socket(&plan.qmp_socket)?.into());
    let serial = match &plan.channel {
        Channel::VirtioSerial { socket, .. } => Some(keep(bind_socket(socket)?.into())),
        Channel::Vsock { .. } => None,
    };
    let console = std::fs::OpenOptions::new()
        .create_new(true)
        .append(true)
        .mode(0o600)
        .open(&plan.console_log)
        .map_err(|source| QemuError::File {
            path: plan.console_log.clone(),
            source,
        })?;
    let console = keep(console.into());
    argv_plan.passed = Some(PassedFds {
        qmp,
        serial,
        console,
    });
    // Under KVM it opens /dev/kvm itself: it keeps that device's group.
    let groups = match plan.accel {
        super::Accel::Kvm => std::fs::metadata("/dev/kvm")
            .map(|meta| vec![std::os::unix::fs::MetadataExt::gid(&meta)])
            .unwrap_or_default(),
        super::Accel::Tcg => Vec::new(),
    };
    Ok((
        argv_plan,
        process::Unprivileged {
            userns,
            groups,
            files,
        },
    ))
}

/// Opens an image file or the config drive for QEMU, which opens `/proc/self/fd/N` again: that
/// checks the file's own mode, so it must be readable by others (their directories keep
/// everyone else out; older images were made 0600). `O_NOFOLLOW`: a link is not ours to chmod.
fn open_readable(path: &Path) -> Result<OwnedFd, QemuError> {
    let file_err = |source| QemuError::File {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(file_err)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o644))
        .map_err(file_err)?;
    Ok(file.into())
}

/// Binds a listening socket for QEMU at `path` (0600; root's, in root's VM directory).
fn bind_socket(path: &Path) -> Result<std::os::unix::net::UnixListener, QemuError> {
    let socket_err = |source| QemuError::File {
        path: path.to_owned(),
        source,
    };
    let listener = std::os::unix::net::UnixListener::bind(path).map_err(socket_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(socket_err)?;
    Ok(listener)
}

/// QEMU's own needs beyond the guest's RAM under TCG: its translation buffer (`tb-size`, set in
/// the argv), device emulation and the page cache of the images it reads.
const TCG_OVERHEAD_BYTES: u64 = 384 << 20;
/// ... and under KVM, where no code is translated.
const KVM_OVERHEAD_BYTES: u64 = 192 << 20;
/// Threads QEMU may have: vCPUs, I/O workers, RCU, QMP; it never forks (`-sandbox on`).
const VMM_PIDS: u32 = 256;

/// The limits of QEMU's cgroup: the sandbox's memory plus QEMU's overhead, its CPU share.
fn vmm_limits(spec: &SandboxSpec, plan: &QemuPlan) -> VmmLimits {
    let overhead = match plan.accel {
        super::Accel::Kvm => KVM_OVERHEAD_BYTES,
        super::Accel::Tcg => TCG_OVERHEAD_BYTES,
    };
    VmmLimits {
        memory_bytes: (plan.memory_mib << 20).saturating_add(overhead),
        cpu_quota_us: spec.limits.cpus.cfs_quota(CFS_PERIOD_US),
        pids: VMM_PIDS,
    }
}

/// Checks what QEMU would otherwise fail on less clearly.
fn check_inputs(plan: &QemuPlan) -> Result<(), QemuError> {
    for path in [&plan.image.kernel, &plan.image.initrd, &plan.image.rootfs] {
        if !path.is_file() {
            return Err(QemuError::ImageFileMissing { path: path.clone() });
        }
    }
    if let Some(workspace) = &plan.workspace {
        if !workspace.is_dir() {
            return Err(QemuError::WorkspaceNotDir {
                path: workspace.clone(),
            });
        }
    }
    let mut sockets = vec![&plan.qmp_socket];
    if let Channel::VirtioSerial { socket, .. } = &plan.channel {
        sockets.push(socket);
    }
    for socket in sockets {
        let len = socket.as_os_str().len();
        if len > MAX_SOCKET_PATH {
            return Err(QemuError::SocketPathTooLong {
                path: socket.clone(),
                len,
            });
        }
    }
    Ok(())
}

/// Waits until QEMU answers on QMP (its machine is built and its main loop runs), or exits.
fn wait_qmp(
    id: &SandboxId,
    child: &mut std::process::Child,
    socket: &Path,
    log: &Path,
) -> Result<(), QemuError> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(QemuError::Exited {
                id: id.clone(),
                status: status.to_string(),
                tail: process::log_tail(log),
            });
        }
        if socket.exists() {
            match Qmp::connect(socket).and_then(|mut qmp| qmp.query_status()) {
                Ok(_) => return Ok(()),
                // Dying right after binding the socket: the next round sees the exit.
                Err(_) if child.try_wait().is_ok_and(|s| s.is_some()) => continue,
                Err(err) => tracing::debug!(%id, error = %err, "QMP not ready yet"),
            }
        }
        if start.elapsed() >= START_TIMEOUT {
            return Err(QemuError::StartTimeout {
                id: id.clone(),
                waited: start.elapsed(),
                tail: process::log_tail(log),
            });
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}
