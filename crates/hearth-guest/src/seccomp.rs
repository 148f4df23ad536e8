//! The host's seccomp policy applied to every process the guest starts (`--seccomp-bpf`).
//!
//! This is the layer microVM guests rely on; in OCI sandboxes the runtime already filters every
//! process, so it is opt-in there. The filters are decoded once at startup and installed in each
//! child between fork and exec, with nothing but two system calls per program, which is what a
//! `pre_exec` hook may do (no allocation, no locks). The guest itself stays unfiltered.
//!
//! The cost: a `pre_exec` hook stops std from using `posix_spawn`, so every exec pays for a real
//! `fork` (see `examples/exec_latency.rs`).

use std::io;
use std::path::{Path, PathBuf};

use hearth_proto::bpf::{self, BpfFileError};

/// Why the filter file can't be used; the guest refuses to start rather than run unfiltered.
#[derive(Debug, thiserror::Error)]
pub enum SeccompFileError {
    #[error("read seccomp BPF file {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("seccomp BPF file {path}: {source}")]
    Format { path: PathBuf, source: BpfFileError },
}

/// Decoded programs, ready to install.
#[derive(Debug)]
pub struct GuestFilters {
    programs: Vec<Vec<libc::sock_filter>>,
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
        Ok(Self { programs })
    }

    /// How many programs are installed per process.
    pub fn len(&self) -> usize {
        self.programs.len()
    }

    /// Installs every program in the calling process. Async-signal-safe: only `prctl` and
    /// `seccomp`, no allocation, so it can run in a `pre_exec` hook.
    pub fn apply(&self) -> io::Result<()> {
        // SAFETY: PR_SET_NO_NEW_PRIVS takes integer arguments only and touches no memory.
        // (Required for an unprivileged seccomp filter; runc already set it for the sandbox.)
        let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        for program in &self.programs {
            // Lengths were checked against BPF_MAXINSNS (4096) when the file was decoded.
            let len = u16::try_from(program.len())
                .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
            let fprog = libc::sock_fprog {
                len,
                filter: program.as_ptr().cast_mut(),
            };
            // SAFETY: `fprog` points at `len` initialised instructions that outlive the call;
            // the kernel copies the program and never writes through the pointer. No TSYNC: the
            // child of a fork has a single thread.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_seccomp,
                    libc::SECCOMP_SET_MODE_FILTER,
                    0,
                    &fprog as *const libc::sock_fprog,
                )
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
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
            cmd.pre_exec(move || hook.apply());
        }
        let out = cmd.output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "-1 1");
        assert!(
            nix::unistd::getppid().as_raw() > 0,
            "the parent stays unfiltered"
        );
    }
}
