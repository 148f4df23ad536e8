//! `hearth doctor`: what this host can run, and a one-line fix for each failing check.

use std::path::Path;
use std::process::Command;

use hearth_net::netns;
use hearth_sandbox::backend::OciRuntimeKind;
use hearth_sandbox::cgroup::CgroupVersion;
use hearth_sandbox::host_tools::find_in_path;
use serde::Serialize;

use crate::cli::escape::field;
use crate::cli::output::{self, outln};
use crate::config::Settings;
use crate::exit::{code, ErrorKind};

/// One check's outcome.
#[derive(Debug, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    /// What was found.
    pub detail: String,
    /// How to fix it, when it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
    /// Whether the OCI backend (the default) needs this check to pass.
    pub required: bool,
}

impl Check {
    pub(crate) fn pass(name: &'static str, detail: impl Into<String>, required: bool) -> Self {
        Self {
            name,
            ok: true,
            detail: detail.into(),
            fix: None,
            required,
        }
    }
    pub(crate) fn fail(
        name: &'static str,
        detail: impl Into<String>,
        fix: impl Into<String>,
        required: bool,
    ) -> Self {
        Self {
            name,
            ok: false,
            detail: detail.into(),
            fix: Some(fix.into()),
            required,
        }
    }
}

pub fn run(settings: &Settings, json: bool) -> anyhow::Result<u8> {
    let checks = collect(settings);
    if json {
        output::print_json(&checks)?;
    } else {
        for check in &checks {
            let mark = if check.ok {
                "ok  "
            } else if check.required {
                "FAIL"
            } else {
                "no  "
            };
            // Details quote other programs' version lines and error messages.
            outln!("{mark} {:<12} {}", check.name, field(&check.detail))?;
            if let Some(fix) = &check.fix {
                outln!("     {:<12} fix: {}", "", field(fix))?;
            }
        }
    }
    let usable = checks.iter().all(|c| c.ok || !c.required);
    Ok(if usable {
        0
    } else {
        code(ErrorKind::HostLacks)
    })
}

fn collect(settings: &Settings) -> Vec<Check> {
    let cgroups = CgroupVersion::detect();
    let mut checks = vec![check_root(), check_cgroups(cgroups)];
    checks.extend(check_oci_runtimes(cgroups));
    checks.push(check_guest_binary(&settings.guest_binary));
    checks.push(check_tool(
        "nft",
        &["--version"],
        "apt-get install nftables",
        true,
    ));
    checks.push(check_tool(
        "mkfs.ext4",
        &["-V"],
        "apt-get install e2fsprogs (private workspaces are ext4 filesystems)",
        true,
    ));
    checks.push(check_netns());
    checks.push(check_gateway_port());
    checks.push(check_kvm());
    checks.push(check_qemu(&settings.state_dir));
    checks.push(check_image(&settings.state_dir));
    checks.extend(crate::doctor_firecracker::checks(settings));
    checks
}

fn check_root() -> Check {
    if nix::unistd::geteuid().is_root() {
        Check::pass("root", "running as root", true)
    } else {
        Check::fail("root", "not running as root", "run hearth with sudo", true)
    }
}

fn check_cgroups(cgroups: CgroupVersion) -> Check {
    match cgroups {
        CgroupVersion::Unknown => Check::fail(
            "cgroups",
            "no cgroup filesystem at /sys/fs/cgroup",
            "mount cgroup2 at /sys/fs/cgroup",
            true,
        ),
        other => Check::pass("cgroups", format!("cgroup {other}"), true),
    }
}

fn check_oci_runtimes(cgroups: CgroupVersion) -> Vec<Check> {
    let mut checks = Vec::new();
    let mut any_usable = false;
    for kind in OciRuntimeKind::ALL {
        let name = kind.binary_name();
        let check = match find_in_path(name) {
            None => Check::fail(
                name,
                "not installed",
                format!("apt-get install {name}"),
                false,
            ),
            Some(path) => {
                let version = first_line(&path, &["--version"])
                    .unwrap_or_else(|| "version unknown".to_owned());
                if kind.supports(cgroups) {
                    any_usable = true;
                    Check::pass(name, format!("{version} ({})", path.display()), false)
                } else {
                    Check::fail(
                        name,
                        format!("{version}: refuses {cgroups} cgroups"),
                        "use runc on this host",
                        false,
                    )
                }
            }
        };
        checks.push(check);
    }
    if !any_usable {
        checks.push(Check::fail(
            "oci-runtime",
            "no usable OCI runtime",
            "apt-get install runc",
            true,
        ));
    }
    checks
}

fn check_guest_binary(path: &Path) -> Check {
    if path.is_file() {
        Check::pass("hearth-guest", path.display().to_string(), true)
    } else {
        Check::fail(
            "hearth-guest",
            format!("{} not found", path.display()),
            "cargo build --release -p hearth-guest, or pass --guest-binary",
            true,
        )
    }
}

fn check_tool(name: &'static str, args: &[&str], fix: &str, required: bool) -> Check {
    let binary = name;
    match find_in_path(binary).and_then(|path| first_line(&path, args)) {
        Some(version) => Check::pass(name, version, required),
        None => Check::fail(name, format!("{binary} not found"), fix, required),
    }
}

/// The gateway's port is trusted because no unprivileged user can bind it; a host that lowered
/// the privileged range gives that away.
fn check_gateway_port() -> Check {
    let port = hearth_net::firewall::DEFAULT_GATEWAY_PORT;
    let path = "/proc/sys/net/ipv4/ip_unprivileged_port_start";
    match std::fs::read_to_string(path)
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok())
    {
        Some(start) if start > u32::from(port) => Check::pass(
            "gateway-port",
            format!("port {port} is privileged (unprivileged ports start at {start})"),
            true,
        ),
        Some(start) => Check::fail(
            "gateway-port",
            format!(
                "unprivileged users may bind ports from {start}, the gateway's {port} among them"
            ),
            "sysctl -w net.ipv4.ip_unprivileged_port_start=1024",
            true,
        ),
        None => Check::pass(
            "gateway-port",
            format!("{path} unreadable; assuming 1024"),
            true,
        ),
    }
}

/// Makes and removes a real namespace: permission problems show up here, not mid-create.
fn check_netns() -> Check {
    // Not `hearth-…`: reconciliation in a concurrent hearth process would take a hearth-named
    // namespace without a record for a leftover and remove it mid-check.
    let name = format!("hdoctor-{}", std::process::id());
    match netns::create(&name) {
        Ok(_) => match netns::remove(&name) {
            Ok(()) => Check::pass("netns", "named network namespaces can be created", true),
            Err(err) => Check::fail(
                "netns",
                err.to_string(),
                "check /run/netns is writable",
                true,
            ),
        },
        Err(err) => Check::fail(
            "netns",
            err.to_string(),
            "run as root on a kernel with network namespaces",
            true,
        ),
    }
}

/// `/dev/kvm` opening is not enough: under PVM (the `kvm_pvm` module) stock guest kernels
/// fail, so microVM backends must fall back to QEMU's TCG there.
fn check_kvm() -> Check {
    let dev = Path::new("/dev/kvm");
    if !dev.exists() {
        return Check::fail(
            "kvm",
            "/dev/kvm missing",
            "enable virtualization or load kvm_intel/kvm_amd; microVMs fall back to QEMU TCG",
            false,
        );
    }
    if let Err(err) = std::fs::OpenOptions::new().read(true).write(true).open(dev) {
        return Check::fail(
            "kvm",
            format!("/dev/kvm cannot be opened: {err}"),
            "run as root or join the kvm group",
            false,
        );
    }
    if Path::new("/sys/module/kvm_pvm").exists() {
        return Check::fail(
            "kvm",
            "/dev/kvm is PVM (kvm_pvm): it opens but stock guest kernels fail under it",
            "use the OCI backend, or QEMU with TCG (-accel tcg) for microVMs",
            false,
        );
    }
    Check::pass("kvm", "/dev/kvm opens (hardware virtualization)", false)
}

/// Probes QEMU afresh (the KVM probe really boots firmware) and says what `--backend qemu`
/// would use here; the result is cached for later commands.
fn check_qemu(state_dir: &Path) -> Check {
    if std::fs::create_dir_all(state_dir).is_err() {
        return Check::fail("qemu", "state dir unusable", "check --state-dir", false);
    }
    let Some(support) = crate::vm::qemu_support(state_dir, true) else {
        return Check::fail(
            "qemu",
            "qemu-system-x86_64 not found or cannot run",
            "apt-get install qemu-system-x86",
            false,
        );
    };
    let accel = match &support.kvm {
        hearth_sandbox::backend::qemu::KvmState::Usable => "KVM, -M microvm".to_owned(),
        hearth_sandbox::backend::qemu::KvmState::Unusable { reason } => {
            format!("TCG, -M pc (KVM unusable: {reason})")
        }
    };
    let channel = if support.vhost_vsock {
        "vhost-vsock"
    } else {
        "virtio-serial (no /dev/vhost-vsock)"
    };
    let sandbox = if support.seccomp { "on" } else { "unavailable" };
    Check::pass(
        "qemu",
        format!(
            "{}: {accel}; guest channel {channel}; -sandbox {sandbox}",
            support.version
        ),
        false,
    )
}

/// The microVM guest image `--backend qemu|firecracker` boots.
fn check_image(state_dir: &Path) -> Check {
    let images = crate::vm::images_dir(state_dir);
    match hearth_image::GuestImage::current(&images) {
        Ok(image) => Check::pass(
            "guest-image",
            format!("{} (kernel {})", image.dir.display(), image.kernel_release),
            false,
        ),
        Err(err) => Check::fail(
            "guest-image",
            err.to_string(),
            "hearth image build (needs a static hearth-guest, see README)",
            false,
        ),
    }
}

fn first_line(binary: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new(binary).args(args).output().ok()?;
    let text = if out.stdout.is_empty() {
        out.stderr
    } else {
        out.stdout
    };
    String::from_utf8_lossy(&text)
        .lines()
        .next()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
}
