//! The host's seccomp policy applied to every process the guest starts (`--seccomp-bpf`).
//!
//! This is the layer microVM guests rely on; in OCI sandboxes the runtime already filters every
//! process, so it is opt-in there. The filters are decoded once at startup and installed in each
//! child between fork and exec, with nothing but a few system calls per program, which is what a
//! `pre_exec` hook may do (no allocation, no locks). The guest itself stays unfiltered.
//!
//! A program that can return `SECCOMP_RET_USER_NOTIF` (the host renders `audit_deny` that way for
//! VMs) is installed with `SECCOMP_FILTER_FLAG_NEW_LISTENER`. The child sends the listener fd
//! back over a socketpair ([`ListenerHandoff`]) before exec (the fd is close-on-exec, so the
//! program never holds it), and the guest answers each notification with EPERM and records it
//! (see `crate::audit`), which is how denials inside a VM reach the host's audit.
//!
//! The cost: a `pre_exec` hook stops std from using `posix_spawn`, so every exec pays for a real
//! `fork` (see `examples/exec_latency.rs`).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use hearth_proto::bpf::{self, BpfFileError};

/// Why the filter file can't be used; the guest refuses to start rather than run unfiltered.
#[derive(Debug, thiserror::Error)]
pub enum SeccompFileError {
    #[error("read seccomp BPF file {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("seccomp BPF file {path}: {source}")]
    Format { path: PathBuf, source: BpfFileError },
    #[error("seccomp BPF file {path}: more than one program returns user notifications")]
    TwoListeners { path: PathBuf },
}

/// Decoded programs, ready to install.
#[derive(Debug)]
pub struct GuestFilters {
    programs: Vec<Vec<libc::sock_filter>>,
    /// The program that returns user notifications, if any (at most one may have a listener).
    listener_program: Option<usize>,
}

impl GuestFilters {
    /// Reads and checks a file in the `hearth_proto::bpf` format.
    pub fn load(path: &Path) -> Result<Self, SeccompFileError> {
        let bytes = std::fs::read(path).map_err(|source| SeccompFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_bytes(&bytes, path)
    }

    /// Decodes a file already in memory; `origin` names it in errors.
    pub fn from_bytes(bytes: &[u8], origin: &Path) -> Result<Self, SeccompFileError> {
        let programs = bpf::decode(bytes).map_err(|source| SeccompFileError::Format {
            path: origin.to_owned(),
            source,
        })?;
        let notifying: Vec<usize> = programs
            .iter()
            .enumerate()
            .filter(|(_, p)| {
                p.iter()
                    .any(|i| hearth_seccomp::is_notify_return(i.code, i.k))
            })
            .map(|(i, _)| i)
            .collect();
        if notifying.len() > 1 {
            return Err(SeccompFileError::TwoListeners {
                path: origin.to_owned(),
            });
        }
        let listener_program = notifying.first().copied();
        let programs = programs
            .into_iter()
            .map(|p| {
                p.into_iter()
                    .map(|i| libc::sock_filter {
                        code: i.code,
                        jt: i.jt,
                        jf: i.jf,
                        k: i.k,
                    })
                    .collect()
            })
            .collect();
        Ok(Self {
            programs,
            listener_program,
        })
    }

    /// Whether an exec needs a [`ListenerHandoff`]: the filters audit calls through this guest.
    pub fn has_listener(&self) -> bool {
        self.listener_program.is_some()
    }

    /// How many programs are installed per process.
    pub fn len(&self) -> usize {
        self.programs.len()
    }

    /// Installs every program in the calling process. Async-signal-safe: only `prctl`,
    /// `seccomp` and (with a listener program) one `sendmsg` to `handoff`, no allocation, so it
    /// can run in a `pre_exec` hook.
    ///
    /// `handoff` is the child's end of a [`ListenerHandoff`]; without one a listener program is
    /// refused (EINVAL), since its audited calls would fail with ENOSYS and nobody would know.
    pub fn apply(&self, handoff: Option<RawFd>) -> io::Result<()> {
        // SAFETY: PR_SET_NO_NEW_PRIVS takes integer arguments only and touches no memory.
        // (Required for an unprivileged seccomp filter; runc already set it for the sandbox.)
        let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        for (index, program) in self.programs.iter().enumerate() {
            if self.listener_program == Some(index) {
                let handoff = handoff.ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
                let listener = install(program, libc::SECCOMP_FILTER_FLAG_NEW_LISTENER)?;
                // The listener is close-on-exec: the program itself never holds it.
                send_fd(handoff, listener)?;
            } else {
                install(program, 0)?;
            }
        }
        Ok(())
    }
}

/// Installs one program; returns what `seccomp(2)` returned (the listener fd with
/// `SECCOMP_FILTER_FLAG_NEW_LISTENER`). No TSYNC: the child of a fork has a single thread.
fn install(program: &[libc::sock_filter], flags: libc::c_ulong) -> io::Result<RawFd> {
    // Lengths were checked against BPF_MAXINSNS (4096) when the file was decoded.
    let len =
        u16::try_from(program.len()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let fprog = libc::sock_fprog {
        len,
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: `fprog` points at `len` initialised instructions that outlive the call; the kernel
    // copies the program and never writes through the pointer.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            flags,
            &fprog as *const libc::sock_fprog,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    RawFd::try_from(rc).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))
}

/// Space for one `SCM_RIGHTS` message with one fd: CMSG_SPACE(4) is 24 on 64-bit Linux; u64s
/// give the header its alignment.
type CmsgBuffer = [u64; 4];
/// The payload of that message: one fd.
const FD_BYTES: u32 = 4;
const _: () = assert!(std::mem::size_of::<RawFd>() == FD_BYTES as usize);

/// A msghdr for one byte of data and `control` as its control buffer.
fn one_byte_msghdr(
    iov: &mut libc::iovec,
    control: &mut CmsgBuffer,
    control_len: usize,
) -> libc::msghdr {
    // SAFETY: msghdr is plain data; all-zero is a valid value (no name, no iov, no control).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = control_len;
    msg
}

/// Sends `fd` over the Unix socket `socket` with `SCM_RIGHTS`, allocating nothing.
fn send_fd(socket: RawFd, fd: RawFd) -> io::Result<()> {
    let mut control: CmsgBuffer = [0; 4];
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: byte.len(),
    };
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(FD_BYTES) } as usize;
    // SAFETY: CMSG_LEN only computes a size.
    let len = unsafe { libc::CMSG_LEN(FD_BYTES) } as usize;
    if space > std::mem::size_of::<CmsgBuffer>() {
        return Err(io::Error::from_raw_os_error(libc::ENOBUFS));
    }
    let msg = one_byte_msghdr(&mut iov, &mut control, space);
    // SAFETY: msg_control points at `space` writable bytes aligned for cmsghdr, so the first
    // header is either null or lies inside `control`.
    let cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    if cmsg.is_null() {
        return Err(io::Error::from_raw_os_error(libc::ENOBUFS));
    }
    let header = libc::cmsghdr {
        cmsg_len: len,
        cmsg_level: libc::SOL_SOCKET,
        cmsg_type: libc::SCM_RIGHTS,
    };
    // SAFETY: `cmsg` is aligned and inside `control`, which has room for the header.
    unsafe { cmsg.write(header) };
    // SAFETY: CMSG_DATA of a header inside `control` points CMSG_LEN(4) - header bytes further,
    // still inside the CMSG_SPACE(4) bytes checked above.
    let data = unsafe { libc::CMSG_DATA(cmsg) };
    // SAFETY: `data` has room for one fd (see above); it may be unaligned for i32.
    unsafe { data.cast::<RawFd>().write_unaligned(fd) };
    // SAFETY: `msg` points at `iov`, `byte` and `control`, which outlive the call.
    let rc = unsafe { libc::sendmsg(socket, &msg, libc::MSG_NOSIGNAL) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The socketpair one exec's child hands its seccomp listener back on.
#[derive(Debug)]
pub struct ListenerHandoff {
    parent: UnixStream,
    child: UnixStream,
}

impl ListenerHandoff {
    /// Both ends are close-on-exec (std's default), so the program keeps neither.
    pub fn new() -> io::Result<Self> {
        let (parent, child) = UnixStream::pair()?;
        parent.set_nonblocking(true)?;
        Ok(Self { parent, child })
    }

    /// The end the `pre_exec` hook sends on; valid while `self` lives.
    pub fn child_fd(&self) -> RawFd {
        self.child.as_raw_fd()
    }

    /// After the spawn returned: the listener the child sent. The child sent it before exec, and
    /// the spawn returns only after the exec, so it is already queued (or never will be).
    pub fn receive(self) -> io::Result<OwnedFd> {
        drop(self.child);
        let mut control: CmsgBuffer = [0; 4];
        let mut byte = [0u8; 1];
        let mut iov = libc::iovec {
            iov_base: byte.as_mut_ptr().cast(),
            iov_len: byte.len(),
        };
        let mut msg = one_byte_msghdr(&mut iov, &mut control, std::mem::size_of::<CmsgBuffer>());
        // SAFETY: the buffers `msg` points at outlive the call and their lengths are given;
        // MSG_CMSG_CLOEXEC so later children never inherit the listener.
        let rc = unsafe {
            libc::recvmsg(
                self.parent.as_raw_fd(),
                &mut msg,
                libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        if msg.msg_flags & libc::MSG_CTRUNC != 0 {
            return Err(io::Error::other("the listener message was truncated"));
        }
        // SAFETY: the kernel filled `control` up to msg_controllen; the first header is null
        // or inside it.
        let cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
        if cmsg.is_null() {
            return Err(io::Error::other("the child sent no seccomp listener"));
        }
        // SAFETY: a non-null header from CMSG_FIRSTHDR is aligned and inside `control`.
        let header = unsafe { cmsg.read() };
        if header.cmsg_level != libc::SOL_SOCKET || header.cmsg_type != libc::SCM_RIGHTS {
            return Err(io::Error::other("the child sent no seccomp listener"));
        }
        // SAFETY: the data of an SCM_RIGHTS header with one fd lies inside `control`.
        let data = unsafe { libc::CMSG_DATA(cmsg) };
        // SAFETY: it holds one fd, possibly unaligned.
        let fd = unsafe { data.cast::<RawFd>().read_unaligned() };
        // SAFETY: the kernel installed `fd` in this process for this message; nothing else owns
        // it, and it is taken exactly once.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_a_damaged_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.bpf");
        std::fs::write(&path, b"HRTHBPF1\x01\0\0\0").unwrap();
        let err = GuestFilters::load(&path).unwrap_err().to_string();
        assert!(err.contains("f.bpf") && err.contains("ends early"), "{err}");
        assert!(GuestFilters::load(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn a_child_gets_the_filter_and_the_parent_does_not() {
        use std::os::unix::process::CommandExt;
        use std::sync::Arc;
        // seccomp_data.nr at offset 0; getppid (110) -> ERRNO(EPERM), else ALLOW.
        let program = [
            [0x20, 0, 0, 0, 0, 0, 0, 0],
            [0x15, 0, 0, 1, 110, 0, 0, 0],
            [0x06, 0, 0, 0, 1, 0, 0x05, 0],
            [0x06, 0, 0, 0, 0, 0, 0xff, 0x7f],
        ]
        .concat();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.bpf");
        std::fs::write(&path, bpf::encode(&[program]).unwrap()).unwrap();
        let filters = Arc::new(GuestFilters::load(&path).unwrap());
        assert_eq!(filters.len(), 1);
        let hook = Arc::clone(&filters);
        let mut cmd = std::process::Command::new("python3");
        cmd.args([
            "-c",
            "import ctypes; l = ctypes.CDLL(None, use_errno=True); \
             print(l.syscall(110), ctypes.get_errno())",
        ]);
        // SAFETY: the hook only makes the prctl and seccomp calls of `apply`.
        unsafe {
            cmd.pre_exec(move || hook.apply(None));
        }
        let out = cmd.output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "-1 1");
        assert!(
            nix::unistd::getppid().as_raw() > 0,
            "the parent stays unfiltered"
        );
    }

    /// getppid (110) -> USER_NOTIF, else ALLOW: the shape `render_bpf_notify` produces.
    fn notify_getppid_file(dir: &Path) -> PathBuf {
        let notify = hearth_seccomp::SECCOMP_RET_USER_NOTIF.to_le_bytes();
        let program = [
            vec![0x20, 0, 0, 0, 0, 0, 0, 0],
            vec![0x15, 0, 0, 1, 110, 0, 0, 0],
            [[0x06, 0, 0, 0].as_slice(), notify.as_slice()].concat(),
            vec![0x06, 0, 0, 0, 0, 0, 0xff, 0x7f],
        ]
        .concat();
        let path = dir.join("notify.bpf");
        std::fs::write(&path, bpf::encode(&[program]).unwrap()).unwrap();
        path
    }

    fn getppid_child() -> std::process::Command {
        let mut cmd = std::process::Command::new("python3");
        cmd.args([
            "-c",
            "import ctypes; l = ctypes.CDLL(None, use_errno=True); \
             print(l.syscall(110), ctypes.get_errno())",
        ]);
        cmd
    }

    #[test]
    fn a_listener_program_is_answered_and_recorded_by_the_guest() {
        use std::os::unix::process::CommandExt;
        use std::sync::Arc;
        let dir = tempfile::tempdir().unwrap();
        let filters = Arc::new(GuestFilters::load(&notify_getppid_file(dir.path())).unwrap());
        assert!(filters.has_listener());
        let audit = crate::audit::GuestAudit::new().unwrap();

        let handoff = ListenerHandoff::new().unwrap();
        let (hook, child_end) = (Arc::clone(&filters), handoff.child_fd());
        let mut cmd = getppid_child();
        cmd.stdout(std::process::Stdio::piped());
        // SAFETY: the hook only makes the prctl, seccomp and sendmsg calls of `apply`.
        unsafe {
            cmd.pre_exec(move || hook.apply(Some(child_end)));
        }
        let child = cmd.spawn().unwrap();
        let pid = child.id();
        audit.serve(handoff.receive().unwrap(), pid);
        let out = child.wait_with_output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "-1 1");

        // Every getppid under the filter is recorded: python3's own (it may start through a
        // shell wrapper, whose calls are recorded too), none of anything else.
        let page = audit.page(0, 1000);
        assert_eq!(page.total, page.entries.len() as u64, "{page:?}");
        assert!(page.entries.iter().all(|e| e.syscall_nr == 110
            && e.syscall_name.as_deref() == Some("getppid")
            && e.source == hearth_seccomp::audit::AuditSource::Guest));
        let python = page
            .entries
            .iter()
            .rfind(|e| e.comm.as_deref() == Some("python3"));
        assert!(python.is_some(), "{page:?}");
        assert!(page.entries.iter().any(|e| e.pid == Some(pid)), "{page:?}");
        audit.stop();
    }

    #[test]
    fn a_listener_program_without_a_handoff_is_refused() {
        use std::os::unix::process::CommandExt;
        use std::sync::Arc;
        let dir = tempfile::tempdir().unwrap();
        let filters = Arc::new(GuestFilters::load(&notify_getppid_file(dir.path())).unwrap());
        let mut cmd = getppid_child();
        // SAFETY: as above.
        unsafe {
            cmd.pre_exec(move || filters.apply(None));
        }
        let err = cmd.spawn().unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL), "{err}");
    }
}
