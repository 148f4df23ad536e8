//! Caps on the log files a sandbox's processes write on the host (hearth-guest's `guest.log`,
//! a VM's `console.log` and `vmm.log`).
//!
//! Their writers hold the files open in append mode, so the sandbox's supervisor caps them from
//! outside: when one passes its cap it is truncated to nothing and starts with a line saying so,
//! and the writer's next append lands at the new end. Between two checks a file can overshoot
//! by what its writer manages in that time (a second), which is bounded: hearth-guest logs a
//! line per request, a guest's serial console is slow.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::Path;

/// Largest size a sandbox's log reaches before it is cut.
pub const LOG_CAP_BYTES: u64 = 8 * 1024 * 1024;

/// Truncates the file at `path` if it is over `cap` bytes, leaving a note with the size it had.
/// Returns whether it did. A missing file is fine; a symlink is never followed.
pub fn cap(path: &Path, cap: u64) -> io::Result<bool> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(err) => return Err(err),
    };
    if !meta.is_file() || meta.len() <= cap {
        return Ok(false);
    }
    let mut file = OpenOptions::new()
        .write(true)
        .custom_flags_nofollow()
        .open(path)?;
    file.set_len(0)?;
    // O_APPEND-less handle at offset 0: the note goes first, the writer's appends follow it.
    writeln!(
        file,
        "[hearth: log cut at {} bytes (cap {cap}); what came before is gone]",
        meta.len()
    )?;
    Ok(true)
}

trait NoFollow {
    fn custom_flags_nofollow(&mut self) -> &mut Self;
}

impl NoFollow for OpenOptions {
    fn custom_flags_nofollow(&mut self) -> &mut Self {
        std::os::unix::fs::OpenOptionsExt::custom_flags(self, libc::O_NOFOLLOW)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_over_its_cap_restarts_with_a_note_and_appends_continue() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("guest.log");
        let mut writer = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        writer.write_all(&[b'x'; 2048]).unwrap();
        assert!(!cap(&path, 4096).unwrap(), "under the cap: untouched");
        writer.write_all(&[b'y'; 4096]).unwrap();
        assert!(cap(&path, 4096).unwrap());
        writer.write_all(b"after\n").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("[hearth: log cut at 6144 bytes"), "{text}");
        assert!(text.ends_with("after\n"), "{text}");
        assert!(text.len() < 200, "{}", text.len());
        assert!(!cap(&tmp.path().join("missing"), 1).unwrap());
    }
}
