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
}

impl GuestImageSource for VmImages {
    /// The current image with its own kernel (QEMU), or with the kernel built by `hearth image
    /// kernel --firecracker` and the module-less initramfs (its `/init` is the same
    /// hearth-guest; that kernel has everything built in, and the image's modules belong to
    /// Debian's kernel).
    fn current(&self, kernel: BootKernel) -> Result<VmImagePaths, ImageUnavailable> {
        // The Firecracker kernel first: without it, that is what to build first.
        let firecracker_kernel = match kernel {
            BootKernel::Image => None,
            BootKernel::Firecracker => {
                Some(current_kernel(&self.firecracker_kernels_dir()).map_err(unavailable)?)
            }
        };
        let image = GuestImage::current(&self.images_dir()).map_err(build_hint)?;
        Ok(match firecracker_kernel {
            None => VmImagePaths {
                kernel: image.kernel,
                initrd: image.initrd,
                rootfs: image.rootfs,
            },
            Some(kernel) => VmImagePaths {
                kernel,
                initrd: image.baseline_initrd,
                rootfs: image.rootfs,
            },
        })
    }

    /// The image whose root filesystem is `rootfs` (recorded by a saved VM), if it is still
    /// one of the complete images under the state dir.
    fn with_rootfs(&self, rootfs: &Path) -> Result<VmImagePaths, ImageUnavailable> {
        let images = self.images_dir();
        let hash = rootfs
            .parent()
            .filter(|dir| dir.parent() == Some(images.as_path()))
            .and_then(Path::file_name)
            .and_then(|name| name.to_str())
            .unwrap_or_default();
        let image = GuestImage::open(&images, hash).map_err(unavailable)?;
        if image.rootfs != rootfs {
            return Err(unavailable(ImageError::Damaged {
                hash: hash.to_owned(),
                problem: format!("its rootfs is {}", image.rootfs.display()),
            }));
        }
        Ok(VmImagePaths {
            kernel: image.kernel,
            initrd: image.initrd,
            rootfs: image.rootfs,
        })
    }
}

fn unavailable(err: impl std::fmt::Display) -> ImageUnavailable {
    ImageUnavailable(err.to_string())
}

/// A missing or damaged current image, with how to make one.
fn build_hint(err: ImageError) -> ImageUnavailable {
    let message = err.to_string();
    if message.contains("hearth image build") {
        ImageUnavailable(message)
    } else {
        ImageUnavailable(format!("{message} (build one with: hearth image build)"))
    }
}
