//! QEMU's command line, built as a pure function of a [`QemuPlan`] so it can be tested whole.
//!
//! Choices worth knowing:
//! - `-display none` rather than `-nographic`: `-nographic` wires the serial port and the
//!   monitor to stdio, which a detached VMM does not have; the console goes to a file instead.
//! - Drives are `-drive if=none` plus an explicit `-device`, so the same code serves `pc`
//!   (`virtio-*-pci`) and `microvm` (`virtio-*-device` on virtio-mmio). PCI slots follow the
//!   command line, so the rootfs is `/dev/vda` and the config drive `/dev/vdb`.
//! - No `-pidfile` and no `-daemonize`: `-sandbox spawn=deny` forbids the fork `-daemonize`
//!   needs (QEMU dies of SIGSYS), so hearth spawns QEMU in its own session and records
//!   `PID STARTTIME` in `vmm.pid` itself.
//! - The workspace is shared over 9p with `security_model=none`: files keep their real modes
//!   and owners on the host, the same trust as a container's bind mount (the guest's root acts
//!   as QEMU's uid on that one directory). `mapped-xattr` would hide modes (e.g. `+x`) in xattrs.
//! - `romfile=` on the NIC: there is no network boot, so no iPXE option ROM to find or load.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use crate::backend::vm::{KernelCmdline, VmImagePaths};

/// Which accelerator runs the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Hardware virtualization, with the `microvm` machine.
    Kvm,
    /// Software emulation, with the `pc` machine (`microvm` hangs under TCG).
    Tcg,
}

impl Accel {
    fn machine(self) -> Machine {
        match self {
            Self::Kvm => Machine::Microvm,
            Self::Tcg => Machine::Pc,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Machine {
    Pc,
    Microvm,
}

impl Machine {
    /// The virtio device model for this machine's bus: `virtio-blk` -> `virtio-blk-pci`.
    fn virtio(self, kind: &str) -> String {
        match self {
            Self::Pc => format!("{kind}-pci"),
            Self::Microvm => format!("{kind}-device"),
        }
    }
}

/// How the host reaches the guest's daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Channel {
    /// A virtio-serial port named per the contract, backed by a listening chardev socket.
    VirtioSerial { socket: PathBuf, port_name: String },
    /// vhost-vsock with this guest CID (needs `/dev/vhost-vsock`).
    Vsock { guest_cid: u32 },
}

/// Everything QEMU's command line depends on, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct QemuPlan {
    /// `-name`: shows up in `ps` and QMP.
    pub name: String,
    pub accel: Accel,
    pub memory_mib: u64,
    pub vcpus: u32,
    pub image: VmImagePaths,
    pub cmdline: KernelCmdline,
    pub config_drive: Option<PathBuf>,
    /// The tap inside the sandbox's namespace and the guest NIC's MAC.
    pub nic: Option<Nic>,
    pub workspace: Option<PathBuf>,
    pub channel: Channel,
    pub qmp_socket: PathBuf,
    pub console_log: PathBuf,
    /// QEMU's own seccomp filter (`-sandbox on,...`).
    pub qemu_sandbox: bool,
    /// Sockets and files hearth made for an unprivileged QEMU, which then opens nothing in the
    /// VM directory itself; `None` has QEMU make them at the paths above.
    pub passed: Option<PassedFds>,
}

/// Inherited fd numbers of what hearth bound and opened for QEMU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassedFds {
    /// The listening QMP socket.
    pub qmp: i32,
    /// The listening guest-channel chardev socket (virtio-serial only).
    pub serial: Option<i32>,
    /// `console.log`, open for appending.
    pub console: i32,
}

/// The fdset QEMU finds the console file in (`-add-fd`).
const CONSOLE_FDSET: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    pub tap: String,
    pub mac: [u8; 6],
    /// An fd already attached to the tap, passed to QEMU (which then needs no access to
    /// `/dev/net/tun`); `None` has QEMU open `tap` itself.
    pub fd: Option<i32>,
}

/// QEMU's own seccomp policy: no obsolete syscalls, no setuid/setgid, no fork/exec, no
/// scheduler/affinity changes.
pub const QEMU_SANDBOX: &str =
    "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

/// `-accel` under TCG: the translation buffer bounded to 128 MiB (QEMU's default is 1 GiB on
/// 64-bit hosts, touched as code is translated), which QEMU's cgroup budget counts on.
pub const TCG_ACCEL: &str = "tcg,tb-size=128";

/// Kernel parameters for the `pc` machine: PCI interrupt routing through the PIIX registers
/// rather than ACPI's link methods. Under TCG the AML interpreter takes ~300 ms per link (four of
/// them here), which was 1.5 s of every boot; with this the whole virtio-pci probe takes 35 ms.
pub const PC_KERNEL_ARGS: &str = "acpi=noirq";

/// QEMU's arguments (without the binary) for `plan`.
pub fn build_argv(plan: &QemuPlan) -> Vec<OsString> {
    let machine = plan.accel.machine();
    let mut args = Args::default();
    args.pair("-name", format!("{},debug-threads=on", plan.name));
    match plan.accel {
        Accel::Kvm => {
            args.pair("-accel", "kvm");
            args.pair("-machine", "microvm");
            args.pair("-cpu", "host");
        }
        Accel::Tcg => {
            args.pair("-accel", TCG_ACCEL);
            args.pair("-machine", "pc");
        }
    }
    args.flags(&["-nodefaults", "-no-user-config", "-no-reboot"]);
    args.pair("-display", "none");
    args.pair("-m", format!("{}M", plan.memory_mib));
    args.pair("-smp", plan.vcpus.to_string());
    args.pair("-kernel", &plan.image.kernel);
    args.pair("-initrd", &plan.image.initrd);
    let mut cmdline = plan.cmdline.render();
    if machine == Machine::Pc {
        cmdline.push(' ');
        cmdline.push_str(PC_KERNEL_ARGS);
    }
    args.pair("-append", cmdline);
    drive(&mut args, machine, "root", &plan.image.rootfs);
    if let Some(config) = &plan.config_drive {
        drive(&mut args, machine, "config", config);
    }
    if let Some(nic) = &plan.nic {
        let tap = match nic.fd {
            Some(fd) => format!("tap,id=net0,fd={fd}"),
            None => format!("tap,id=net0,ifname={},script=no,downscript=no", nic.tap),
        };
        args.pair("-netdev", tap);
        let romfile = if machine == Machine::Pc {
            ",romfile="
        } else {
            ""
        };
        args.pair(
            "-device",
            format!(
                "{},netdev=net0,mac={}{romfile}",
                machine.virtio("virtio-net"),
                format_mac(nic.mac)
            ),
        );
    }
    if let Some(workspace) = &plan.workspace {
        args.pair(
            "-fsdev",
            // The guest's owners and modes live in xattrs on the host files: a guest can never
            // make a real setuid file or a file owned by another host user, and QEMU needs no
            // privilege to record them.
            path_opt(
                "local,id=workspace,security_model=mapped-xattr,path=",
                workspace,
            ),
        );
        args.pair(
            "-device",
            format!(
                "{},fsdev=workspace,mount_tag=workspace",
                machine.virtio("virtio-9p")
            ),
        );
    }
    channel(
        &mut args,
        machine,
        &plan.channel,
        plan.passed.and_then(|p| p.serial),
    );
    // The console is appended to, never truncated by QEMU: the supervisor caps the file by
    // truncating it, and QEMU's next write must land at the new end, not at its old offset.
    match plan.passed {
        Some(passed) => {
            args.pair(
                "-chardev",
                format!("socket,id=qmp,fd={},server=on,wait=off", passed.qmp),
            );
            args.pair("-mon", "chardev=qmp,mode=control");
            args.pair(
                "-add-fd",
                format!("fd={},set={CONSOLE_FDSET}", passed.console),
            );
            args.pair(
                "-chardev",
                format!("file,id=console,append=on,path=/dev/fdset/{CONSOLE_FDSET}"),
            );
        }
        None => {
            args.pair(
                "-qmp",
                path_opt("unix:", &plan.qmp_socket).with(",server=on,wait=off"),
            );
            args.pair(
                "-chardev",
                path_opt("file,id=console,append=on,path=", &plan.console_log),
            );
        }
    }
    args.pair("-serial", "chardev:console");
    if plan.qemu_sandbox {
        args.pair("-sandbox", QEMU_SANDBOX);
    }
    args.pair("-msg", "timestamp=on");
    args.0
}

fn drive(args: &mut Args, machine: Machine, id: &str, file: &Path) {
    args.pair(
        "-drive",
        path_opt("file=", file).with(&format!(",if=none,id={id},format=raw,readonly=on")),
    );
    args.pair(
        "-device",
        format!("{},drive={id}", machine.virtio("virtio-blk")),
    );
}

fn channel(args: &mut Args, machine: Machine, channel: &Channel, passed: Option<i32>) {
    match channel {
        Channel::VirtioSerial { socket, port_name } => {
            let chardev = match passed {
                Some(fd) => format!("socket,id=guest,server=on,wait=off,fd={fd}").into(),
                None => path_opt("socket,id=guest,server=on,wait=off,path=", socket),
            };
            args.pair("-chardev", chardev);
            args.pair(
                "-device",
                format!("{},id=vser0", machine.virtio("virtio-serial")),
            );
            args.pair(
                "-device",
                format!("virtserialport,bus=vser0.0,chardev=guest,name={port_name}"),
            );
        }
        Channel::Vsock { guest_cid } => {
            args.pair(
                "-device",
                format!("{},guest-cid={guest_cid}", machine.virtio("vhost-vsock")),
            );
        }
    }
}

/// `52:54:..`-style text of a MAC.
pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A MAC for the guest NIC, stable per sandbox id: locally administered, unicast (`02:...`),
/// the rest from an FNV-1a hash of the id. Two sandboxes never share a segment, so a collision
/// would be harmless anyway.
pub fn mac_for(id: &str) -> [u8; 6] {
    let hash = fnv1a(id.as_bytes());
    let b = hash.to_be_bytes();
    [0x02, 0x68, b[0], b[1], b[2], b[3]]
}

/// A vsock guest CID per sandbox id, from 3 (the first one a guest may have) up.
pub fn cid_for(id: &str) -> u32 {
    let hash = fnv1a(id.as_bytes());
    // Keep clear of the reserved and "any" values at both ends.
    3 + u32::try_from(hash % u64::from(u32::MAX - 16)).unwrap_or(0)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// An option whose value ends in a path. QEMU splits option values at commas (`,,` is a
/// literal comma), so commas in the path are doubled.
fn path_opt(prefix: &str, path: &Path) -> OsString {
    let mut bytes = prefix.as_bytes().to_vec();
    for &b in path.as_os_str().as_bytes() {
        bytes.push(b);
        if b == b',' {
            bytes.push(b',');
        }
    }
    OsString::from_vec(bytes)
}

trait With {
    fn with(self, suffix: &str) -> OsString;
}

impl With for OsString {
    fn with(mut self, suffix: &str) -> OsString {
        self.push(suffix);
        self
    }
}

#[derive(Debug, Default)]
struct Args(Vec<OsString>);

impl Args {
    fn pair(&mut self, flag: &str, value: impl Into<OsString>) {
        self.0.push(flag.into());
        self.0.push(value.into());
    }
    fn flags(&mut self, flags: &[&str]) {
        self.0.extend(flags.iter().map(OsString::from));
    }
}

#[cfg(test)]
mod tests;
