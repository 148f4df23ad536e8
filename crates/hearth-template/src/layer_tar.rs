//! New layers of a Hearthfile build, written as OCI layer tars: a RUN step's overlay upper dir,
//! or a COPY step's files. The tar then goes through the same hardened unpacker as a pulled
//! layer (`TemplateStore::commit_tar`), so a build step's output meets every check an image's
//! does, and its digest is its `diff_id`.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use crate::unpack::{is_opaque, is_whiteout};

/// Top-level names of a sandbox's upper dir that are hearth's mount points (the runtime makes
/// them when the image lacks them), never the workload's writes.
const MOUNT_POINTS: &[&str] = &[".hearth", "workspace", "proc", "sys", "dev", "tmp", "run"];
/// Files hearth bind-mounts into a template sandbox's `/etc`.
const ETC_MOUNTS: &[&str] = &["etc/hostname", "etc/hosts", "etc/resolv.conf"];
const IDS: u32 = 65_536;

/// Attributes of a directory as the layers below show it: mode, uid, gid.
pub type DirAttrs = (u32, u32, u32);

/// Writes the upper dir of a RUN step's sandbox as a layer tar. Files carry their host owner
/// shifted back by `id_base` (the sandbox's host root); overlay whiteouts become `.wh.NAME`,
/// opaque directories get `.wh..wh..opq`.
pub fn upper_to_tar(upper: &Path, id_base: u32, out: impl Write) -> io::Result<()> {
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    let shift = |id: u32| {
        id.checked_sub(id_base)
            .filter(|inside| *inside < IDS)
            .unwrap_or(65_534)
    };
    walk(upper, Path::new(""), &mut |rel, meta, path| {
        let top = rel.components().next();
        if top.is_some_and(|c| MOUNT_POINTS.iter().any(|m| c.as_os_str() == *m)) {
            return Ok(false);
        }
        if ETC_MOUNTS.iter().any(|m| rel == Path::new(m)) && meta.len() == 0 {
            return Ok(false);
        }
        let (uid, gid) = (shift(meta.uid()), shift(meta.gid()));
        if is_whiteout(meta) {
            let name = format!(
                ".wh.{}",
                rel.file_name().unwrap_or_default().to_string_lossy()
            );
            let whiteout = rel.with_file_name(name);
            append_empty(&mut builder, &whiteout, 0o644, 0, 0)?;
            return Ok(false);
        }
        append_entry(&mut builder, rel, path, meta, uid, gid)?;
        if meta.is_dir() && is_opaque(path) {
            append_empty(&mut builder, &rel.join(".wh..wh..opq"), 0o644, 0, 0)?;
        }
        Ok(true)
    })?;
    builder.into_inner()?.flush()
}

/// Why a COPY cannot be done.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("COPY {0:?}: sources are paths inside the build context, without '..'")]
    Outside(String),
    #[error("COPY {src:?}: {source}")]
    Io { src: String, source: io::Error },
}

/// Writes a COPY step's layer tar: each of `sources` (relative to `context`, never leaving it,
/// symlinks copied as symlinks) placed at `dest` (relative ones join `workdir`): a directory's
/// contents into `dest`, a file as `dest`, or into it when `dest` ends with `/` or there are
/// several sources. Files are root's, with their own modes. `below` gives the attributes of a
/// directory the layers below already have, so `dest`'s parents keep them.
pub fn copy_to_tar(
    context: &Path,
    sources: &[String],
    dest: &str,
    workdir: &str,
    below: &dyn Fn(&Path) -> Option<DirAttrs>,
    out: impl Write,
) -> Result<(), CopyError> {
    let context = context.canonicalize().map_err(|source| CopyError::Io {
        src: context.display().to_string(),
        source,
    })?;
    let dest_path = Path::new(workdir).join(dest);
    let into_dir = dest.ends_with('/') || sources.len() > 1;
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    let io = |src: &str| {
        let src = src.to_owned();
        move |source| CopyError::Io { src, source }
    };
    // The destination's parents, as the layers below have them.
    let mut parent = PathBuf::new();
    for part in relative(&dest_path)
        .parent()
        .into_iter()
        .flat_map(Path::components)
    {
        parent.push(part);
        let (mode, uid, gid) = below(&parent).unwrap_or((0o755, 0, 0));
        append_dir(&mut builder, &parent, mode, uid, gid).map_err(io(dest))?;
    }
    for src in sources {
        let path = context.join(src);
        let real = path
            .canonicalize()
            .map_err(|_| CopyError::Outside(src.clone()))?;
        if Path::new(src).is_absolute()
            || Path::new(src)
                .components()
                .any(|c| c == Component::ParentDir)
            || !real.starts_with(&context)
        {
            return Err(CopyError::Outside(src.clone()));
        }
        let meta = fs::symlink_metadata(&path).map_err(io(src))?;
        let target = if meta.is_dir() || !into_dir {
            relative(&dest_path)
        } else {
            relative(&dest_path).join(path.file_name().unwrap_or_default())
        };
        if meta.is_dir() {
            // A directory the layers below have keeps its attributes (a COPY into /srv/ must
            // not hand the image user's /srv to root).
            let (mode, uid, gid) = below(&target).unwrap_or((meta.mode() & 0o777, 0, 0));
            append_dir(&mut builder, &target, mode, uid, gid).map_err(io(src))?;
            walk(&path, &target, &mut |rel, meta, file| {
                append_entry(&mut builder, rel, file, meta, 0, 0)?;
                Ok(true)
            })
            .map_err(io(src))?;
        } else {
            append_entry(&mut builder, &target, &path, &meta, 0, 0).map_err(io(src))?;
        }
    }
    builder
        .into_inner()
        .and_then(|mut out| out.flush())
        .map_err(io(dest))
}

/// `/a/b` as `a/b`.
fn relative(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect()
}

/// Visits everything under `dir` (sorted, parents first, not following symlinks) as
/// `(path under prefix, metadata, host path)`; `visit` returns whether to descend.
fn walk(
    dir: &Path,
    prefix: &Path,
    visit: &mut dyn FnMut(&Path, &fs::Metadata, &Path) -> io::Result<bool>,
) -> io::Result<()> {
    let mut entries: Vec<_> = fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(fs::DirEntry::file_name);
    for entry in entries {
        let path = entry.path();
        let meta = fs::symlink_metadata(&path)?;
        let rel = prefix.join(entry.file_name());
        if visit(&rel, &meta, &path)? && meta.is_dir() {
            walk(&path, &rel, visit)?;
        }
    }
    Ok(())
}

fn header(mode: u32, uid: u32, gid: u32, mtime: i64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_mode(mode);
    header.set_uid(u64::from(uid));
    header.set_gid(u64::from(gid));
    header.set_mtime(u64::try_from(mtime).unwrap_or(0));
    header
}

fn append_entry<W: Write>(
    builder: &mut tar::Builder<W>,
    rel: &Path,
    path: &Path,
    meta: &fs::Metadata,
    uid: u32,
    gid: u32,
) -> io::Result<()> {
    let mut h = header(meta.mode() & 0o7777, uid, gid, meta.mtime());
    let kind = meta.file_type();
    if kind.is_dir() {
        return append_dir(builder, rel, meta.mode() & 0o7777, uid, gid);
    }
    if kind.is_symlink() {
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        return builder.append_link(&mut h, rel, fs::read_link(path)?);
    }
    if kind.is_file() {
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(meta.len());
        return builder.append_data(&mut h, rel, fs::File::open(path)?);
    }
    // FIFOs, sockets and devices a step left behind are not part of a layer.
    Ok(())
}

fn append_dir<W: Write>(
    builder: &mut tar::Builder<W>,
    rel: &Path,
    mode: u32,
    uid: u32,
    gid: u32,
) -> io::Result<()> {
    let mut h = header(mode, uid, gid, 0);
    h.set_entry_type(tar::EntryType::Directory);
    h.set_size(0);
    builder.append_data(&mut h, rel, io::empty())
}

fn append_empty<W: Write>(
    builder: &mut tar::Builder<W>,
    rel: &Path,
    mode: u32,
    uid: u32,
    gid: u32,
) -> io::Result<()> {
    let mut h = header(mode, uid, gid, 0);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(0);
    builder.append_data(&mut h, rel, io::empty())
}
