//! Extracting an image archive (`docker save` or an OCI archive) into a private staging
//! directory: regular files and directories only, every path relative and free of `..`, a
//! size limit on the whole. Nothing in such an archive is ever linked or run; its blobs are
//! then read like a layout's, their digests checked.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Component, Path};

use crate::source::SourceError;

/// Extracts `file` into the empty directory `dest`.
pub fn extract(file: &Path, dest: &Path, limit: u64) -> Result<(), SourceError> {
    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| SourceError::Io { path, source }
    };
    let input = File::open(file).map_err(io_err(file))?;
    let mut archive = tar::Archive::new(io::BufReader::new(input));
    let mut total: u64 = 0;
    for entry in archive.entries().map_err(io_err(file))? {
        let mut entry = entry.map_err(io_err(file))?;
        let raw = entry.path().map_err(io_err(file))?.into_owned();
        let clean: std::path::PathBuf = raw
            .components()
            .filter(|c| !matches!(c, Component::CurDir))
            .collect();
        if clean.as_os_str().is_empty() {
            continue;
        }
        if clean
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
        {
            return Err(SourceError::Invalid(format!(
                "{}: member {} leaves the archive",
                file.display(),
                raw.display()
            )));
        }
        let path = dest.join(&clean);
        match entry.header().entry_type() {
            tar::EntryType::Directory => {
                DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&path)
                    .map_err(io_err(&path))?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                total = total.saturating_add(entry.size());
                if total > limit {
                    return Err(SourceError::TooLarge {
                        what: file.display().to_string(),
                        limit,
                    });
                }
                if let Some(parent) = path.parent() {
                    DirBuilder::new()
                        .recursive(true)
                        .mode(0o700)
                        .create(parent)
                        .map_err(io_err(parent))?;
                }
                let mut out = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&path)
                    .map_err(io_err(&path))?;
                let copied =
                    io::copy(&mut (&mut entry).take(limit), &mut out).map_err(io_err(&path))?;
                if copied != entry.size() {
                    return Err(SourceError::Invalid(format!(
                        "{}: member {} is truncated",
                        file.display(),
                        raw.display()
                    )));
                }
            }
            // Links and devices have no place in an image archive: an archive made by docker
            // or skopeo has none that a blob lookup needs.
            _ => {}
        }
    }
    Ok(())
}
