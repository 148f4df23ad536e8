//! The kinds of the image store's errors (see `hearth_sandbox::ErrorKind`).

use hearth_sandbox::{Classify, ErrorKind};

use crate::kernel::KernelError;
use crate::ImageError;

/// For `hearth image`: which image, and whether the host can build one. (A sandbox that needs
/// an image classifies any image problem as the host lacking one.)
impl Classify for ImageError {
    fn kind(&self) -> ErrorKind {
        match self {
            ImageError::BadHash(_) | ImageError::InUse(_) | ImageError::GuestNotStatic { .. } => {
                ErrorKind::BadInput
            }
            ImageError::NoCurrent { .. } => ErrorKind::NotFound,
            ImageError::Io { .. }
            | ImageError::Damaged { .. }
            | ImageError::GuestElf { .. }
            | ImageError::Kernel { .. }
            | ImageError::Dirs(_)
            | ImageError::Apt(_)
            | ImageError::Modules(_)
            | ImageError::Initramfs(_)
            | ImageError::Rootfs(_)
            | ImageError::Manifest { .. } => ErrorKind::HostLacks,
        }
    }
}

impl Classify for KernelError {
    fn kind(&self) -> ErrorKind {
        match self {
            KernelError::NotAConfig { .. } => ErrorKind::BadInput,
            KernelError::Io { .. } => ErrorKind::Internal,
            KernelError::BaseConfig { .. }
            | KernelError::MissingTools { .. }
            | KernelError::OptionsDropped(_)
            | KernelError::Make { .. }
            | KernelError::NoTarball { .. }
            | KernelError::NoCurrent { .. }
            | KernelError::Damaged { .. }
            | KernelError::Apt(_)
            | KernelError::Dirs(_) => ErrorKind::HostLacks,
        }
    }
}
