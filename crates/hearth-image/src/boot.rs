//! What a VM boots, found under hearth's state dir: the current image with its own kernel
//! (QEMU), the current image with the Firecracker kernel, or the image a saved VM was taken
//! with. This is the store's side of the VM backends' [`GuestImageSource`] port.

use std::path::{Path, PathBuf};

use hearth_sandbox::backend::vm::{BootKernel, GuestImageSource, ImageUnavailable, VmImagePaths};

use crate::kernel::current_kernel;
use crate::{GuestImage, ImageError};

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
    pub fn firecracker(&self) -> Result<VmImagePaths, ImageUnavailable> {
        let kernel = current_kernel(&self.firecracker_kernels_dir()).map_err(unavailable)?;
        let image = GuestImage::current(&self.images_dir()).map_err(build_hint)?;
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
}

impl GuestImageSource for VmImages {
    fn current(&self, kernel: BootKernel) -> Result<VmImagePaths, ImageUnavailable> {
        match kernel {
            BootKernel::Image => VmImages::current(self).map_err(build_hint),
            BootKernel::Firecracker => self.firecracker(),
        }
    }

    fn with_rootfs(&self, rootfs: &Path) -> Result<VmImagePaths, ImageUnavailable> {
        VmImages::with_rootfs(self, rootfs).map_err(unavailable)
    }
}

fn unavailable(err: impl std::fmt::Display) -> ImageUnavailable {
    ImageUnavailable(err.to_string())
}

/// A missing or damaged current image, with how to make one.
fn build_hint(err: ImageError) -> ImageUnavailable {
    ImageUnavailable(format!("{err} (build one with: hearth image build)"))
}
