//! Firecracker VMM seccomp faults.
//!
//! Firecracker installs its own filters on its threads; a call outside them raises SIGSYS, its
//! handler logs "Shutting down VM after intercepting a bad syscall (N)" and the process exits with
//! status 148 (`FcExitCode::BadSyscall`). Only the number survives, so that is what is recorded.

/// Firecracker's exit status after a seccomp fault.
pub const FIRECRACKER_BAD_SYSCALL_EXIT: i32 = 148;

/// What a VMM exit says about seccomp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmmFault {
    /// Not a seccomp fault.
    None,
    /// A seccomp fault on this syscall number.
    Syscall(i64),
    /// Exit status 148, but no log line named the syscall.
    Unidentified,
}

impl VmmFault {
    /// Classifies an exit. A "bad syscall (N)" line counts even with another status, since the
    /// status may have been lost (for example when a wrapper like the jailer reports its own).
    pub fn from_exit(exit_status: i32, log: &str) -> Self {
        match log.lines().find_map(parse_bad_syscall) {
            Some(nr) => Self::Syscall(nr),
            None if exit_status == FIRECRACKER_BAD_SYSCALL_EXIT => Self::Unidentified,
            None => Self::None,
        }
    }
}

/// The N in a line containing "bad syscall (N)".
pub fn parse_bad_syscall(line: &str) -> Option<i64> {
    const MARKER: &str = "bad syscall (";
    let start = line.find(MARKER)? + MARKER.len();
    let rest = &line[start..];
    let end = rest.find(')')?;
    rest[..end].trim().parse().ok()
}
