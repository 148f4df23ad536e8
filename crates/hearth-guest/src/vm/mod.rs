//! `hearth-guest init`: PID 1 of a microVM. It turns the initramfs into a working system, then
//! serves exactly like OCI mode (same reaper, same router), on the transport the kernel command
//! line names.
//!
//! Boot: mount /proc, /sys, /dev -> read `/proc/cmdline` -> load the modules listed in
//! `/hearth/modules` -> mount the rootfs read-only at /newroot with tmpfs /tmp /run /root and a
//! tmpfs or 9p /workspace -> move /dev /proc /sys over -> switch root -> /dev/pts, hostname,
//! loopback, eth0, resolv.conf -> read the config drive -> serve. Any failure is printed on
//! the console and the VM powers off, so the host sees the VMM exit instead of a hung guest.

pub mod cmdline;
mod net;
pub mod snapshot;
pub mod workload_ns;

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hearth_proto::{VmGuestConfig, VM_CONFIG_SIZE};
use nix::mount::{mount, MsFlags};

use crate::seccomp::{GuestFilters, SeccompFileError};
use crate::transport::Listen;
use cmdline::{BootParams, CmdlineError, Workspace};

/// The initramfs file listing modules to load, one absolute path per line, dependencies first.
const MODULES_LIST: &str = "/hearth/modules";
const NEW_ROOT: &str = "/newroot";
/// How the 9p workspace is mounted, at boot and again after a snapshot.
const NINEP_OPTIONS: &str = "trans=virtio,version=9p2000.L,msize=512000";

/// A boot step that failed.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("mount {what} at {target}: {source}")]
    Mount {
        what: String,
        target: PathBuf,
        source: nix::Error,
    },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{op}: {source}")]
    Sys {
        op: &'static str,
        source: nix::Error,
    },
    #[error(transparent)]
    Cmdline(#[from] CmdlineError),
    #[error("load module {path}: {source}")]
    Module { path: PathBuf, source: nix::Error },
    #[error("{0} did not appear within 10 s")]
    DeviceTimeout(PathBuf),
    #[error("config drive {path}: {source}")]
    Config {
        path: PathBuf,
        source: hearth_proto::vm::VmConfigError,
    },
    #[error(transparent)]
    Seccomp(#[from] SeccompFileError),
    #[error(transparent)]
    Net(#[from] net::NetError),
}

/// What the booted guest serves with.
#[derive(Debug)]
pub struct Booted {
    pub listen: Listen,
    /// What /workspace is, for the snapshot endpoints.
    pub workspace: Workspace,
    pub seccomp: Option<GuestFilters>,
    /// What every exec is put in (see `crate::confine`).
    pub confinement: crate::confine::Confinement,
    /// A template's env and working dir for every exec (from the config drive).
    pub exec_defaults: hearth_proto::ExecDefaults,
}

fn mount_fs(
    fstype: &str,
    source: &str,
    target: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), VmError> {
    mount(Some(source), target, Some(fstype), flags, data).map_err(|source| VmError::Mount {
        what: fstype.to_string(),
        target: target.into(),
        source,
    })
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> VmError {
    let path = path.to_path_buf();
    move |source| VmError::Io { op, path, source }
}

/// Everything up to serving. `Ok(None)` means the baseline boot: report and power off.
pub fn boot() -> Result<Option<Booted>, VmError> {
    let started = Instant::now();
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount_fs("proc", "proc", "/proc", nosuid, None)?;
    let cmdline = std::fs::read_to_string("/proc/cmdline")
        .map_err(io_err("read", Path::new("/proc/cmdline")))?;
    let params = BootParams::parse(&cmdline)?;
    tracing::info!(kernel_uptime = %uptime(), "init started");
    if params.baseline {
        return Ok(None);
    }
    mount_fs("sysfs", "sysfs", "/sys", nosuid, None)?;
    mount_fs(
        "devtmpfs",
        "devtmpfs",
        "/dev",
        MsFlags::MS_NOSUID,
        Some("mode=0755"),
    )?;
    load_modules(&params)?;
    mount_root(&params)?;
    switch_root()?;
    std::fs::create_dir_all("/dev/pts").map_err(io_err("create", Path::new("/dev/pts")))?;
    mount_fs(
        "devpts",
        "devpts",
        "/dev/pts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )?;
    std::fs::create_dir_all("/dev/shm").map_err(io_err("create", Path::new("/dev/shm")))?;
    mount_fs(
        "tmpfs",
        "shm",
        "/dev/shm",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )?;
    let config = match &params.config {
        Some(path) => read_config(path)?,
        None => VmGuestConfig::default(),
    };
    for (name, value) in &config.env {
        // Single-threaded still: no runtime, no other threads read the environment yet.
        std::env::set_var(name, value);
    }
    let hostname = if config.hostname.is_empty() {
        "hearth"
    } else {
        &config.hostname
    };
    nix::unistd::sethostname(hostname).map_err(|source| VmError::Sys {
        op: "sethostname",
        source,
    })?;
    net::loopback_up()?;
    if let Some(net) = &params.net {
        net::configure_eth0(net)?;
    }
    if let Some(dns) = params.dns {
        let path = Path::new("/run/resolv.conf");
        std::fs::write(path, format!("nameserver {dns}\n")).map_err(io_err("write", path))?;
    }
    let seccomp = match config.seccomp_bpf().map_err(|source| VmError::Config {
        path: params.config.clone().unwrap_or_default(),
        source,
    })? {
        Some(bytes) => Some(GuestFilters::from_bytes(
            &bytes,
            Path::new("hearth.config"),
        )?),
        None => None,
    };
    let cgroup = workload_ns::cgroup(config.pids_max)?;
    let confinement = crate::confine::Confinement::vm(cgroup, workload_ns::mount_ns()?)
        .map_err(io_err("read", Path::new("/proc/sys/kernel/cap_last_cap")))?;
    tracing::info!(
        elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        kernel_uptime = %uptime(),
        "guest booted"
    );
    Ok(Some(Booted {
        // Present unless baseline, which returned above.
        listen: params
            .transport
            .unwrap_or(Listen::Vsock(hearth_proto::GUEST_VSOCK_PORT)),
        workspace: params.workspace,
        seccomp,
        confinement,
        exec_defaults: config.exec_defaults.unwrap_or_default(),
    }))
}

/// Seconds since the kernel started (`/proc/uptime`), for boot timing on the console.
fn uptime() -> String {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|text| text.split_whitespace().next().map(str::to_string))
        .unwrap_or_default()
}

/// Modules only a vsock transport uses.
const VSOCK_MODULES: [&str; 3] = [
    "vsock",
    "vmw_vsock_virtio_transport_common",
    "vmw_vsock_virtio_transport",
];
/// Modules only the 9p workspace share uses (netfs and fscache are 9p's dependencies).
const NINE_P_MODULES: [&str; 5] = ["9pnet", "9pnet_virtio", "netfs", "fscache", "9p"];

/// Whether the boot needs the module at `path`: each one costs tens of milliseconds under TCG,
/// so the vsock and 9p stacks are loaded only when the command line asks for them.
fn wanted(path: &Path, params: &BootParams) -> bool {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.split('.').next())
        .unwrap_or_default();
    if VSOCK_MODULES.contains(&name) {
        return matches!(params.transport, Some(Listen::Vsock(_)) | None);
    }
    if NINE_P_MODULES.contains(&name) {
        return params.workspace == Workspace::NineP;
    }
    true
}

fn load_modules(params: &BootParams) -> Result<(), VmError> {
    let list = match std::fs::read_to_string(MODULES_LIST) {
        Ok(list) => list,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("read", Path::new(MODULES_LIST))(e)),
    };
    // Per-module times go to the console at debug level: under TCG a slow probe (an ACPI method,
    // a big relocation) shows up here first.
    let started = Instant::now();
    let mut loaded = 0usize;
    for line in list.lines().filter(|l| !l.is_empty()) {
        let path = Path::new(line);
        if !wanted(path, params) {
            continue;
        }
        let file = std::fs::File::open(path).map_err(io_err("open", path))?;
        let module_started = Instant::now();
        loaded += 1;
        match nix::kmod::finit_module(&file, c"", nix::kmod::ModuleInitFlags::empty()) {
            Ok(()) | Err(nix::Error::EEXIST) => {}
            Err(source) => {
                return Err(VmError::Module {
                    path: path.into(),
                    source,
                })
            }
        }
        tracing::debug!(module = %path.display(), elapsed = ?module_started.elapsed(), "module loaded");
    }
    tracing::info!(modules = loaded, elapsed = ?started.elapsed(), "modules loaded");
    Ok(())
}

fn wait_for(path: &Path) -> Result<(), VmError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        if Instant::now() > deadline {
            return Err(VmError::DeviceTimeout(path.into()));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

fn mount_root(params: &BootParams) -> Result<(), VmError> {
    let root = params.root.as_deref().unwrap_or(Path::new("/dev/vda"));
    wait_for(root)?;
    let root_str = root.to_string_lossy();
    mount_fs(
        "ext4",
        &root_str,
        NEW_ROOT,
        MsFlags::MS_RDONLY | MsFlags::MS_NODEV,
        None,
    )?;
    let writable = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    mount_fs(
        "tmpfs",
        "tmpfs",
        "/newroot/tmp",
        writable,
        Some("mode=1777"),
    )?;
    mount_fs(
        "tmpfs",
        "tmpfs",
        "/newroot/run",
        writable,
        Some("mode=0755"),
    )?;
    mount_fs(
        "tmpfs",
        "tmpfs",
        "/newroot/root",
        writable,
        Some("mode=0700"),
    )?;
    match params.workspace {
        Workspace::Tmpfs => mount_fs(
            "tmpfs",
            "workspace",
            "/newroot/workspace",
            writable,
            Some("mode=0755"),
        ),
        Workspace::NineP => mount_fs(
            "9p",
            "workspace",
            "/newroot/workspace",
            writable,
            Some(NINEP_OPTIONS),
        ),
    }
}

/// Moves the pseudo filesystems into the new root and makes it `/`, as `switch_root` does.
/// The initramfs stays in memory underneath; it holds only this binary and the modules.
fn switch_root() -> Result<(), VmError> {
    for dir in ["/dev", "/proc", "/sys"] {
        let target = format!("{NEW_ROOT}{dir}");
        mount(
            Some(dir),
            target.as_str(),
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        )
        .map_err(|source| VmError::Mount {
            what: format!("--move {dir}"),
            target: target.clone().into(),
            source,
        })?;
    }
    let sys = |op| move |source| VmError::Sys { op, source };
    nix::unistd::chdir(NEW_ROOT).map_err(sys("chdir /newroot"))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>).map_err(|source| {
        VmError::Mount {
            what: "--move /newroot".into(),
            target: "/".into(),
            source,
        }
    })?;
    nix::unistd::chroot(".").map_err(sys("chroot"))?;
    nix::unistd::chdir("/").map_err(sys("chdir /"))
}

fn read_config(path: &Path) -> Result<VmGuestConfig, VmError> {
    wait_for(path)?;
    let mut bytes = vec![0u8; VM_CONFIG_SIZE];
    let mut file = std::fs::File::open(path).map_err(io_err("open", path))?;
    let mut filled = 0;
    while filled < bytes.len() {
        match file
            .read(&mut bytes[filled..])
            .map_err(io_err("read", path))?
        {
            0 => break,
            n => filled += n,
        }
    }
    VmGuestConfig::from_drive(&bytes[..filled]).map_err(|source| VmError::Config {
        path: path.into(),
        source,
    })
}

/// Syncs and powers the VM off; PID 1 must never simply exit (the kernel would panic).
pub fn power_off() -> ! {
    nix::unistd::sync();
    let err = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    eprintln!("hearth-guest: power off failed: {err:?}");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vsock_and_9p_modules_load_only_when_the_command_line_needs_them() {
        let dir = "/lib/modules/6.1.0-57-amd64/kernel";
        let vsock = PathBuf::from(format!("{dir}/net/vmw_vsock/vmw_vsock_virtio_transport.ko"));
        let nine_p = PathBuf::from(format!("{dir}/fs/9p/9p.ko"));
        let ext4 = PathBuf::from(format!("{dir}/fs/ext4/ext4.ko"));
        let serial = BootParams::parse(
            "quiet hearth.transport=virtio-serial:org.hearth.guest.0 hearth.root=/dev/vda",
        )
        .unwrap();
        assert!(!wanted(&vsock, &serial) && !wanted(&nine_p, &serial));
        assert!(wanted(&ext4, &serial));
        let vsock_9p =
            BootParams::parse("hearth.transport=vsock:1024 hearth.workspace=9p").unwrap();
        assert!(wanted(&vsock, &vsock_9p) && wanted(&nine_p, &vsock_9p));
    }
}
