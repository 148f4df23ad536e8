//! The Firecracker guest kernel: a `vmlinux` built from Debian's `linux-source` with
//! Firecracker's recommended configuration plus what `hearth-guest` needs as init.
//!
//! Debian's own kernels can't boot under Firecracker (no virtio-mmio command-line devices), so
//! `hearth image kernel --firecracker` builds one. Firecracker's configuration is read at build
//! time from a file the user names (never copied into hearth); [`HEARTH_OPTIONS`] are merged
//! over it and `make olddefconfig` settles the rest. Everything is built in (`=y`): the
//! Firecracker initrd is the image's module-less `baseline.cpio.gz`, whose `/init` is the same
//! `hearth-guest`, so nothing is loaded at boot.
//!
//! Layout under the kernels dir (`<state dir>/kernels/firecracker`, 0700):
//!
//! ```text
//! current          the cache key of the kernel in use (replaced atomically by rename)
//! <key>/vmlinux    one finished kernel, never modified once renamed into place
//! <key>/config     the merged .config it was built with
//! .build-XXXXXX/   a build in progress (sources, objects, build.log), removed afterwards
//! ```
//!
//! `<key>` is a SHA-256 over the recipe version, the exact `linux-source` package version, the
//! base configuration's bytes and [`HEARTH_OPTIONS`]: a build with unchanged inputs does nothing.

mod build;

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

pub use build::{KernelBuilder, KernelOutcome, KernelProgress};

use super::apt::{AptError, Package};

/// Bumped whenever the recipe (options, make target, layout) changes.
pub const KERNEL_RECIPE_VERSION: u32 = 1;
/// The Debian source package: 6.1, the series Firecracker's CI configuration is for.
pub const SOURCE_PACKAGE: &str = "linux-source-6.1";
/// Firecracker's recommended configuration, as named in its repository.
pub const FIRECRACKER_CONFIG_NAME: &str = "microvm-kernel-ci-x86_64-6.1.config";
pub const VMLINUX_FILE: &str = "vmlinux";
pub const CONFIG_FILE: &str = "config";
const CURRENT_FILE: &str = "current";

/// What `hearth-guest` needs from a kernel that loads no modules: the initramfs it runs from,
/// devtmpfs and tmpfs, virtio-mmio devices named on the command line (how Firecracker
/// describes them), the rootfs and config drives, eth0, the vsock it serves on, ext4 (with its
/// crc32c), the serial console, the seccomp filters it installs, and ptys for exec.
pub const HEARTH_OPTIONS: &[(&str, &str)] = &[
    ("CONFIG_BLK_DEV_INITRD", "y"),
    ("CONFIG_RD_GZIP", "y"),
    ("CONFIG_DEVTMPFS", "y"),
    ("CONFIG_TMPFS", "y"),
    ("CONFIG_VIRTIO", "y"),
    ("CONFIG_VIRTIO_MMIO", "y"),
    ("CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES", "y"),
    ("CONFIG_VIRTIO_BLK", "y"),
    ("CONFIG_VIRTIO_NET", "y"),
    ("CONFIG_VSOCKETS", "y"),
    ("CONFIG_VIRTIO_VSOCKETS", "y"),
    ("CONFIG_EXT4_FS", "y"),
    ("CONFIG_CRYPTO_CRC32C", "y"),
    ("CONFIG_SERIAL_8250", "y"),
    ("CONFIG_SERIAL_8250_CONSOLE", "y"),
    ("CONFIG_SECCOMP", "y"),
    ("CONFIG_SECCOMP_FILTER", "y"),
    ("CONFIG_UNIX", "y"),
    ("CONFIG_UNIX98_PTYS", "y"),
];

/// Why a kernel could not be built or found.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "Firecracker's kernel config {path} cannot be read ({source}); pass its path with --config"
    )]
    BaseConfig {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a kernel config (no CONFIG_ lines)")]
    NotAConfig { path: PathBuf },
    #[error("missing build tools: {}; install them with: apt-get install {}", .tools.join(", "), .packages.join(" "))]
    MissingTools {
        tools: Vec<String>,
        packages: Vec<String>,
    },
    #[error("make olddefconfig dropped {}: a dependency of it is off in the base config", .0.join(", "))]
    OptionsDropped(Vec<String>),
    #[error("{what} failed ({status}); last lines of {log}: {tail}")]
    Make {
        what: String,
        status: String,
        log: PathBuf,
        tail: String,
    },
    #[error("{path} holds no linux-source tarball")]
    NoTarball { path: PathBuf },
    #[error("no Firecracker kernel in {dir}; run `hearth image kernel --firecracker`")]
    NoCurrent { dir: PathBuf },
    #[error(
        "Firecracker kernel {key} is incomplete; run `hearth image kernel --firecracker --force`"
    )]
    Damaged { key: String },
    #[error(transparent)]
    Apt(#[from] AptError),
    #[error(transparent)]
    Dirs(#[from] hearth_sandbox::dirs::DirsError),
}

impl KernelError {
    /// Whether the host lacks something (exit 6) rather than the build failing.
    pub fn is_host_problem(&self) -> bool {
        matches!(
            self,
            Self::MissingTools { .. } | Self::BaseConfig { .. } | Self::NoCurrent { .. }
        )
    }
}

/// The cache key of a kernel: every input that changes the `vmlinux`.
pub fn cache_key(source: &Package, base_config: &[u8], options: &[(&str, &str)]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(format!(
        "hearth-firecracker-kernel/{KERNEL_RECIPE_VERSION}\n"
    ));
    hasher.update(format!("source={source}\n"));
    hasher.update(format!(
        "base-config-sha256={}\n",
        hex(&Sha256::digest(base_config))
    ));
    for (key, value) in options {
        hasher.update(format!("{key}={value}\n"));
    }
    hex(&hasher.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The symbol a `.config` line sets or unsets: `CONFIG_X=...` or `# CONFIG_X is not set`.
fn symbol_of(line: &str) -> Option<&str> {
    let line = line.trim();
    if let Some(rest) = line.strip_prefix("# ") {
        return rest.strip_suffix(" is not set");
    }
    line.split_once('=')
        .map(|(symbol, _)| symbol)
        .filter(|s| s.starts_with("CONFIG_"))
}

/// The base configuration with every line about an option in `options` replaced by hearth's
/// value (appended, so a reader sees what hearth changed). The input to `make olddefconfig`.
pub fn merge_config(base: &str, options: &[(&str, &str)]) -> String {
    let ours = |symbol: &str| options.iter().any(|(key, _)| *key == symbol);
    let mut merged: String = base
        .lines()
        .filter(|line| !symbol_of(line).is_some_and(ours))
        .flat_map(|line| [line, "\n"])
        .collect();
    merged.push_str("\n# hearth-guest (hearth image kernel --firecracker)\n");
    for (key, value) in options {
        merged.push_str(&format!("{key}={value}\n"));
    }
    merged
}

/// The options of `options` that a settled `.config` does not carry with hearth's value.
pub fn dropped_options(settled: &str, options: &[(&str, &str)]) -> Vec<String> {
    options
        .iter()
        .filter(|(key, value)| {
            !settled
                .lines()
                .any(|line| line.trim() == format!("{key}={value}"))
        })
        .map(|(key, _)| (*key).to_owned())
        .collect()
}

/// Reads and sanity-checks the base configuration.
pub fn read_base_config(path: &Path) -> Result<Vec<u8>, KernelError> {
    let bytes = std::fs::read(path).map_err(|source| KernelError::BaseConfig {
        path: path.to_owned(),
        source,
    })?;
    let text = String::from_utf8_lossy(&bytes);
    if !text.lines().any(|l| symbol_of(l).is_some()) {
        return Err(KernelError::NotAConfig {
            path: path.to_owned(),
        });
    }
    Ok(bytes)
}

/// The build tools hearth runs, with the Debian package providing each. Headers are found by
/// a file they install, since they have no binary.
pub const BUILD_TOOLS: &[(&str, &str)] = &[
    ("gcc", "gcc"),
    ("make", "make"),
    ("flex", "flex"),
    ("bison", "bison"),
    ("bc", "bc"),
    ("perl", "perl"),
    ("tar", "tar"),
    ("xz", "xz-utils"),
    ("/usr/include/libelf.h", "libelf-dev"),
    ("/usr/include/openssl/ssl.h", "libssl-dev"),
];

/// Which of `tools` are missing, given a PATH lookup; `Err` names them and their packages.
pub fn check_tools(
    tools: &[(&str, &str)],
    found: impl Fn(&str) -> bool,
) -> Result<(), KernelError> {
    let missing: Vec<&(&str, &str)> = tools.iter().filter(|(tool, _)| !found(tool)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut packages: Vec<String> = missing.iter().map(|(_, p)| (*p).to_owned()).collect();
    packages.dedup();
    Err(KernelError::MissingTools {
        tools: missing.iter().map(|(t, _)| (*t).to_owned()).collect(),
        packages,
    })
}

/// The kernel in use, from `<kernels dir>/current`.
pub fn current_kernel(kernels_dir: &Path) -> Result<PathBuf, KernelError> {
    let current = kernels_dir.join(CURRENT_FILE);
    let key = match std::fs::read_to_string(&current) {
        Ok(key) => key.trim().to_owned(),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return Err(KernelError::NoCurrent {
                dir: kernels_dir.to_owned(),
            })
        }
        Err(source) => {
            return Err(KernelError::Io {
                op: "read",
                path: current,
                source,
            })
        }
    };
    let valid = key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit());
    let vmlinux = kernels_dir.join(&key).join(VMLINUX_FILE);
    if !valid || !vmlinux.is_file() {
        return Err(KernelError::Damaged { key });
    }
    Ok(vmlinux)
}

#[cfg(test)]
mod tests;
