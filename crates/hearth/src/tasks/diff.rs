//! The workspace diff a task hands back: a snapshot before the agent runs, `diff -ruN` after.

use std::fs;
use std::io;
use std::os::unix::fs::{symlink, DirBuilderExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Workspaces bigger than this are not snapshotted (no diff), so a task on a huge repo does not
/// copy gigabytes first.
const MAX_SNAPSHOT_BYTES: u64 = 256 * 1024 * 1024;
/// Diffs longer than this are cut, with a marker.
const MAX_DIFF_BYTES: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    #[error("cannot snapshot {path}: {source}")]
    Snapshot { path: PathBuf, source: io::Error },
    #[error("workspace is over {MAX_SNAPSHOT_BYTES} bytes; no diff is kept")]
    TooLarge,
    #[error("cannot run diff: {0}")]
    Diff(io::Error),
}

/// Copies `workspace` into `snapshot` (which must not exist): files, dirs and symlinks.
pub fn snapshot(workspace: &Path, snapshot: &Path) -> Result<(), DiffError> {
    let mut budget = MAX_SNAPSHOT_BYTES;
    copy_tree(workspace, snapshot, &mut budget)
}

fn copy_tree(from: &Path, to: &Path, budget: &mut u64) -> Result<(), DiffError> {
    let err = |path: &Path| {
        let path = path.to_owned();
        move |source| DiffError::Snapshot { path, source }
    };
    fs::DirBuilder::new()
        .mode(0o700)
        .create(to)
        .map_err(err(to))?;
    for entry in fs::read_dir(from).map_err(err(from))? {
        let entry = entry.map_err(err(from))?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type().map_err(err(&src))?;
        if kind.is_symlink() {
            symlink(fs::read_link(&src).map_err(err(&src))?, &dst).map_err(err(&dst))?;
        } else if kind.is_dir() {
            copy_tree(&src, &dst, budget)?;
        } else if kind.is_file() {
            let len = entry.metadata().map_err(err(&src))?.len();
            *budget = budget.checked_sub(len).ok_or(DiffError::TooLarge)?;
            fs::copy(&src, &dst).map_err(err(&src))?;
        }
    }
    Ok(())
}

/// A unified diff from `before` to `after`, with paths shown relative to the workspace.
pub fn unified_diff(before: &Path, after: &Path) -> Result<String, DiffError> {
    // --no-dereference: the workspace was written by untrusted code; a symlink to / must be
    // compared as a link, never followed into the host's files.
    let out = Command::new("diff")
        .args(["-ruN", "--no-dereference", "--exclude=__pycache__"])
        .arg(before)
        .arg(after)
        .output()
        .map_err(DiffError::Diff)?;
    // diff exits 0 (same), 1 (different) or 2 (trouble).
    if out.status.code() == Some(2) {
        let message = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        return Err(DiffError::Diff(io::Error::other(message)));
    }
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (before, after) = (before.display().to_string(), after.display().to_string());
    text = text
        .replace(&format!("{before}/"), "a/")
        .replace(&format!("{after}/"), "b/");
    if text.len() > MAX_DIFF_BYTES {
        let mut cut = MAX_DIFF_BYTES;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("\n[hearth: diff truncated]\n");
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_then_diff_shows_changes_only() {
        let tmp = tempfile::tempdir().unwrap();
        let ws = tmp.path().join("ws");
        fs::create_dir_all(ws.join("sub")).unwrap();
        fs::write(ws.join("a.py"), "x = 1\n").unwrap();
        fs::write(ws.join("sub/keep.txt"), "same\n").unwrap();
        let snap = tmp.path().join("snap");
        snapshot(&ws, &snap).unwrap();
        assert_eq!(unified_diff(&snap, &ws).unwrap(), "");
        fs::write(ws.join("a.py"), "x = 2\n").unwrap();
        fs::write(ws.join("new.txt"), "hello\n").unwrap();
        let diff = unified_diff(&snap, &ws).unwrap();
        assert!(diff.contains("-x = 1") && diff.contains("+x = 2"), "{diff}");
        assert!(diff.contains("+hello"), "{diff}");
        assert!(!diff.contains("keep.txt"), "{diff}");
    }
}
