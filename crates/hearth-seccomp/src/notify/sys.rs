//! The seccomp notification fd and the three ioctls on it.
//!
//! The request numbers come from the libc crate; the assertions below pin them to the kernel's
//! `_IOWR('!', 0, struct seccomp_notif)` etc. for x86_64, so a libc change that broke them would
//! fail the build rather than send the kernel garbage.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;

// struct seccomp_notif is 80 bytes (u64 id, u32 pid, u32 flags, 64-byte seccomp_data) and
// struct seccomp_notif_resp 24; the sizes are encoded in the request numbers.
const _: () = assert!(std::mem::size_of::<libc::seccomp_notif>() == 80);
const _: () = assert!(std::mem::size_of::<libc::seccomp_notif_resp>() == 24);
#[cfg(all(target_arch = "x86_64", target_env = "gnu"))]
const _: () = {
    // _IOC(dir, '!', nr, size) = dir << 30 | size << 16 | '!' << 8 | nr; READ|WRITE = 3, WRITE = 1.
    assert!(libc::SECCOMP_IOCTL_NOTIF_RECV == 0xC050_2100);
    assert!(libc::SECCOMP_IOCTL_NOTIF_SEND == 0xC018_2101);
    assert!(libc::SECCOMP_IOCTL_NOTIF_ID_VALID == 0x4008_2102);
};

/// A seccomp user-notification fd (from a runtime, or from `SECCOMP_FILTER_FLAG_NEW_LISTENER`).
#[derive(Debug)]
pub struct NotifyFd(OwnedFd);

impl NotifyFd {
    /// Takes ownership of a notification fd. Nothing can check that it is one; the ioctls fail
    /// with EINVAL/ENOTTY if it isn't.
    pub fn from_owned(fd: OwnedFd) -> Self {
        Self(fd)
    }
}

impl AsFd for NotifyFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// One pending notification (the kernel's `struct seccomp_notif`).
pub(crate) type Notification = libc::seccomp_notif;

/// SECCOMP_IOCTL_NOTIF_RECV: takes the next notification (blocks if none is pending).
pub(crate) fn recv(fd: BorrowedFd<'_>) -> Result<Notification, Errno> {
    // The kernel rejects a non-zeroed buffer with EINVAL (since 5.9).
    let mut notif = libc::seccomp_notif {
        id: 0,
        pid: 0,
        flags: 0,
        data: libc::seccomp_data {
            nr: 0,
            arch: 0,
            instruction_pointer: 0,
            args: [0; 6],
        },
    };
    // SAFETY: `fd` is open for the duration of the borrow; the request's encoded size is
    // size_of::<seccomp_notif>() (asserted above) and `notif` is an exclusively borrowed, zeroed
    // struct of exactly that type, so the kernel writes only within it.
    let rc = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::SECCOMP_IOCTL_NOTIF_RECV,
            &mut notif as *mut libc::seccomp_notif,
        )
    };
    if rc < 0 {
        return Err(Errno::last());
    }
    Ok(notif)
}

/// SECCOMP_IOCTL_NOTIF_SEND: fails the call with `-errno`. ENOENT means the target is gone (it
/// was killed or the notification was interrupted), which the caller treats as done.
pub(crate) fn send_error(fd: BorrowedFd<'_>, id: u64, errno: i32) -> Result<(), Errno> {
    let resp = libc::seccomp_notif_resp {
        id,
        val: 0,
        error: -errno,
        flags: 0,
    };
    // SAFETY: `fd` is open for the duration of the borrow; the kernel reads exactly
    // size_of::<seccomp_notif_resp>() bytes (the request's encoded size, asserted above) from
    // `resp`, a live, fully initialised struct of that type (the kernel writes nothing back).
    let rc = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::SECCOMP_IOCTL_NOTIF_SEND,
            &resp as *const libc::seccomp_notif_resp,
        )
    };
    if rc < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// SECCOMP_IOCTL_NOTIF_ID_VALID: whether the notification's target still waits, i.e. whether
/// what was read from /proc/<pid> after RECV still describes the caller (pids get reused).
pub(crate) fn id_valid(fd: BorrowedFd<'_>, id: u64) -> Result<bool, Errno> {
    // SAFETY: `fd` is open for the duration of the borrow; the kernel reads one u64 (the
    // request's encoded size) from `&id`, which is live for the call.
    let rc = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::SECCOMP_IOCTL_NOTIF_ID_VALID,
            &id as *const u64,
        )
    };
    if rc == 0 {
        return Ok(true);
    }
    match Errno::last() {
        Errno::ENOENT => Ok(false),
        errno => Err(errno),
    }
}
