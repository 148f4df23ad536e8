//! Identifying supervisor processes through /proc: a pid plus its start time names one process
//! for good (pids are reused, start times of one pid are not), and the command line tells a
//! supervisor and its runtime root apart from everything else on the host.

use std::io;
use std::path::Path;

use hearth_sandbox::SandboxId;

/// A process as recorded in `supervisor.pid`: `PID STARTTIME` (clock ticks since boot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessStamp {
    pub pid: u32,
    pub start_time: u64,
}

impl ProcessStamp {
    pub fn parse(text: &str) -> Option<Self> {
        let mut words = text.split_whitespace();
        let pid = words.next()?.parse().ok()?;
        let start_time = words.next()?.parse().ok()?;
        words.next().is_none().then_some(Self { pid, start_time })
    }
}

/// The stamp of a live process, from field 22 of `/proc/PID/stat`.
pub fn stamp(pid: u32) -> io::Result<ProcessStamp> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) is in parentheses and may contain spaces or ')'.
    let after_comm = stat
        .rfind(')')
        .map(|at| &stat[at + 1..])
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no ')' in stat"))?;
    // Fields from 3 on; starttime is field 22, so index 19 here.
    let start_time = after_comm
        .split_whitespace()
        .nth(19)
        .and_then(|f| f.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no starttime in stat"))?;
    Ok(ProcessStamp { pid, start_time })
}

/// Every running `hearth ... --runtime-dir ROOT ... sandbox supervise ID` for this `ROOT`.
pub fn supervisors(runtime_dir: &Path) -> Vec<(ProcessStamp, SandboxId)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let id = supervised_id(&cmdline, runtime_dir)?;
            Some((stamp(pid).ok()?, id))
        })
        .collect()
}

/// The sandbox id of a supervisor command line of this runtime root.
fn supervised_id(cmdline: &[u8], runtime_dir: &Path) -> Option<SandboxId> {
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    let at = args
        .windows(2)
        .position(|w| w[0] == b"sandbox" && w[1] == b"supervise")?;
    let root = args
        .windows(2)
        .find(|w| w[0] == b"--runtime-dir")
        .map(|w| w[1])?;
    use std::os::unix::ffi::OsStrExt;
    if Path::new(std::ffi::OsStr::from_bytes(root)) != runtime_dir {
        return None;
    }
    let id = std::str::from_utf8(args.get(at + 2)?).ok()?;
    SandboxId::parse(id).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip_and_name_this_process() {
        let me = stamp(std::process::id()).unwrap();
        let text = format!("{} {}\n", me.pid, me.start_time);
        assert_eq!(ProcessStamp::parse(&text), Some(me));
        assert_eq!(ProcessStamp::parse("12"), None);
        assert_eq!(ProcessStamp::parse("12 3 4"), None);
    }

    #[test]
    fn recognises_supervisors_of_one_root_only() {
        let line = b"/usr/bin/hearth\0--runtime-dir\0/run/h\0-v\0sandbox\0supervise\0sb-1\0";
        let id = supervised_id(line, Path::new("/run/h")).unwrap();
        assert_eq!(id.as_str(), "sb-1");
        assert!(supervised_id(line, Path::new("/run/other")).is_none());
        assert!(supervised_id(b"/usr/bin/hearth\0sandbox\0ls\0", Path::new("/run/h")).is_none());
    }
}
