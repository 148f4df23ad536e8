//! A process named for good: its pid plus its start time (clock ticks since boot, field 22 of
//! `/proc/PID/stat`). Pids are reused; the start times of one pid are not, so a recorded
//! `PID STARTTIME` never names a later process that got the same pid. Used for every process
//! hearth leaves running without a parent that waits for it: supervisors and VMMs.

use std::fmt;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

use crate::pidfd::{Pidfd, PidfdError};

/// `PID STARTTIME`, as written to and read from pid files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessStamp {
    pub pid: u32,
    pub start_time: u64,
}

impl ProcessStamp {
    /// Parses `PID STARTTIME` (surrounding whitespace allowed, nothing else).
    pub fn parse(text: &str) -> Option<Self> {
        let mut words = text.split_whitespace();
        let pid = words.next()?.parse().ok()?;
        let start_time = words.next()?.parse().ok()?;
        words.next().is_none().then_some(Self { pid, start_time })
    }

    /// The stamp of the live process `pid`.
    pub fn of(pid: u32) -> io::Result<Self> {
        let (start_time, _) = stat(pid)?;
        Ok(Self { pid, start_time })
    }

    /// Whether this very process still runs (a zombie has finished running).
    pub fn is_alive(&self) -> bool {
        matches!(stat(self.pid), Ok((start, state)) if start == self.start_time && state != 'Z' && state != 'X')
    }

    /// The stamp in `path`: `None` when the file is missing or does not hold a stamp.
    pub fn read(path: &Path) -> io::Result<Option<Self>> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(Self::parse(&text)),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Writes the stamp to a new file (created exclusively, 0600).
    pub fn write_new(&self, path: &Path) -> io::Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        writeln!(file, "{self}")
    }

    /// Kills this process if it is still the one recorded and waits until it is gone; returns
    /// whether it had to be killed.
    pub fn kill(&self, timeout: Duration) -> Result<bool, PidfdError> {
        let Ok(pid) = i32::try_from(self.pid) else {
            return Ok(false);
        };
        let Some(pidfd) = Pidfd::open(pid)? else {
            return Ok(false);
        };
        // Checked after the pidfd is open: from here on the pid can't be reused under us.
        if !self.is_alive() {
            return Ok(false);
        }
        pidfd.signal(libc::SIGKILL)?;
        if pidfd.wait(timeout)? {
            Ok(true)
        } else {
            Err(PidfdError::StillRunning {
                pid,
                waited: timeout,
            })
        }
    }
}

impl fmt::Display for ProcessStamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.pid, self.start_time)
    }
}

/// Field 22 (start time) and field 3 (state) of `/proc/PID/stat`.
fn stat(pid: u32) -> io::Result<(u64, char)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed /proc stat");
    // The command name (field 2) is in parentheses and may contain spaces or ')'.
    let after_comm = &text[text.rfind(')').ok_or_else(bad)? + 1..];
    let mut fields = after_comm.split_whitespace();
    let state = fields
        .next()
        .and_then(|s| s.chars().next())
        .ok_or_else(bad)?;
    // After the state come fields 4.., so starttime (22) is 18 further on.
    let start = fields
        .nth(18)
        .and_then(|f| f.parse().ok())
        .ok_or_else(bad)?;
    Ok((start, state))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip_through_a_file_and_name_this_process() {
        let me = ProcessStamp::of(std::process::id()).unwrap();
        assert!(me.is_alive());
        assert_eq!(ProcessStamp::parse(&format!("{me}\n")), Some(me));
        assert_eq!(ProcessStamp::parse("12"), None);
        assert_eq!(ProcessStamp::parse("12 3 4"), None);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.pid");
        me.write_new(&path).unwrap();
        assert!(me.write_new(&path).is_err(), "created exclusively");
        assert_eq!(ProcessStamp::read(&path).unwrap(), Some(me));
        assert_eq!(ProcessStamp::read(&dir.path().join("none")).unwrap(), None);
        // Same pid, another start time: a later process that reused the pid.
        let reused = ProcessStamp {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(!reused.is_alive());
        assert!(!reused.kill(Duration::from_secs(1)).unwrap());
    }
}
