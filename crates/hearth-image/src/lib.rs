//! The microVM guest image: a Debian kernel, an initramfs whose `/init` is a static
//! `hearth-guest`, and an ext4 root filesystem with python3, built offline from Debian packages.
//!
//! Layout under the images dir (`<state dir>/images`, 0700):
//!
//! ```text
//! current               the hash of the image in use (replaced atomically by rename)
//! cache/                downloaded .deb files, shared by every build
//! <hash>/               one finished image, never modified once renamed into place
//!   vmlinuz             the kernel (`-kernel`)
//!   initramfs.cpio.gz   hearth-guest as /init + the modules it loads (`-initrd`)
//!   baseline.cpio.gz    /init only, for the boot benchmark's trivial-init reference
//!   rootfs.ext4         the read-only root (`hearth.root=/dev/vda`)
//!   manifest.json       what went in: packages, guest binary hash, kernel release
//! .build-XXXXXX/        a build in progress (tempfile), renamed to <hash>/ when complete
//! ```
//!
//! `<hash>` is a SHA-256 over every input (recipe version, package versions, the guest binary),
//! so a build whose inputs did not change finds its image and does nothing.

pub(crate) mod apt;
mod boot;
mod build;
mod classify;
mod cpio;
mod elf;
mod initramfs;
pub mod kernel;
mod modules;
mod rootfs;

use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use apt::{AptError, Package};
pub use boot::VmImages;
pub use build::{BuildOutcome, ImageBuilder, Progress, KERNEL_FLAVOR, RECIPE_VERSION};
pub use cpio::{CpioError, CpioWriter};
pub use elf::{is_static_executable, ElfError};
pub use initramfs::InitramfsError;
pub use modules::ModulesError;
pub use rootfs::{make_ext4, RootfsError, GUEST_PATH};

pub const KERNEL_FILE: &str = "vmlinuz";
pub const INITRD_FILE: &str = "initramfs.cpio.gz";
pub const BASELINE_INITRD_FILE: &str = "baseline.cpio.gz";
pub const ROOTFS_FILE: &str = "rootfs.ext4";
pub const MANIFEST_FILE: &str = "manifest.json";
const CURRENT_FILE: &str = "current";

/// Anything that stops an image from being built, found or removed.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("no guest image in {dir}; run `hearth image build`")]
    NoCurrent { dir: PathBuf },
    #[error("{0:?} is not an image hash (64 lowercase hex digits)")]
    BadHash(String),
    #[error("image {hash} is incomplete or damaged: {problem}; run `hearth image build`")]
    Damaged { hash: String, problem: String },
    #[error("image {0} is the current image; build another first")]
    InUse(String),
    #[error("guest binary {path}: {source}")]
    GuestElf { path: PathBuf, source: ElfError },
    #[error("guest binary {path} is dynamically linked; build a static one with `RUSTFLAGS='-C target-feature=+crt-static' cargo build --release -p hearth-guest --target x86_64-unknown-linux-gnu` and pass it with --guest-binary")]
    GuestNotStatic { path: PathBuf },
    #[error("the kernel package {package} has no {what}")]
    Kernel { package: String, what: &'static str },
    #[error(transparent)]
    Dirs(#[from] hearth_sandbox::dirs::DirsError),
    #[error(transparent)]
    Apt(#[from] AptError),
    #[error(transparent)]
    Modules(#[from] ModulesError),
    #[error(transparent)]
    Initramfs(#[from] InitramfsError),
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
    #[error("manifest {path}: {source}")]
    Manifest {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// What an image was built from, stored as `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub hash: String,
    pub recipe_version: u32,
    pub kernel_package: String,
    pub kernel_release: String,
    /// Modules in load order (names).
    pub modules: Vec<String>,
    /// Rootfs packages as `name=version`.
    pub packages: Vec<String>,
    pub guest_sha256: String,
    /// Unix seconds when the build finished.
    pub built_at: u64,
}

/// One finished image on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestImage {
    pub dir: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// `/init` only: boots straight to a trivial init that reports ready and powers off
    /// (`hearth.baseline=1`), the reference of the boot benchmark.
    pub baseline_initrd: PathBuf,
    pub rootfs: PathBuf,
    pub hash: String,
    pub kernel_release: String,
    pub manifest: Manifest,
}

impl GuestImage {
    /// The image `current` points at.
    pub fn current(images_dir: &Path) -> Result<GuestImage, ImageError> {
        let pointer = images_dir.join(CURRENT_FILE);
        let hash = match std::fs::read_to_string(&pointer) {
            Ok(text) => text.trim().to_string(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ImageError::NoCurrent {
                    dir: images_dir.to_path_buf(),
                })
            }
            Err(source) => {
                return Err(ImageError::Io {
                    op: "read",
                    path: pointer,
                    source,
                })
            }
        };
        Self::open(images_dir, &hash)
    }

    /// The image `hash`, checked complete.
    pub fn open(images_dir: &Path, hash: &str) -> Result<GuestImage, ImageError> {
        check_hash(hash)?;
        let dir = images_dir.join(hash);
        let manifest_path = dir.join(MANIFEST_FILE);
        let damaged = |problem: String| ImageError::Damaged {
            hash: hash.to_string(),
            problem,
        };
        let text = std::fs::read(&manifest_path)
            .map_err(|e| damaged(format!("{}: {e}", manifest_path.display())))?;
        let manifest: Manifest = serde_json::from_slice(&text)
            .map_err(|e| damaged(format!("{}: {e}", manifest_path.display())))?;
        if manifest.hash != hash {
            return Err(damaged(format!("manifest names hash {}", manifest.hash)));
        }
        let image = GuestImage {
            kernel: dir.join(KERNEL_FILE),
            initrd: dir.join(INITRD_FILE),
            baseline_initrd: dir.join(BASELINE_INITRD_FILE),
            rootfs: dir.join(ROOTFS_FILE),
            hash: hash.to_string(),
            kernel_release: manifest.kernel_release.clone(),
            manifest,
            dir,
        };
        for file in [
            &image.kernel,
            &image.initrd,
            &image.baseline_initrd,
            &image.rootfs,
        ] {
            if !file.is_file() {
                return Err(damaged(format!("{} is missing", file.display())));
            }
        }
        Ok(image)
    }

    /// Total bytes of the image's files.
    pub fn size_bytes(&self) -> u64 {
        [
            &self.kernel,
            &self.initrd,
            &self.baseline_initrd,
            &self.rootfs,
        ]
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum()
    }
}

/// Every complete image, newest first, and the current hash.
pub fn list(images_dir: &Path) -> Result<(Vec<GuestImage>, Option<String>), ImageError> {
    let current = std::fs::read_to_string(images_dir.join(CURRENT_FILE))
        .ok()
        .map(|t| t.trim().to_string());
    let read = match std::fs::read_dir(images_dir) {
        Ok(read) => read,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), current)),
        Err(source) => {
            return Err(ImageError::Io {
                op: "read",
                path: images_dir.to_path_buf(),
                source,
            })
        }
    };
    let mut images: Vec<GuestImage> = read
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| check_hash(name).is_ok())
        .filter_map(|hash| GuestImage::open(images_dir, &hash).ok())
        .collect();
    images.sort_by_key(|image| std::cmp::Reverse(image.manifest.built_at));
    Ok((images, current))
}

/// Removes image `hash`; the current image only with `force` (which also clears `current`).
pub fn remove(images_dir: &Path, hash: &str, force: bool) -> Result<(), ImageError> {
    check_hash(hash)?;
    let pointer = images_dir.join(CURRENT_FILE);
    let current = std::fs::read_to_string(&pointer).ok();
    if current.as_deref().map(str::trim) == Some(hash) {
        if !force {
            return Err(ImageError::InUse(hash.to_string()));
        }
        std::fs::remove_file(&pointer).map_err(|source| ImageError::Io {
            op: "remove",
            path: pointer.clone(),
            source,
        })?;
    }
    let dir = images_dir.join(hash);
    std::fs::remove_dir_all(&dir).map_err(|source| ImageError::Io {
        op: "remove",
        path: dir,
        source,
    })
}

fn check_hash(hash: &str) -> Result<(), ImageError> {
    let ok = hash.len() == 64
        && hash
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ImageError::BadHash(hash.to_string()))
    }
}

/// Creates `path` for writing, mode 0600 from the first instant, truncating an old file.
fn create_private(path: &Path) -> io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

/// Points `current` at `hash`: write a temp file next to it, then rename over.
fn set_current(images_dir: &Path, hash: &str) -> Result<(), ImageError> {
    let io_err = |op, path: &Path| {
        let path = path.to_path_buf();
        move |source| ImageError::Io { op, path, source }
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".current-")
        .tempfile_in(images_dir)
        .map_err(io_err("create temp file in", images_dir))?;
    io::Write::write_all(&mut tmp, format!("{hash}\n").as_bytes())
        .map_err(io_err("write", tmp.path()))?;
    tmp.as_file()
        .sync_all()
        .map_err(io_err("sync", tmp.path()))?;
    let pointer = images_dir.join(CURRENT_FILE);
    tmp.persist(&pointer)
        .map_err(|e| ImageError::Io {
            op: "rename into place",
            path: pointer,
            source: e.error,
        })
        .map(drop)
}
