//! Finding supervisor processes through /proc: the command line tells a supervisor and its
//! runtime root apart from everything else on the host; a [`ProcessStamp`] names it for good.

use std::path::Path;

use hearth_sandbox::SandboxId;

pub use hearth_sandbox::process_stamp::ProcessStamp;

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
            Some((ProcessStamp::of(pid).ok()?, id))
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
    fn recognises_supervisors_of_one_root_only() {
        let line = b"/usr/bin/hearth\0--runtime-dir\0/run/h\0-v\0sandbox\0supervise\0sb-1\0";
        let id = supervised_id(line, Path::new("/run/h")).unwrap();
        assert_eq!(id.as_str(), "sb-1");
        assert!(supervised_id(line, Path::new("/run/other")).is_none());
        assert!(supervised_id(b"/usr/bin/hearth\0sandbox\0ls\0", Path::new("/run/h")).is_none());
    }
}
