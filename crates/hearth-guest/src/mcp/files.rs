//! The file tools: `read_file`, `write_file`, `edit_file`, `list_dir`.
//!
//! Relative paths resolve against the workspace root; absolute paths are taken as they are. This
//! is not a confinement: the sandbox is the security boundary, and the shell tool can reach every
//! file anyway. Files are UTF-8 text, capped at `max_file` bytes both ways. Writes are atomic (a
//! temporary file in the same directory, renamed over the target), so a reader, or a crash, never
//! sees half a file; missing parent directories are created, as a model writing `src/new/mod.rs`
//! expects.

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A file tool's failure, always naming the path; the text goes back to the model.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("path is empty")]
    EmptyPath,
    #[error("path {0:?} contains a NUL byte")]
    NulByte(String),
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{0} is a directory (use list_dir)")]
    IsDir(PathBuf),
    #[error("{0} is not a regular file")]
    NotRegular(PathBuf),
    #[error("{path} is larger than the {limit}-byte limit of this tool; read parts of it with the shell tool (head, sed -n)")]
    TooLarge { path: PathBuf, limit: u64 },
    #[error("content for {path} is {size} bytes; the limit is {limit}")]
    ContentTooLarge {
        path: PathBuf,
        size: usize,
        limit: u64,
    },
    #[error("{0} is not UTF-8 text")]
    NotUtf8(PathBuf),
    #[error("`old` must not be empty")]
    EmptyOld,
    #[error("`old` must match exactly once in {path}, found {count}{hint}")]
    Matches {
        path: PathBuf,
        count: usize,
        hint: &'static str,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> FileError + 'a {
    move |source| FileError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// The workspace the file tools work in.
#[derive(Debug, Clone)]
pub struct Workspace {
    pub root: PathBuf,
    pub max_file: u64,
}

impl Workspace {
    fn resolve(&self, path: &str) -> Result<PathBuf, FileError> {
        if path.is_empty() {
            return Err(FileError::EmptyPath);
        }
        if path.contains('\0') {
            return Err(FileError::NulByte(path.to_string()));
        }
        Ok(self.root.join(path))
    }

    pub fn read(&self, path: &str) -> Result<String, FileError> {
        let path = self.resolve(path)?;
        let bytes = self.read_capped(&path)?;
        String::from_utf8(bytes).map_err(|_| FileError::NotUtf8(path))
    }

    pub fn write(&self, path: &str, content: &str) -> Result<String, FileError> {
        let path = self.resolve(path)?;
        self.check_size(&path, content.len())?;
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io_err("create directory", parent))?;
        }
        let existed = write_atomic(&path, content.as_bytes())?;
        let verb = if existed { "overwrote" } else { "created" };
        Ok(format!(
            "{verb} {} ({} bytes)",
            path.display(),
            content.len()
        ))
    }

    pub fn edit(&self, path: &str, old: &str, new: &str) -> Result<String, FileError> {
        if old.is_empty() {
            return Err(FileError::EmptyOld);
        }
        let path = self.resolve(path)?;
        let bytes = self.read_capped(&path)?;
        let text = String::from_utf8(bytes).map_err(|_| FileError::NotUtf8(path.clone()))?;
        let count = text.matches(old).count();
        if count != 1 {
            let hint = if count == 0 {
                " (the match is exact: whitespace and indentation count; read the file again)"
            } else {
                " (include more surrounding lines in `old` to make it unique)"
            };
            return Err(FileError::Matches { path, count, hint });
        }
        let edited = text.replacen(old, new, 1);
        self.check_size(&path, edited.len())?;
        write_atomic(&path, edited.as_bytes())?;
        let line = text[..text.find(old).unwrap_or(0)].matches('\n').count() + 1;
        Ok(format!("edited {} at line {line}", path.display()))
    }

    pub fn list(&self, path: &str) -> Result<String, FileError> {
        let path = self.resolve(path)?;
        let entries = fs::read_dir(&path).map_err(io_err("list", &path))?;
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err("list", &path))?;
            let mut name = entry.file_name().to_string_lossy().into_owned();
            // Follows symlinks, like `ls -F` on a link to a directory: the model can cd into it.
            if entry.path().is_dir() {
                name.push('/');
            }
            names.push(name);
        }
        names.sort();
        if names.is_empty() {
            return Ok(format!("{} is empty", path.display()));
        }
        Ok(names.join("\n"))
    }

    fn check_size(&self, path: &Path, size: usize) -> Result<(), FileError> {
        if size as u64 > self.max_file {
            return Err(FileError::ContentTooLarge {
                path: path.to_path_buf(),
                size,
                limit: self.max_file,
            });
        }
        Ok(())
    }

    /// Reads at most `max_file` bytes; the cap is checked while reading, not from metadata
    /// alone, since a file can grow between the two.
    fn read_capped(&self, path: &Path) -> Result<Vec<u8>, FileError> {
        let file = fs::File::open(path).map_err(io_err("read", path))?;
        let meta = file.metadata().map_err(io_err("read", path))?;
        if meta.is_dir() {
            return Err(FileError::IsDir(path.to_path_buf()));
        }
        if !meta.is_file() {
            return Err(FileError::NotRegular(path.to_path_buf()));
        }
        let mut bytes = Vec::new();
        file.take(self.max_file.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(io_err("read", path))?;
        if bytes.len() as u64 > self.max_file {
            return Err(FileError::TooLarge {
                path: path.to_path_buf(),
                limit: self.max_file,
            });
        }
        Ok(bytes)
    }
}

/// Writes `bytes` to a fresh temporary file beside `path` and renames it over `path`. An existing
/// target keeps its permission bits (an edited script stays executable), and a symlink is written
/// through, not replaced. Returns whether the target existed.
///
/// No fsync: the point is that readers never see a partial file, and a sandbox that crashes is
/// thrown away with its workspace copy anyway.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<bool, FileError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let (target, mode) = match fs::canonicalize(path) {
        Ok(real) => {
            let meta = fs::metadata(&real).map_err(io_err("write", &real))?;
            if meta.is_dir() {
                return Err(FileError::IsDir(path.to_path_buf()));
            }
            (real, Some(meta.permissions().mode()))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => (path.to_path_buf(), None),
        Err(e) => return Err(io_err("write", path)(e)),
    };
    let name = target.file_name().unwrap_or_default().to_string_lossy();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = target.with_file_name(format!(".{name}.hearth-{}-{n}.tmp", std::process::id()));
    let result = (|| {
        // A new file gets 0644 (less the umask), the usual mode of a source file.
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)
            .map_err(io_err("create", &tmp))?;
        file.write_all(bytes).map_err(io_err("write", &tmp))?;
        if let Some(mode) = mode {
            fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))
                .map_err(io_err("set the mode of", &tmp))?;
        }
        fs::rename(&tmp, &target).map_err(io_err("rename into place", &target))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map(|()| mode.is_some())
}
