//! Unpacking one image layer into its own directory, assuming the layer is hostile.
//!
//! Every entry is placed relative to an open directory fd, one path component at a time, with
//! `O_NOFOLLOW`: nothing an entry names is ever reached through a symlink, so no entry (nor a
//! symlink or hardlink an earlier entry planted) can write outside the layer's directory. What
//! each kind of hostile entry meets:
//!
//! | entry | outcome |
//! |---|---|
//! | a path with `..` | the layer is refused |
//! | an absolute path (`/etc/x`) | neutralised: placed relative to the layer's root |
//! | a path through a symlink or a file | the layer is refused |
//! | a symlink to anywhere (`/`, `../../..`) | kept as data: hearth never follows it on the host, the sandbox resolves it inside its own root |
//! | a hardlink to a path outside the layer, or to a file not in this layer | the layer is refused |
//! | a character or block device | dropped (counted in the stats) |
//! | setuid/setgid bits | cleared (and every template mount is `nosuid` too) |
//! | extended attributes (file capabilities among them) | dropped |
//! | uid/gid beyond the sandbox's 65536 ids | set to 65534 (nobody) |
//! | a file, or all files, larger than the limits (sparse files count at their full size) | the layer is refused |
//! | more entries than the limit (a tar bomb) | the layer is refused |
//! | content whose digest is not the layer's diff_id | the layer is refused |
//!
//! OCI whiteouts become overlayfs's own: `.wh.NAME` a 0:0 character device `NAME`,
//! `.wh..wh..opq` the `trusted.overlay.opaque` attribute on its directory, so the layer
//! directories stack directly as overlay lower layers (and [`crate::flatten`] reads the same
//! marks to build a VM's root filesystem).

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{fchmod, mkdirat, mknodat, Mode, SFlag};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchownat, linkat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};

use crate::digest::{is_over_limit, Digest, HashingReader};

/// The first id a sandbox cannot map (see `hearth_sandbox::userns::IDS_PER_SANDBOX`).
const MAPPED_IDS: u64 = 65_536;
const NOBODY: u32 = 65_534;
/// The name of overlayfs's opaque-directory mark.
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
/// Longest entry path or link target accepted (Linux's PATH_MAX).
const MAX_PATH: usize = 4096;

/// How much one layer may hold.
#[derive(Debug, Clone, Copy)]
pub struct LayerLimits {
    /// Bytes of file content, counting sparse files at their full size.
    pub bytes: u64,
    /// Entries of any kind.
    pub entries: u64,
}

/// What unpacking a layer found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct UnpackStats {
    pub entries: u64,
    /// Bytes of file content written.
    pub bytes: u64,
    /// Character and block devices left out.
    pub devices_dropped: u64,
    /// Files and dirs whose setuid/setgid bits were cleared.
    pub setid_cleared: u64,
    /// Entries whose absolute path was made relative.
    pub absolute_paths: u64,
    /// Entries whose uid or gid was beyond the sandbox's ids.
    pub ids_clamped: u64,
    pub whiteouts: u64,
}

/// Why a layer was refused.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("entry {path:?} climbs out of the layer with '..'")]
    DotDot { path: String },
    #[error("entry {path:?} is not a usable path")]
    BadPath { path: String },
    #[error("entry {path:?} goes through a symlink or a non-directory inside the layer")]
    ThroughLink { path: String },
    #[error("hardlink {path:?} points at {target:?}, which is not a file of this layer")]
    BadHardlink { path: String, target: String },
    #[error("entry {path:?} would replace a directory")]
    ReplacesDir { path: String },
    #[error("the layer holds more than {limit} bytes of files")]
    TooLarge { limit: u64 },
    #[error("the layer has more than {limit} entries")]
    TooManyEntries { limit: u64 },
    #[error("the layer's content is {actual}, but the image says {expected}")]
    DiffIdMismatch { expected: Digest, actual: Digest },
    #[error("the layer is not a readable tar stream: {0}")]
    Tar(io::Error),
    #[error("{op} {path:?} in the layer: {source}")]
    Io {
        op: &'static str,
        path: String,
        source: io::Error,
    },
}

/// Unpacks the (already decompressed) tar stream `tar` into `dest`, an empty directory, and
/// checks its digest against `diff_id`. `progress` is told the bytes of content written so far.
/// On error `dest` holds a partial layer: the caller throws the directory away.
pub fn unpack_layer(
    tar: impl Read,
    dest: &Path,
    diff_id: &Digest,
    limits: LayerLimits,
    progress: &mut dyn FnMut(u64),
) -> Result<UnpackStats, UnpackError> {
    let root = open_dir(None, dest.as_os_str()).map_err(|source| UnpackError::Io {
        op: "open",
        path: dest.display().to_string(),
        source,
    })?;
    // The tar stream itself may be no larger than its files plus a header per entry.
    let stream_limit = limits
        .bytes
        .saturating_add(limits.entries.saturating_mul(1536));
    let mut hashed = HashingReader::new(tar, stream_limit);
    let mut stats = UnpackStats::default();
    {
        let mut archive = tar::Archive::new(&mut hashed);
        let entries = archive.entries().map_err(tar_error(limits))?;
        let mut unpacker = Unpacker {
            root: &root,
            limits,
            stats: &mut stats,
        };
        for entry in entries {
            let mut entry = entry.map_err(tar_error(limits))?;
            unpacker.entry(&mut entry)?;
            progress(unpacker.stats.bytes);
        }
    }
    let (actual, _) = hashed.finish().map_err(tar_error(limits))?;
    if &actual != diff_id {
        return Err(UnpackError::DiffIdMismatch {
            expected: diff_id.clone(),
            actual,
        });
    }
    Ok(stats)
}

fn tar_error(limits: LayerLimits) -> impl Fn(io::Error) -> UnpackError {
    move |err| {
        if is_over_limit(&err) {
            UnpackError::TooLarge {
                limit: limits.bytes,
            }
        } else {
            UnpackError::Tar(err)
        }
    }
}

struct Unpacker<'a> {
    root: &'a OwnedFd,
    limits: LayerLimits,
    stats: &'a mut UnpackStats,
}

/// A cleaned entry path: its parent's components and its own name.
struct EntryPath {
    parents: Vec<Vec<u8>>,
    name: Vec<u8>,
    shown: String,
}

impl Unpacker<'_> {
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), UnpackError> {
        self.stats.entries += 1;
        if self.stats.entries > self.limits.entries {
            return Err(UnpackError::TooManyEntries {
                limit: self.limits.entries,
            });
        }
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader | tar::EntryType::GNULongName
        ) {
            return Ok(());
        }
        let raw = entry.path_bytes().into_owned();
        let Some(path) = self.clean(&raw)? else {
            return Ok(()); // the layer's root itself: its attributes are the lower layers'
        };
        if path.name == OPAQUE_MARKER {
            let dir = self.parent(&path, true)?;
            self.stats.whiteouts += 1;
            return set_opaque(&dir).map_err(io_err("mark opaque", &path.shown));
        }
        if let Some(hidden) = path.name.strip_prefix(WHITEOUT_PREFIX) {
            if hidden.starts_with(WHITEOUT_PREFIX) || hidden.is_empty() {
                return Ok(()); // aufs bookkeeping (.wh..wh.plnk and friends): nothing to place
            }
            let hidden = hidden.to_vec();
            check_name(&hidden, &path.shown)?;
            let dir = self.parent(&path, true)?;
            remove_leaf(&dir, &hidden, &path.shown)?;
            self.stats.whiteouts += 1;
            return mknodat(
                Some(dir.as_raw_fd()),
                OsStr::from_bytes(&hidden),
                SFlag::S_IFCHR,
                Mode::empty(),
                0,
            )
            .map_err(errno("whiteout", &path.shown));
        }
        let header = entry.header();
        let (uid, gid) = (self.id(header.uid()), self.id(header.gid()));
        let raw_mode = header.mode().map_err(UnpackError::Tar)?;
        let mode = raw_mode & 0o1777;
        if raw_mode & 0o6000 != 0 {
            self.stats.setid_cleared += 1;
        }
        let mtime = header.mtime().unwrap_or(0);
        let dir = self.parent(&path, true)?;
        let name = OsStr::from_bytes(&path.name);
        match kind {
            tar::EntryType::Directory => {
                match mkdirat(Some(dir.as_raw_fd()), name, Mode::from_bits_truncate(0o700)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(err) => return Err(errno("mkdir", &path.shown)(err)),
                }
                let made = open_dir(Some(&dir), name).map_err(open_err(&path.shown))?;
                own_and_mode(&made, uid, gid, mode).map_err(io_err("chown", &path.shown))?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                let declared = entry.size();
                self.reserve(declared)?;
                remove_leaf(&dir, &path.name, &path.shown)?;
                let fd = openat(
                    Some(dir.as_raw_fd()),
                    name,
                    OFlag::O_WRONLY
                        | OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )
                .map_err(errno("create", &path.shown))?;
                // SAFETY: openat returned a new fd that nothing else owns.
                let mut file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
                let room = self.limits.bytes - self.stats.bytes;
                let written = io::copy(&mut entry.take(room + 1), &mut file)
                    .map_err(io_err("write", &path.shown))?;
                // Sparse entries are longer than their header says: count what was written.
                self.stats.bytes += written;
                if self.stats.bytes > self.limits.bytes {
                    return Err(UnpackError::TooLarge {
                        limit: self.limits.bytes,
                    });
                }
                let fd = OwnedFd::from(file);
                own_and_mode(&fd, uid, gid, mode).map_err(io_err("chown", &path.shown))?;
                let when = TimeSpec::new(i64::try_from(mtime).unwrap_or(0), 0);
                nix::sys::stat::futimens(fd.as_raw_fd(), &when, &when)
                    .map_err(errno("set times of", &path.shown))?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                if target.is_empty() || target.len() > MAX_PATH || target.contains(&0) {
                    return Err(UnpackError::BadPath {
                        path: path.shown.clone(),
                    });
                }
                remove_leaf(&dir, &path.name, &path.shown)?;
                symlinkat(OsStr::from_bytes(&target), Some(dir.as_raw_fd()), name)
                    .map_err(errno("symlink", &path.shown))?;
                fchownat(
                    Some(dir.as_raw_fd()),
                    name,
                    Some(Uid::from_raw(uid)),
                    Some(Gid::from_raw(gid)),
                    nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
                )
                .map_err(errno("chown", &path.shown))?;
            }
            tar::EntryType::Link => {
                let target_raw = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                let bad = || UnpackError::BadHardlink {
                    path: path.shown.clone(),
                    target: String::from_utf8_lossy(&target_raw).into_owned(),
                };
                let target = match self.clean(&target_raw) {
                    Ok(Some(target)) => target,
                    _ => return Err(bad()),
                };
                let target_dir = self.parent(&target, false).map_err(|_| bad())?;
                let is_file = nix::sys::stat::fstatat(
                    Some(target_dir.as_raw_fd()),
                    OsStr::from_bytes(&target.name),
                    nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
                )
                .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFREG);
                if !is_file {
                    return Err(bad());
                }
                remove_leaf(&dir, &path.name, &path.shown)?;
                linkat(
                    Some(target_dir.as_raw_fd()),
                    OsStr::from_bytes(&target.name),
                    Some(dir.as_raw_fd()),
                    name,
                    nix::fcntl::AtFlags::empty(),
                )
                .map_err(errno("hardlink", &path.shown))?;
            }
            tar::EntryType::Fifo => {
                remove_leaf(&dir, &path.name, &path.shown)?;
                mknodat(
                    Some(dir.as_raw_fd()),
                    name,
                    SFlag::S_IFIFO,
                    Mode::from_bits_truncate(mode & 0o777),
                    0,
                )
                .map_err(errno("mkfifo", &path.shown))?;
            }
            tar::EntryType::Char | tar::EntryType::Block => self.stats.devices_dropped += 1,
            // Other kinds (old GNU volume labels and the like) carry nothing to place.
            _ => {}
        }
        Ok(())
    }

    fn id(&mut self, raw: io::Result<u64>) -> u32 {
        match raw.ok().and_then(|id| u32::try_from(id).ok()) {
            Some(id) if u64::from(id) < MAPPED_IDS => id,
            _ => {
                self.stats.ids_clamped += 1;
                NOBODY
            }
        }
    }

    fn reserve(&self, declared: u64) -> Result<(), UnpackError> {
        if self.stats.bytes.saturating_add(declared) > self.limits.bytes {
            return Err(UnpackError::TooLarge {
                limit: self.limits.bytes,
            });
        }
        Ok(())
    }

    /// Splits an entry path into components: `.` and empty ones dropped, a leading `/`
    /// neutralised, `..` refused. `None` for the root itself.
    fn clean(&mut self, raw: &[u8]) -> Result<Option<EntryPath>, UnpackError> {
        let shown = String::from_utf8_lossy(raw).into_owned();
        if raw.len() > MAX_PATH || raw.contains(&0) {
            return Err(UnpackError::BadPath { path: shown });
        }
        if raw.starts_with(b"/") {
            self.stats.absolute_paths += 1;
        }
        let mut parts = Vec::new();
        for part in raw.split(|b| *b == b'/') {
            match part {
                b"" | b"." => {}
                b".." => return Err(UnpackError::DotDot { path: shown }),
                name => parts.push(name.to_vec()),
            }
        }
        let Some(name) = parts.pop() else {
            return Ok(None);
        };
        Ok(Some(EntryPath {
            parents: parts,
            name,
            shown,
        }))
    }

    /// Opens the entry's parent directory, one component at a time without following
    /// symlinks; with `create`, missing directories are made (0755, root's).
    fn parent(&self, path: &EntryPath, create: bool) -> Result<OwnedFd, UnpackError> {
        let mut dir = dup(self.root).map_err(io_err("open", &path.shown))?;
        for part in &path.parents {
            let name = OsStr::from_bytes(part);
            let next = match open_dir(Some(&dir), name) {
                Err(err) if err.raw_os_error() == Some(libc::ENOENT) && create => {
                    match mkdirat(Some(dir.as_raw_fd()), name, Mode::from_bits_truncate(0o755)) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(err) => return Err(errno("mkdir", &path.shown)(err)),
                    }
                    open_dir(Some(&dir), name)
                }
                other => other,
            };
            dir = next.map_err(open_err(&path.shown))?;
        }
        Ok(dir)
    }
}

fn check_name(name: &[u8], shown: &str) -> Result<(), UnpackError> {
    if name == b"." || name == b".." || name.contains(&b'/') {
        return Err(UnpackError::DotDot {
            path: shown.to_owned(),
        });
    }
    Ok(())
}

/// Removes what an earlier entry of this layer put at `name` (a later entry wins), refusing to
/// replace a directory.
fn remove_leaf(dir: &OwnedFd, name: &[u8], shown: &str) -> Result<(), UnpackError> {
    match unlinkat(
        Some(dir.as_raw_fd()),
        OsStr::from_bytes(name),
        UnlinkatFlags::NoRemoveDir,
    ) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(Errno::EISDIR) => Err(UnpackError::ReplacesDir {
            path: shown.to_owned(),
        }),
        Err(err) => Err(errno("replace", shown)(err)),
    }
}

/// Opens one directory component relative to `dir` (or a whole path when `dir` is `None`),
/// never through a symlink.
fn open_dir(dir: Option<&OwnedFd>, name: &OsStr) -> io::Result<OwnedFd> {
    let fd = openat(
        dir.map(AsRawFd::as_raw_fd),
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(io::Error::from)?;
    // SAFETY: openat returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn dup(fd: &OwnedFd) -> io::Result<OwnedFd> {
    fd.try_clone()
}

fn own_and_mode(fd: &OwnedFd, uid: u32, gid: u32, mode: u32) -> io::Result<()> {
    nix::unistd::fchown(
        fd.as_raw_fd(),
        Some(Uid::from_raw(uid)),
        Some(Gid::from_raw(gid)),
    )?;
    // After the chown, which clears set-id bits anyway; ours never have them.
    fchmod(fd.as_raw_fd(), Mode::from_bits_truncate(mode))?;
    Ok(())
}

fn set_opaque(dir: &OwnedFd) -> io::Result<()> {
    let name = CString::new(OPAQUE_XATTR).unwrap_or_default();
    // SAFETY: `dir` is open, `name` NUL-terminated, and the value a live 1-byte buffer whose
    // length is passed alongside.
    let rc = unsafe { libc::fsetxattr(dir.as_raw_fd(), name.as_ptr(), b"y".as_ptr().cast(), 1, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A directory that could not be opened: through a symlink or a file (`O_NOFOLLOW`,
/// `O_DIRECTORY`) is the layer's fault, anything else an I/O error.
fn open_err(path: &str) -> impl FnOnce(io::Error) -> UnpackError + '_ {
    move |err| {
        if matches!(err.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) {
            UnpackError::ThroughLink {
                path: path.to_owned(),
            }
        } else {
            UnpackError::Io {
                op: "open",
                path: path.to_owned(),
                source: err,
            }
        }
    }
}

fn io_err<'a>(op: &'static str, path: &'a str) -> impl FnOnce(io::Error) -> UnpackError + 'a {
    move |source| UnpackError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

fn errno<'a>(op: &'static str, path: &'a str) -> impl FnOnce(Errno) -> UnpackError + 'a {
    move |err| UnpackError::Io {
        op,
        path: path.to_owned(),
        source: err.into(),
    }
}

/// Whether the file at `fd`/`name` is an overlay whiteout (a 0:0 character device).
pub fn is_whiteout(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    meta.file_type().is_char_device() && meta.rdev() == 0
}

/// Whether `dir` carries overlayfs's opaque mark.
pub fn is_opaque(dir: &Path) -> bool {
    let (Ok(path), Ok(name)) = (
        CString::new(dir.as_os_str().as_bytes()),
        CString::new(OPAQUE_XATTR),
    ) else {
        return false;
    };
    let mut value = [0u8; 1];
    // SAFETY: both strings are NUL-terminated and `value` a live buffer of the passed length.
    let n = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_mut_ptr().cast(),
            value.len(),
        )
    };
    n == 1 && value[0] == b'y'
}
