//! `hearth image build`: resolve the inputs, hash them, and build only when the hash is new.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use super::apt::{self, Package};
use super::initramfs::{self, InitramfsSpec};
use super::modules::{self, Module};
use super::rootfs;
use super::{
    create_private, set_current, GuestImage, ImageError, Manifest, BASELINE_INITRD_FILE,
    INITRD_FILE, KERNEL_FILE, MANIFEST_FILE, ROOTFS_FILE,
};

/// Bumped whenever the recipe (files, packages, modules, layout) changes, so old images are not
/// mistaken for new ones.
pub const RECIPE_VERSION: u32 = 1;

/// The Debian kernel flavour: `linux-image-<flavour>` is the metapackage naming the real one.
/// The generic `amd64` kernel, because every sandbox shares its workspace over 9p and Debian's
/// `cloud-amd64` kernel has no 9p (it boots a little faster, for workspace-less experiments).
pub const KERNEL_FLAVOR: &str = "amd64";

/// A step of the build, for progress lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    Resolving,
    Resolved { hash: String, packages: usize },
    Cached { hash: String },
    Downloading { packages: usize },
    Kernel { release: String, modules: usize },
    Initramfs,
    Rootfs,
    Done { hash: String, elapsed: Duration },
}

impl std::fmt::Display for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Progress::Resolving => write!(f, "resolving Debian packages"),
            Progress::Resolved { hash, packages } => {
                write!(f, "{packages} packages; image {}", &hash[..12])
            }
            Progress::Cached { hash } => write!(f, "image {} is up to date", &hash[..12]),
            Progress::Downloading { packages } => write!(f, "fetching {packages} .deb files"),
            Progress::Kernel { release, modules } => {
                write!(f, "kernel {release}, {modules} modules to load")
            }
            Progress::Initramfs => write!(f, "writing the initramfs"),
            Progress::Rootfs => write!(f, "making the ext4 root filesystem"),
            Progress::Done { hash, elapsed } => {
                write!(
                    f,
                    "built image {} in {:.1}s",
                    &hash[..12],
                    elapsed.as_secs_f64()
                )
            }
        }
    }
}

/// What a build did.
#[derive(Debug, Clone)]
pub struct BuildOutcome {
    pub image: GuestImage,
    /// False when an image with the same inputs already existed.
    pub built: bool,
}

/// Builds the guest image into an images dir.
#[derive(Debug, Clone)]
pub struct ImageBuilder {
    images_dir: PathBuf,
    guest_binary: PathBuf,
    kernel_flavor: String,
    force: bool,
}

struct Inputs {
    guest: Vec<u8>,
    guest_sha256: String,
    kernel: Package,
    packages: Vec<Package>,
    hash: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl ImageBuilder {
    /// `guest_binary` must be a static `hearth-guest`.
    pub fn new(images_dir: impl Into<PathBuf>, guest_binary: impl Into<PathBuf>) -> Self {
        Self {
            images_dir: images_dir.into(),
            guest_binary: guest_binary.into(),
            kernel_flavor: KERNEL_FLAVOR.to_string(),
            force: false,
        }
    }

    /// Another Debian kernel flavour, e.g. `amd64` (larger, but has 9p for `hearth.workspace=9p`).
    pub fn kernel_flavor(mut self, flavor: impl Into<String>) -> Self {
        self.kernel_flavor = flavor.into();
        self
    }

    /// Rebuild even when an image with the same hash exists.
    pub fn force(mut self, force: bool) -> Self {
        self.force = force;
        self
    }

    /// Builds (or finds) the image and makes it current.
    pub fn build(&self, progress: &mut dyn FnMut(Progress)) -> Result<BuildOutcome, ImageError> {
        let started = Instant::now();
        let io_err = |op, path: &Path| {
            let path = path.to_path_buf();
            move |source| ImageError::Io { op, path, source }
        };
        let cache = self.images_dir.join("cache");
        for dir in [&self.images_dir, &cache] {
            hearth_sandbox::dirs::ensure_private_dir(dir)?;
        }
        let scratch = tempfile::Builder::new()
            .prefix(".build-")
            .tempdir_in(&self.images_dir)
            .map_err(io_err("create a build dir in", &self.images_dir))?;
        progress(Progress::Resolving);
        let inputs = self.inputs(scratch.path())?;
        progress(Progress::Resolved {
            hash: inputs.hash.clone(),
            packages: inputs.packages.len() + 1,
        });
        if !self.force {
            if let Ok(image) = GuestImage::open(&self.images_dir, &inputs.hash) {
                set_current(&self.images_dir, &inputs.hash)?;
                progress(Progress::Cached {
                    hash: inputs.hash.clone(),
                });
                return Ok(BuildOutcome {
                    image,
                    built: false,
                });
            }
        }
        let out = scratch.path().join("image");
        std::fs::create_dir(&out).map_err(io_err("create", &out))?;
        set_mode(&out, 0o700)?;
        let manifest = self.assemble(&inputs, &cache, scratch.path(), &out, progress)?;
        let text = serde_json::to_vec_pretty(&manifest).map_err(|source| ImageError::Manifest {
            path: out.join(MANIFEST_FILE),
            source,
        })?;
        let manifest_path = out.join(MANIFEST_FILE);
        let mut file = create_private(&manifest_path).map_err(io_err("create", &manifest_path))?;
        std::io::Write::write_all(&mut file, &text).map_err(io_err("write", &manifest_path))?;
        file.sync_all().map_err(io_err("sync", &manifest_path))?;
        let final_dir = self.images_dir.join(&inputs.hash);
        if final_dir.exists() {
            // A forced rebuild, or a concurrent build won: replace the old copy.
            std::fs::remove_dir_all(&final_dir).map_err(io_err("remove", &final_dir))?;
        }
        std::fs::rename(&out, &final_dir).map_err(io_err("rename into place", &final_dir))?;
        set_current(&self.images_dir, &inputs.hash)?;
        let image = GuestImage::open(&self.images_dir, &inputs.hash)?;
        progress(Progress::Done {
            hash: inputs.hash,
            elapsed: started.elapsed(),
        });
        Ok(BuildOutcome { image, built: true })
    }

    fn inputs(&self, scratch: &Path) -> Result<Inputs, ImageError> {
        let guest = std::fs::read(&self.guest_binary).map_err(|source| ImageError::Io {
            op: "read",
            path: self.guest_binary.clone(),
            source,
        })?;
        let is_static =
            super::elf::is_static_executable(&guest).map_err(|source| ImageError::GuestElf {
                path: self.guest_binary.clone(),
                source,
            })?;
        if !is_static {
            return Err(ImageError::GuestNotStatic {
                path: self.guest_binary.clone(),
            });
        }
        let guest_sha256 = hex(&Sha256::digest(&guest));
        let guest = strip_debug(&self.guest_binary, scratch).unwrap_or(guest);
        let meta = format!("linux-image-{}", self.kernel_flavor);
        let kernel = apt::resolve(&[&meta], scratch)?
            .into_iter()
            .find(|p| p.name != meta && p.name.starts_with("linux-image-"))
            .ok_or_else(|| ImageError::Kernel {
                package: meta.clone(),
                what: "versioned linux-image dependency",
            })?;
        let packages = apt::resolve(rootfs::PACKAGES, scratch)?;
        let mut hasher = Sha256::new();
        hasher.update(format!("hearth-image recipe {RECIPE_VERSION}\n"));
        hasher.update(format!("kernel {kernel}\nguest {guest_sha256}\n"));
        for name in modules::REQUIRED.iter().chain(modules::OPTIONAL) {
            hasher.update(format!("module {name}\n"));
        }
        for pkg in &packages {
            hasher.update(format!("package {pkg}\n"));
        }
        Ok(Inputs {
            guest,
            guest_sha256,
            kernel,
            packages,
            hash: hex(&hasher.finalize()),
        })
    }

    fn assemble(
        &self,
        inputs: &Inputs,
        cache: &Path,
        scratch: &Path,
        out: &Path,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Manifest, ImageError> {
        let downloads = scratch.join("downloads");
        std::fs::create_dir(&downloads).map_err(|source| ImageError::Io {
            op: "create",
            path: downloads.clone(),
            source,
        })?;
        progress(Progress::Downloading {
            packages: inputs.packages.len() + 1,
        });
        let mut all = inputs.packages.clone();
        all.push(inputs.kernel.clone());
        let mut debs = apt::download(&all, cache, &downloads)?;
        let kernel_deb = debs.pop().unwrap_or_default();

        let kernel_tree = scratch.join("kernel");
        apt::extract(&kernel_deb, &kernel_tree)?;
        let (release, vmlinuz) = find_kernel(&kernel_tree, &inputs.kernel)?;
        copy_private(&vmlinuz, &out.join(KERNEL_FILE))?;
        let modules_dir = kernel_tree.join("lib/modules").join(&release);
        let selected: Vec<Module> =
            modules::select(&modules_dir, modules::REQUIRED, modules::OPTIONAL)?;
        progress(Progress::Kernel {
            release: release.clone(),
            modules: selected.len(),
        });

        progress(Progress::Initramfs);
        let mut spec = InitramfsSpec {
            init: &inputs.guest,
            modules_dir: &modules_dir,
            kernel_release: &release,
            modules: &selected,
        };
        initramfs::write(&spec, &out.join(INITRD_FILE))?;
        spec.modules = &[];
        initramfs::write(&spec, &out.join(BASELINE_INITRD_FILE))?;

        progress(Progress::Rootfs);
        let staging = scratch.join("rootfs");
        std::fs::create_dir(&staging).map_err(|source| ImageError::Io {
            op: "create",
            path: staging.clone(),
            source,
        })?;
        rootfs::stage(&debs, &inputs.guest, &staging)?;
        rootfs::make_ext4(&staging, &out.join(ROOTFS_FILE))?;

        Ok(Manifest {
            hash: inputs.hash.clone(),
            recipe_version: RECIPE_VERSION,
            kernel_package: inputs.kernel.to_string(),
            kernel_release: release,
            modules: selected.into_iter().map(|m| m.name).collect(),
            packages: inputs.packages.iter().map(ToString::to_string).collect(),
            guest_sha256: inputs.guest_sha256.clone(),
            built_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        })
    }
}

/// The release (`6.1.0-57-cloud-amd64`) and `boot/vmlinuz-<release>` of an unpacked kernel.
fn find_kernel(tree: &Path, pkg: &Package) -> Result<(String, PathBuf), ImageError> {
    let release = pkg
        .name
        .strip_prefix("linux-image-")
        .unwrap_or(&pkg.name)
        .to_string();
    let vmlinuz = tree.join("boot").join(format!("vmlinuz-{release}"));
    if !vmlinuz.is_file() {
        return Err(ImageError::Kernel {
            package: pkg.to_string(),
            what: "boot/vmlinuz-<release>",
        });
    }
    if !tree.join("lib/modules").join(&release).is_dir() {
        return Err(ImageError::Kernel {
            package: pkg.to_string(),
            what: "lib/modules/<release>",
        });
    }
    Ok((release, vmlinuz))
}

/// The guest binary without its debug sections, when binutils' `strip` is installed: a debug
/// build is ~100 MB with them and ~16 MB without, and every boot decompresses the initramfs.
/// Without `strip` the binary goes in as it is (the hash names the input binary either way).
fn strip_debug(binary: &Path, scratch: &Path) -> Option<Vec<u8>> {
    let out = scratch.join("hearth-guest.stripped");
    let status = std::process::Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&out)
        .arg(binary)
        .status();
    match status {
        Ok(status) if status.success() => std::fs::read(&out).ok(),
        Ok(status) => {
            tracing::warn!(%status, binary = %binary.display(), "strip failed; using the binary as is");
            None
        }
        Err(err) => {
            tracing::warn!(%err, "no strip (binutils); the guest binary keeps its debug sections");
            None
        }
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<(), ImageError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|source| {
        ImageError::Io {
            op: "chmod",
            path: path.to_path_buf(),
            source,
        }
    })
}

fn copy_private(from: &Path, to: &Path) -> Result<(), ImageError> {
    let io_err = |op, path: &Path| {
        let path = path.to_path_buf();
        move |source| ImageError::Io { op, path, source }
    };
    let mut src = std::fs::File::open(from).map_err(io_err("open", from))?;
    let mut dst = create_private(to).map_err(io_err("create", to))?;
    std::io::copy(&mut src, &mut dst).map_err(io_err("copy to", to))?;
    dst.sync_all().map_err(io_err("sync", to))
}
