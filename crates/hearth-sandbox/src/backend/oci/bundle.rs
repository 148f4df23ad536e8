//! The OCI bundle of a sandbox: `config.json` and the rootfs it describes.
//!
//! The root filesystem needs no image, so a fresh offline machine can run sandboxes: it is an
//! empty, read-only directory whose content is bind mounts of the host's system directories
//! (read-only), a minimal generated `/etc`, tmpfs for `/tmp`, `/run` and `/root` (each smaller
//! than the sandbox's memory), and a writable `/workspace`. `hearth-guest` comes in read-only at
//! `/.hearth/hearth-guest`; `/.hearth` is read-only as a whole.
//!
//! With host ids (see [`crate::userns`]) the container gets a user namespace mapping its uid and
//! gid 0 to the sandbox's own unprivileged host block, and a sysfs mounted from its own network
//! namespace (the kernel does not let a user namespace mount sysfs for a network namespace it
//! does not own; hearth keeps the network namespace owned by the host, so the workload can never
//! hold a capability over its own firewall). The guest channel is a socket hearth binds on the
//! host and hands to PID 1 as fd 3: it has no name inside the sandbox at all.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{symlink, OpenOptionsExt};
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Capabilities, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxIdMappingBuilder,
    LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder,
    LinuxResourcesBuilder, Mount, PosixRlimitBuilder, PosixRlimitType, ProcessBuilder, RootBuilder,
    Spec, SpecBuilder, UserBuilder,
};

use crate::backend::LaunchContext;
use crate::spec::SandboxSpec;
use crate::userns::IDS_PER_SANDBOX;

/// Where `hearth-guest` and its files appear inside the sandbox (read-only).
pub const GUEST_DIR_IN_SANDBOX: &str = "/.hearth";
const GUEST_BINARY_IN_SANDBOX: &str = "/.hearth/hearth-guest";
/// The fd PID 1 finds the guest channel's listening socket on (`runc run --preserve-fds 1`).
pub const GUEST_LISTEN_FD: i32 = 3;
/// Open files per process: the sandbox's pids limit times this is its fd budget, kept near
/// [`FD_BUDGET`] (the kernel has no per-cgroup fd limit; the memory cgroup also charges every
/// open file).
const FD_BUDGET: u64 = 262_144;
/// Where a template's env and working dir for every exec appear (read-only).
const EXEC_DEFAULTS_IN_SANDBOX: &str = "/.hearth/exec-defaults.json";
/// Where the guest's own seccomp filters appear (read-only), when the spec has them.
const GUEST_SECCOMP_IN_SANDBOX: &str = "/.hearth/seccomp.bpf";
const CFS_PERIOD_US: u64 = 100_000;
/// PATH of the guest and of commands that do not set their own.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Host top-level entries mirrored into the rootfs: symlinks are copied as symlinks (merged-/usr
/// systems), real directories are bind-mounted read-only.
const HOST_SYSTEM_DIRS: &[&str] = &["bin", "sbin", "lib", "lib32", "lib64", "libx32"];

/// Host files and dirs under /etc that programs need to run (dynamic linker cache, alternatives
/// symlinks, CA certificates); everything else in the host's /etc stays out of the sandbox.
/// Only the public half of `/etc/ssl`: the host's private keys (`/etc/ssl/private`) stay out.
const HOST_ETC_ENTRIES: &[&str] = &[
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "alternatives",
    "ssl/certs",
    "ssl/openssl.cnf",
    "ca-certificates",
    "ca-certificates.conf",
];

/// Errors while writing a bundle.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot read host path {path}: {source}")]
    HostPath { path: PathBuf, source: io::Error },
    #[error("guest binary {path} does not exist; build it with `cargo build -p hearth-guest` or pass --guest-binary")]
    GuestBinaryMissing { path: PathBuf },
    #[error("invalid OCI spec: {0}")]
    Spec(#[from] oci_spec::OciSpecError),
    #[error("cannot serialize config.json: {0}")]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompRenderError),
}

/// Writes `config.json`, the rootfs skeleton and the sandbox's `/etc`.
/// With `workload_cgroup`, PID 1 is told that fd 4 is its workload cgroup's `cgroup.procs`.
pub fn write_bundle(
    spec: &SandboxSpec,
    ctx: &LaunchContext,
    workload_cgroup: bool,
) -> Result<PathBuf, BundleError> {
    if !ctx.guest_binary.is_file() {
        return Err(BundleError::GuestBinaryMissing {
            path: ctx.guest_binary.clone(),
        });
    }
    // The workspace was made on the host (a private filesystem or a view of the user's dir).
    let mut mounts = match &spec.template {
        None => prepare_rootfs(spec, ctx)?,
        Some(template) => template_mounts(spec, template, ctx)?,
    };
    mounts.push(bind(&ctx.dirs.workspace(), "/workspace", false));
    if let Some(extra) = &spec.guest_seccomp {
        let bpf = extra.guest_bpf()?;
        write_new_file(&ctx.dirs.guest_dir().join("seccomp.bpf"), &bpf, 0o444)?;
    }
    write_etc(&ctx.dirs.etc(), spec.id.as_str(), ctx.resolver)?;
    let config = build_spec(spec, ctx, mounts, workload_cgroup)?;
    let mut value = serde_json::to_value(&config)?;
    if let Some(seccomp) = &spec.seccomp {
        // Audited calls go to the sandbox's supervisor, listening on its socket.
        value["linux"]["seccomp"] = seccomp.oci_section(&ctx.dirs.seccomp_socket())?;
    }
    let path = ctx.dirs.bundle().join("config.json");
    write_new_file(&path, &serde_json::to_vec_pretty(&value)?, 0o600)?;
    Ok(path)
}

fn build_spec(
    spec: &SandboxSpec,
    ctx: &LaunchContext,
    mounts: Vec<Mount>,
    workload_cgroup: bool,
) -> Result<Spec, BundleError> {
    let no_caps = Capabilities::new();
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(no_caps.clone())
        .effective(no_caps.clone())
        .inheritable(no_caps.clone())
        .permitted(no_caps.clone())
        .ambient(no_caps)
        .build()?;
    let rlimits = vec![
        PosixRlimitBuilder::default()
            .typ(PosixRlimitType::RlimitNofile)
            .soft(open_files_per_process(spec.limits.pids))
            .hard(open_files_per_process(spec.limits.pids))
            .build()?,
        PosixRlimitBuilder::default()
            .typ(PosixRlimitType::RlimitCore)
            .soft(0u64)
            .hard(0u64)
            .build()?,
    ];
    let process = ProcessBuilder::default()
        .terminal(false)
        // A template's user runs everything, the guest included: without capabilities the
        // guest could not switch users for its children.
        .user(
            UserBuilder::default()
                .uid(spec.template.as_ref().map_or(0, |t| t.uid))
                .gid(spec.template.as_ref().map_or(0, |t| t.gid))
                .build()?,
        )
        .args(guest_args(spec, workload_cgroup))
        .env(vec![format!("PATH={DEFAULT_PATH}")])
        .cwd("/")
        .capabilities(capabilities)
        .rlimits(rlimits)
        .no_new_privileges(true)
        // hearth-guest gives its children more (its `oom` module); the real protection is the
        // workload's own memory cgroup (see `workload_cgroup`).
        .oom_score_adj(0)
        .build()?;

    let mut spec_linux = oci_spec::runtime::Linux::default();
    let mut own_namespaces = vec![
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Cgroup,
    ];
    if ctx.ids.is_some() {
        own_namespaces.push(LinuxNamespaceType::User);
    }
    let namespaces = own_namespaces
        .into_iter()
        .map(|typ| LinuxNamespaceBuilder::default().typ(typ).build())
        .chain(std::iter::once(
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Network)
                .path(ctx.netns_path.clone())
                .build(),
        ))
        .collect::<Result<Vec<_>, _>>()?;
    let limits = spec.limits;
    #[allow(clippy::cast_possible_wrap)] // memory is at most a few TiB, far below i64::MAX
    let memory_limit = limits.memory.0 as i64;
    let resources = LinuxResourcesBuilder::default()
        .memory(LinuxMemoryBuilder::default().limit(memory_limit).build()?)
        .cpu(
            LinuxCpuBuilder::default()
                .period(CFS_PERIOD_US)
                .quota(limits.cpus.cfs_quota(CFS_PERIOD_US))
                .build()?,
        )
        .pids(
            LinuxPidsBuilder::default()
                .limit(i64::from(limits.pids))
                .build()?,
        )
        .build()?;
    let mut linux = LinuxBuilder::default();
    if let Some(ids) = ctx.ids {
        let map = LinuxIdMappingBuilder::default()
            .container_id(0u32)
            .host_id(ids.root())
            .size(IDS_PER_SANDBOX)
            .build()?;
        linux = linux.uid_mappings(vec![map]).gid_mappings(vec![map]);
    }
    let linux = linux
        .namespaces(namespaces)
        .resources(resources)
        .cgroups_path(PathBuf::from(spec.id.names().cgroup))
        .masked_paths(spec_linux.masked_paths_mut().take().unwrap_or_default())
        .readonly_paths(spec_linux.readonly_paths_mut().take().unwrap_or_default())
        .build()?;

    let mut all_mounts = oci_spec::runtime::get_default_mounts();
    // The runtime's own tmpfs mounts (/dev, /dev/shm) are 64M each by default: sized into
    // the same budget as hearth's.
    for mount in &mut all_mounts {
        let Some(size) = tmpfs_size(spec.limits.memory.0, &mount.destination().to_string_lossy())
        else {
            continue;
        };
        if mount.typ().as_deref() == Some("tmpfs") {
            let options = mount
                .options()
                .clone()
                .unwrap_or_default()
                .into_iter()
                .filter(|o| !o.starts_with("size="))
                .chain(std::iter::once(size))
                .collect();
            mount.set_options(Some(options));
        }
    }
    if ctx.ids.is_some() {
        // The sandbox's own sysfs (see the module docs), read-only like the default one.
        for mount in &mut all_mounts {
            if mount.destination() == Path::new("/sys") {
                *mount = bind(&ctx.dirs.sysfs(), "/sys", true);
                mount.set_options(Some(
                    ["rbind", "nosuid", "nodev", "noexec", "ro"]
                        .map(str::to_owned)
                        .into(),
                ));
            }
        }
    }
    all_mounts.extend(mounts);
    Ok(SpecBuilder::default()
        .version("1.0.2")
        .root(
            RootBuilder::default()
                .path(ctx.dirs.rootfs())
                // A template's root is writable: its writes land in the sandbox's upper dir,
                // bounded by its disk quota.
                .readonly(spec.template.is_none())
                .build()?,
        )
        .hostname(spec.id.as_str().to_owned())
        .process(process)
        .mounts(all_mounts)
        .linux(linux)
        .build()?)
}

fn guest_args(spec: &SandboxSpec, workload_cgroup: bool) -> Vec<String> {
    let mut args: Vec<String> = [
        GUEST_BINARY_IN_SANDBOX,
        "serve",
        "--listen-fd",
        &GUEST_LISTEN_FD.to_string(),
    ]
    .map(str::to_owned)
    .into();
    if workload_cgroup {
        args.extend([
            "--workload-cgroup-fd".to_owned(),
            super::workload_cgroup::WORKLOAD_CGROUP_FD.to_string(),
        ]);
    }
    if spec
        .template
        .as_ref()
        .is_some_and(|t| !t.exec_defaults.is_empty())
    {
        args.extend([
            "--exec-defaults".to_owned(),
            EXEC_DEFAULTS_IN_SANDBOX.to_owned(),
        ]);
    }
    if spec.guest_seccomp.is_some() {
        args.extend([
            "--seccomp-bpf".to_owned(),
            GUEST_SECCOMP_IN_SANDBOX.to_owned(),
        ]);
    }
    args
}

/// `RLIMIT_NOFILE` for a sandbox of `pids` processes: its share of [`FD_BUDGET`], at least
/// 256 (what small tools assume) and at most 4096.
fn open_files_per_process(pids: u32) -> u64 {
    (FD_BUDGET / u64::from(pids.max(1))).clamp(256, 4096)
}

/// tmpfs sizes well under the memory limit, whose cgroup pays for their pages: `/tmp` half,
/// `/root` an eighth, `/run` and `/dev/shm` a sixteenth each (at most 64M), `/dev` 4M, so
/// all of them together take at most three quarters of it (plus 4M) and filling them leaves
/// room for processes.
fn tmpfs_size(memory: u64, destination: &str) -> Option<String> {
    let bytes = match destination {
        "/tmp" => memory / 2,
        "/root" => memory / 8,
        "/run" | "/dev/shm" => (memory / 16).min(64 << 20),
        "/dev" => 4 << 20,
        _ => return None,
    };
    Some(format!("size={}k", (bytes / 1024).max(64)))
}

/// Lays out the rootfs directory and returns the bind mounts that fill it.
fn prepare_rootfs(spec: &SandboxSpec, ctx: &LaunchContext) -> Result<Vec<Mount>, BundleError> {
    let rootfs = ctx.dirs.rootfs();
    let mut mounts = vec![bind(Path::new("/usr"), "/usr", true)];
    for name in HOST_SYSTEM_DIRS {
        let host = Path::new("/").join(name);
        let meta = match fs::symlink_metadata(&host) {
            Ok(meta) => meta,
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => return Err(BundleError::HostPath { path: host, source }),
        };
        if meta.file_type().is_symlink() {
            let target = fs::read_link(&host).map_err(|source| BundleError::HostPath {
                path: host.clone(),
                source,
            })?;
            let link = rootfs.join(name);
            symlink(&target, &link).map_err(|source| BundleError::Write { path: link, source })?;
        } else if meta.is_dir() {
            mounts.push(bind(&host, &format!("/{name}"), true));
        }
    }
    mounts.push(bind(&ctx.dirs.etc(), "/etc", true));
    for name in HOST_ETC_ENTRIES {
        let host = Path::new("/etc").join(name);
        if host.exists() {
            mounts.push(bind(&host, &format!("/etc/{name}"), true));
        }
    }
    let memory = spec.limits.memory.0;
    for (dest, mode) in [
        ("/tmp", "mode=1777"),
        ("/run", "mode=755"),
        ("/root", "mode=700"),
    ] {
        let size = tmpfs_size(memory, dest).unwrap_or_default();
        mounts.push(tmpfs(dest, &format!("{mode},{size}")));
    }
    // The guest dir first, then the binary on top of a placeholder inside it; the workload
    // can change neither.
    mounts.push(bind(&ctx.dirs.guest_dir(), GUEST_DIR_IN_SANDBOX, true));
    let placeholder = ctx.dirs.guest_dir().join("hearth-guest");
    write_new_file(&placeholder, b"", 0o555)?;
    mounts.push(bind(&ctx.guest_binary, GUEST_BINARY_IN_SANDBOX, true));
    Ok(mounts)
}

/// The mounts of a template sandbox: its root is the overlay hearth mounted on the rootfs dir
/// (see `template_root`), with the image's own `/usr` and `/etc`; hearth adds its identity
/// files (hostname, hosts, resolver), tmpfs `/tmp` and `/run`, and the guest.
fn template_mounts(
    spec: &SandboxSpec,
    template: &crate::spec::SpecTemplate,
    ctx: &LaunchContext,
) -> Result<Vec<Mount>, BundleError> {
    let mut mounts = Vec::new();
    for name in ["hostname", "hosts", "resolv.conf"] {
        mounts.push(bind(
            &ctx.dirs.etc().join(name),
            &format!("/etc/{name}"),
            true,
        ));
    }
    let memory = spec.limits.memory.0;
    // `/run` belongs to the template's user, who runs everything here (the agent lives there).
    let run_mode = format!("mode=755,uid={},gid={}", template.uid, template.gid);
    for (dest, mode) in [("/tmp", "mode=1777"), ("/run", run_mode.as_str())] {
        let size = tmpfs_size(memory, dest).unwrap_or_default();
        mounts.push(tmpfs(dest, &format!("{mode},{size}")));
    }
    if !template.exec_defaults.is_empty() {
        let json = serde_json::to_vec(&template.exec_defaults)?;
        write_new_file(
            &ctx.dirs.guest_dir().join("exec-defaults.json"),
            &json,
            0o444,
        )?;
    }
    mounts.push(bind(&ctx.dirs.guest_dir(), GUEST_DIR_IN_SANDBOX, true));
    let placeholder = ctx.dirs.guest_dir().join("hearth-guest");
    write_new_file(&placeholder, b"", 0o555)?;
    mounts.push(bind(&ctx.guest_binary, GUEST_BINARY_IN_SANDBOX, true));
    Ok(mounts)
}

/// Writes the sandbox's own /etc: identity files of its own, plus placeholders where the
/// host's linker cache and certificates get mounted (the /etc mount is read-only, so the
/// runtime could not create these mount points itself).
fn write_etc(
    etc: &Path,
    hostname: &str,
    resolver: Option<std::net::SocketAddr>,
) -> Result<(), BundleError> {
    let files: [(&str, String); 6] = [
        ("passwd", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n".to_owned()),
        ("group", "root:x:0:\nnogroup:x:65534:\n".to_owned()),
        ("hostname", format!("{hostname}\n")),
        ("hosts", format!("127.0.0.1\tlocalhost\n127.0.1.1\t{hostname}\n::1\tlocalhost ip6-localhost\n")),
        ("nsswitch.conf", "passwd: files\ngroup: files\nhosts: files dns\n".to_owned()),
        ("resolv.conf", resolv_conf(resolver)),
    ];
    for (name, content) in files {
        write_new_file(&etc.join(name), content.as_bytes(), 0o644)?;
    }
    for name in HOST_ETC_ENTRIES {
        let host = Path::new("/etc").join(name);
        let inside = etc.join(name);
        if let Some(parent) = inside.parent().filter(|p| !p.exists()) {
            fs::create_dir_all(parent).map_err(|source| BundleError::Write {
                path: parent.to_owned(),
                source,
            })?;
        }
        if host.is_dir() {
            fs::create_dir(&inside).map_err(|source| BundleError::Write {
                path: inside,
                source,
            })?;
        } else if host.exists() {
            write_new_file(&inside, b"", 0o644)?;
        }
    }
    Ok(())
}

/// The sandbox asks hearth's resolver on its link and nothing else; without a link there is no
/// resolver to name.
fn resolv_conf(resolver: Option<std::net::SocketAddr>) -> String {
    match resolver {
        Some(addr) => format!(
            "# hearth: the sandbox's own resolver\nnameserver {}\noptions timeout:2 attempts:2\n",
            addr.ip()
        ),
        None => "# hearth: no network link, so no resolver\n".to_owned(),
    }
}

/// Creates a new file exclusively (never through an existing name or symlink).
fn write_new_file(path: &Path, content: &[u8], mode: u32) -> Result<(), BundleError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|source| BundleError::Write {
            path: path.to_owned(),
            source,
        })?;
    file.write_all(content)
        .map_err(|source| BundleError::Write {
            path: path.to_owned(),
            source,
        })
}

fn bind(source: &Path, destination: &str, read_only: bool) -> Mount {
    let mut options = vec!["rbind".to_owned(), "nosuid".to_owned(), "nodev".to_owned()];
    options.push(if read_only { "ro" } else { "rw" }.to_owned());
    let mut mount = Mount::default();
    mount
        .set_destination(PathBuf::from(destination))
        .set_typ(Some("bind".to_owned()))
        .set_source(Some(source.to_owned()))
        .set_options(Some(options));
    mount
}

fn tmpfs(destination: &str, extra: &str) -> Mount {
    let mut options = vec!["nosuid".to_owned(), "nodev".to_owned()];
    options.extend(extra.split(',').map(str::to_owned));
    let mut mount = Mount::default();
    mount
        .set_destination(PathBuf::from(destination))
        .set_typ(Some("tmpfs".to_owned()))
        .set_source(Some(PathBuf::from("tmpfs")))
        .set_options(Some(options));
    mount
}
