//! Where a VM's guest image is found under hearth's state dir: the current image (QEMU), the
//! current image with the Firecracker kernel, or the image a saved VM was taken with.

use std::path::{Path, PathBuf};

use super::VmImagePaths;
use crate::backend::BackendError;
use crate::image::kernel::current_kernel;
use crate::image::{GuestImage, ImageError};

/// The guest images and kernels under one state dir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmImages {
    state_dir: PathBuf,
}

impl VmImages {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            state_dir: state_dir.to_owned(),
        }
    }

    /// Where built guest images live.
    pub fn images_dir(&self) -> PathBuf {
        self.state_dir.join("images")
    }

    /// Where built Firecracker kernels live.
    pub fn firecracker_kernels_dir(&self) -> PathBuf {
        self.state_dir.join("kernels").join("firecracker")
    }

    /// The current guest image's files, or why there is none.
    pub fn current(&self) -> Result<VmImagePaths, ImageError> {
        let image = GuestImage::current(&self.images_dir())?;
        Ok(VmImagePaths {
            kernel: image.kernel,
            initrd: image.initrd,
            rootfs: image.rootfs,
        })
    }

    /// What a Firecracker VM boots: the kernel built by `hearth image kernel --firecracker`,
    /// the current image's module-less initramfs (its `/init` is the same hearth-guest; the
    /// kernel has everything built in, and the image's modules belong to Debian's kernel) and
    /// its rootfs.
    pub fn firecracker(&self) -> Result<VmImagePaths, BackendError> {
        let kernel = current_kernel(&self.firecracker_kernels_dir())?;
        let image = GuestImage::current(&self.images_dir())?;
        Ok(VmImagePaths {
            kernel,
            initrd: image.baseline_initrd,
            rootfs: image.rootfs,
        })
    }

    /// The guest image whose root filesystem is `rootfs` (recorded by a saved VM), if it is
    /// still one of the complete images under the state dir.
    pub fn with_rootfs(&self, rootfs: &Path) -> Result<VmImagePaths, ImageError> {
        let images = self.images_dir();
        let hash = rootfs
            .parent()
            .filter(|dir| dir.parent() == Some(images.as_path()))
            .and_then(Path::file_name)
            .and_then(|name| name.to_str())
            .unwrap_or_default();
        let image = GuestImage::open(&images, hash)?;
        if image.rootfs != rootfs {
            return Err(ImageError::Damaged {
                hash: hash.to_owned(),
                problem: format!("its rootfs is {}", image.rootfs.display()),
            });
        }
        Ok(VmImagePaths {
            kernel: image.kernel,
            initrd: image.initrd,
            rootfs: image.rootfs,
        })
    }

    /// [`Self::with_rootfs`] for a restore, with the error saying it is the snapshot's image.
    pub fn of_saved(&self, rootfs: &Path) -> Result<VmImagePaths, BackendError> {
        self.with_rootfs(rootfs)
            .map_err(|source| BackendError::SavedImage {
                path: rootfs.to_owned(),
                source,
            })
    }
}
