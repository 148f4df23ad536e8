//! Handing a task's private workspace back to the host: a copy that trusts nothing in it.
//!
//! The workspace was written by untrusted code, possibly still running. The copy walks it with
//! `openat(O_NOFOLLOW)` from directory fds, so a path swapped for a symlink mid-copy is refused
//! instead of followed; it copies regular files (without setuid, setgid or sticky bits),
//! directories and symlinks (as links, never followed), and skips device nodes, FIFOs and
//! sockets; everything it makes is owned by hearth's user and closed to others. What it left out
//! is counted, so the task can say so. It stops at a byte budget (the sandbox's disk quota):
//! a sparse file or a thousand hard links to one big file cannot make the copy outgrow the
//! workspace it came from, and directories and links count as entries like files do.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::dir::{Dir, Type};
use nix::fcntl::{openat, readlinkat, OFlag};
use nix::sys::stat::{fstat, Mode, SFlag};

/// Most entries copied: a workspace of more is cut there (and says so).
const MAX_ENTRIES: u64 = 1_000_000;
/// Deepest directory nesting followed.
const MAX_DEPTH: usize = 256;

/// Why the copy could not be made at all (single entries that cannot be copied are skipped and
/// counted instead).
#[derive(Debug, thiserror::Error)]
pub enum HandbackError {
    #[error("cannot open the workspace {path}: {source}")]
    Open { path: PathBuf, source: nix::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

/// What the copy did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Handback {
    pub files: u64,
    pub bytes: u64,
    /// Directories and symlinks made.
    pub others: u64,
    /// Device nodes, FIFOs, sockets, and entries swapped or vanished mid-copy.
    pub skipped: u64,
    /// Files whose setuid, setgid or sticky bit was dropped.
    pub stripped: u64,
    /// The copy stopped at [`MAX_ENTRIES`], [`MAX_DEPTH`] or its byte budget.
    pub truncated: bool,
}

impl Handback {
    fn entries(&self) -> u64 {
        self.files + self.skipped + self.others
    }
}

/// Copies the tree at `from` into the new directory `to` (which must not exist), at most
/// `budget` bytes of file content.
pub fn copy_out(from: &Path, to: &Path, budget: u64) -> Result<Handback, HandbackError> {
    let root = nix::fcntl::open(
        from,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|source| HandbackError::Open {
        path: from.to_owned(),
        source,
    })?;
    // SAFETY: `open` just returned this fd; nothing else owns it.
    let root = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(root) };
    make_dir(to)?;
    let mut walk = Walk {
        report: Handback::default(),
        budget,
    };
    copy_dir(root.as_fd(), to, 0, &mut walk)?;
    Ok(walk.report)
}

fn make_dir(path: &Path) -> Result<(), HandbackError> {
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(path)
        .map_err(|source| HandbackError::Write {
            path: path.to_owned(),
            source,
        })
}

/// The copy's progress and what is left of its byte budget.
struct Walk {
    report: Handback,
    budget: u64,
}

fn copy_dir(
    dir: BorrowedFd<'_>,
    to: &Path,
    depth: usize,
    walk: &mut Walk,
) -> Result<(), HandbackError> {
    let Ok(entries) = Dir::openat(
        Some(dir.as_raw_fd()),
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) else {
        walk.report.skipped += 1;
        return Ok(());
    };
    let names: Vec<(Vec<u8>, Option<Type>)> = entries
        .into_iter()
        .filter_map(Result::ok)
        .map(|entry| (entry.file_name().to_bytes().to_vec(), entry.file_type()))
        .filter(|(name, _)| name != b"." && name != b"..")
        .collect();
    for (name, kind) in names {
        if walk.report.entries() >= MAX_ENTRIES || walk.budget == 0 {
            walk.report.truncated = true;
            return Ok(());
        }
        let target = to.join(std::ffi::OsStr::from_bytes(&name));
        match kind {
            Some(Type::Directory) if depth >= MAX_DEPTH => walk.report.truncated = true,
            Some(Type::Directory) => match open_in(dir, &name, OFlag::O_DIRECTORY) {
                Ok(sub) => {
                    make_dir(&target)?;
                    walk.report.others += 1;
                    copy_dir(sub.as_fd(), &target, depth + 1, walk)?;
                }
                Err(_) => walk.report.skipped += 1,
            },
            Some(Type::Symlink) => match readlinkat(Some(dir.as_raw_fd()), name.as_slice()) {
                Ok(link) => {
                    std::os::unix::fs::symlink(&link, &target).map_err(|source| {
                        HandbackError::Write {
                            path: target.clone(),
                            source,
                        }
                    })?;
                    walk.report.others += 1;
                }
                Err(_) => walk.report.skipped += 1,
            },
            Some(Type::File) => copy_file(dir, &name, &target, walk)?,
            _ => walk.report.skipped += 1,
        }
    }
    Ok(())
}

/// Opens `name` in `dir` without following a symlink and without blocking on a FIFO.
fn open_in(dir: BorrowedFd<'_>, name: &[u8], extra: OFlag) -> nix::Result<OwnedFd> {
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC | extra;
    let fd = openat(Some(dir.as_raw_fd()), name, flags, Mode::empty())?;
    // SAFETY: `openat` just returned this fd; nothing else owns it.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

fn copy_file(
    dir: BorrowedFd<'_>,
    name: &[u8],
    target: &Path,
    walk: &mut Walk,
) -> Result<(), HandbackError> {
    let report = &mut walk.report;
    let Ok(fd) = open_in(dir, name, OFlag::empty()) else {
        report.skipped += 1;
        return Ok(());
    };
    // What is open now is what gets copied: it must still be a regular file.
    let Ok(stat) = fstat(fd.as_raw_fd()) else {
        report.skipped += 1;
        return Ok(());
    };
    if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
        report.skipped += 1;
        return Ok(());
    }
    let special = stat.st_mode & 0o7000;
    if special != 0 {
        report.stripped += 1;
    }
    let write_err = |source| HandbackError::Write {
        path: target.to_owned(),
        source,
    };
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(target)
        .map_err(write_err)?;
    // What is left of the budget, and one byte more to notice a file that goes past it.
    let mut input = File::from(fd).take(walk.budget.saturating_add(1));
    let copied = io::copy(&mut input, &mut out).map_err(write_err)?;
    out.set_permissions(std::fs::Permissions::from_mode(stat.st_mode & 0o777))
        .map_err(write_err)?;
    if copied > walk.budget {
        out.set_len(walk.budget).map_err(write_err)?;
        report.truncated = true;
    }
    let kept = copied.min(walk.budget);
    walk.budget -= kept;
    report.files += 1;
    report.bytes += kept;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn copies_files_and_links_but_no_special_bits_or_nodes() {
        let tmp = tempfile::tempdir().unwrap();
        let ws = tmp.path().join("ws");
        std::fs::create_dir_all(ws.join("sub")).unwrap();
        std::fs::write(ws.join("sub/a.txt"), b"hello").unwrap();
        std::fs::write(ws.join("suid"), b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(ws.join("suid"), std::fs::Permissions::from_mode(0o4755)).unwrap();
        std::os::unix::fs::symlink("/etc/shadow", ws.join("link")).unwrap();
        nix::unistd::mkfifo(&ws.join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        let out = tmp.path().join("out");
        let report = copy_out(&ws, &out, 1 << 20).unwrap();
        assert_eq!(std::fs::read(out.join("sub/a.txt")).unwrap(), b"hello");
        let suid = std::fs::metadata(out.join("suid")).unwrap();
        assert_eq!(suid.mode() & 0o7777, 0o755, "setuid bit dropped");
        assert_eq!(
            std::fs::read_link(out.join("link")).unwrap(),
            Path::new("/etc/shadow"),
            "a link stays a link, never followed"
        );
        assert!(!out.join("fifo").exists());
        assert_eq!(std::fs::metadata(&out).unwrap().mode() & 0o777, 0o700);
        assert_eq!(
            report,
            Handback {
                files: 2,
                bytes: 15,
                others: 2,
                skipped: 1,
                stripped: 1,
                truncated: false
            }
        );
    }

    /// A sparse 10 GiB file and links to it cost a workspace nothing; the copy stops at its
    /// budget instead of filling the host.
    #[test]
    fn the_copy_stops_at_its_budget() {
        let tmp = tempfile::tempdir().unwrap();
        let ws = tmp.path().join("ws");
        std::fs::create_dir(&ws).unwrap();
        let sparse = std::fs::File::create(ws.join("sparse")).unwrap();
        sparse.set_len(10 << 30).unwrap();
        for i in 0..3 {
            std::fs::hard_link(ws.join("sparse"), ws.join(format!("link{i}"))).unwrap();
        }
        let out = tmp.path().join("out");
        let report = copy_out(&ws, &out, 4 << 20).unwrap();
        assert!(report.truncated);
        assert_eq!(report.bytes, 4 << 20);
        let total: u64 = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert_eq!(total, 4 << 20, "no more than the budget reached the host");
    }

    #[test]
    fn a_symlinked_workspace_root_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc", tmp.path().join("ws")).unwrap();
        assert!(matches!(
            copy_out(&tmp.path().join("ws"), &tmp.path().join("out"), 1 << 20),
            Err(HandbackError::Open { .. })
        ));
        assert!(!tmp.path().join("out").exists());
    }
}
