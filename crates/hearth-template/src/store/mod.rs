//! The template store under the state dir:
//!
//! ```text
//! templates/            0700
//!   lock                flock: builds and removals exclusive, sandbox mounts shared
//!   records/NAME.json   one template (replaced atomically by rename)
//!   layers/<diff_id>/   one unpacked layer, shared by every template that has it; complete
//!                       once renamed into place, never modified after
//!   vm/<key>.ext4       a template's merged root filesystem for microVMs, made on first use
//!   tmp/                downloads and layers in progress; emptied by the next build
//! ```
//!
//! Builds from images are in [`import`], a Hearthfile's step helpers in [`steps`].

mod import;
mod steps;

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::source::SourceError;
use crate::unpack::{UnpackError, UnpackStats};
use crate::user::UserError;

/// Names E2B and hearth already give a meaning (backends, the default view).
const RESERVED_NAMES: &[&str] = &["base", "oci", "qemu", "firecracker", "default", "host"];

/// How large a template may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TemplateLimits {
    /// Bytes of one layer's files (also the largest compressed blob accepted).
    pub layer_bytes: u64,
    /// Bytes of all the template's layers' files together.
    pub template_bytes: u64,
    /// Entries in one layer.
    pub layer_entries: u64,
}

impl Default for TemplateLimits {
    fn default() -> Self {
        Self {
            layer_bytes: 8 << 30,
            template_bytes: 16 << 30,
            layer_entries: 1_000_000,
        }
    }
}

/// One layer of a template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateLayer {
    pub diff_id: Digest,
    /// Bytes of its files.
    pub bytes: u64,
}

/// A template: an image's layers in the store and how to run it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Template {
    pub name: String,
    /// Where it came from, as given to `--from`.
    pub source: String,
    pub manifest_digest: Digest,
    pub config_digest: Digest,
    /// Bottom first.
    pub layers: Vec<TemplateLayer>,
    /// `KEY=VALUE`, the image's `Env`.
    pub env: Vec<String>,
    /// The image's `WorkingDir`; commands start there unless they name another.
    pub working_dir: Option<String>,
    /// The image's `User` as written, and the ids it resolved to (0:0 when it names none).
    pub user: Option<String>,
    pub uid: u32,
    pub gid: u32,
    pub labels: BTreeMap<String, String>,
    /// Recorded, not run: a sandbox's PID 1 is always hearth-guest.
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub size_bytes: u64,
    /// Unix seconds.
    pub created_at: u64,
}

impl Template {
    pub fn diff_ids(&self) -> impl Iterator<Item = &Digest> {
        self.layers.iter().map(|l| &l.diff_id)
    }
}

/// A step of a build, for progress output.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Progress {
    Resolved {
        manifest: Digest,
        layers: usize,
        cached: usize,
    },
    Layer {
        index: usize,
        total: usize,
        diff_id: Digest,
        /// Compressed size, when the source says.
        size: Option<u64>,
    },
    Downloaded {
        index: usize,
        bytes: u64,
    },
    Unpacked {
        index: usize,
        bytes: u64,
    },
    LayerDone {
        index: usize,
        cached: bool,
        stats: Option<UnpackStats>,
    },
}

/// What a build did.
#[derive(Debug, Clone, Serialize)]
pub struct BuildReport {
    pub template: Template,
    pub layers_cached: usize,
    pub layers_unpacked: usize,
    /// Bytes of layer files written by this build.
    pub bytes_unpacked: u64,
    /// What the unpacker neutralised, summed over the new layers.
    pub neutralised: UnpackStats,
}

/// Errors of the template store.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("{0:?} is not a template name: use 1-63 of a-z, 0-9, '.', '_', '-', starting with a letter or digit")]
    BadName(String),
    #[error("{0:?} is reserved (a backend or the default view); pick another template name")]
    ReservedName(String),
    #[error("no template named {0} (see hearth template ls)")]
    NotFound(String),
    #[error("template {name} is in use by {sandboxes}; remove those sandboxes first")]
    InUse { name: String, sandboxes: String },
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("layer {index} ({diff_id}): {source}")]
    Layer {
        index: usize,
        diff_id: Digest,
        source: UnpackError,
    },
    #[error("the template's layers hold more than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("layer {0} of the template is missing from the store; rebuild the template")]
    LayerMissing(Digest),
    #[error(transparent)]
    User(#[from] UserError),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("record {path}: {source}")]
    Record {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("a blocking task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

impl TemplateError {
    /// Whether the error is the requester's to fix (bad input or refused content).
    pub fn is_bad_input(&self) -> bool {
        match self {
            Self::BadName(_)
            | Self::ReservedName(_)
            | Self::TooLarge { .. }
            | Self::Layer { .. } => true,
            Self::User(_) => true,
            Self::Source(err) => {
                err.is_refused_content()
                    || matches!(
                        err,
                        SourceError::BadReference(..) | SourceError::PlainHttpNotLoopback(_)
                    )
            }
            _ => false,
        }
    }
}

pub(super) fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> TemplateError {
    let path = path.to_owned();
    move |source| TemplateError::Io { op, path, source }
}

/// Checks a template name: it becomes a file name and appears in sandbox specs.
pub fn check_name(name: &str) -> Result<(), TemplateError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if !ok {
        return Err(TemplateError::BadName(name.to_owned()));
    }
    if RESERVED_NAMES.contains(&name) {
        return Err(TemplateError::ReservedName(name.to_owned()));
    }
    Ok(())
}

/// The store under `<state dir>/templates`.
#[derive(Debug, Clone)]
pub struct TemplateStore {
    dir: PathBuf,
}

/// A held lock on the store (released on drop).
#[derive(Debug)]
pub struct StoreLock(#[allow(dead_code)] nix::fcntl::Flock<fs::File>);

impl TemplateStore {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            dir: state_dir.join("templates"),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub(super) fn records(&self) -> PathBuf {
        self.dir.join("records")
    }

    pub(super) fn layers(&self) -> PathBuf {
        self.dir.join("layers")
    }

    pub(crate) fn tmp(&self) -> PathBuf {
        self.dir.join("tmp")
    }

    pub(crate) fn vm_dir(&self) -> PathBuf {
        self.dir.join("vm")
    }

    /// The directory of an unpacked layer (whether or not it exists).
    pub fn layer_dir(&self, diff_id: &Digest) -> PathBuf {
        self.layers().join(diff_id.hex())
    }

    pub(super) fn ensure_dirs(&self) -> Result<(), TemplateError> {
        for dir in [
            self.dir.clone(),
            self.records(),
            self.layers(),
            self.tmp(),
            self.vm_dir(),
        ] {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(io_err("create", &dir))?;
        }
        Ok(())
    }

    /// Takes the store's lock: `exclusive` for builds and removals, shared while a sandbox
    /// mounts layers (so none is removed under it). Blocks until it is free.
    pub fn lock(&self, exclusive: bool) -> Result<StoreLock, TemplateError> {
        self.ensure_dirs()?;
        let path = self.dir.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(io_err("open", &path))?;
        let arg = if exclusive {
            nix::fcntl::FlockArg::LockExclusive
        } else {
            nix::fcntl::FlockArg::LockShared
        };
        nix::fcntl::Flock::lock(file, arg)
            .map(StoreLock)
            .map_err(|(_, errno)| TemplateError::Io {
                op: "lock",
                path,
                source: errno.into(),
            })
    }

    /// Every template, by name.
    pub fn list(&self) -> Result<Vec<Template>, TemplateError> {
        let dir = self.records();
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => return Err(io_err("read", &dir)(err)),
        };
        let mut templates = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err("read", &dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            if check_name(name).is_ok() {
                templates.push(self.get(name)?);
            }
        }
        templates.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(templates)
    }

    pub fn get(&self, name: &str) -> Result<Template, TemplateError> {
        check_name(name).map_err(|_| TemplateError::NotFound(name.to_owned()))?;
        let path = self.records().join(format!("{name}.json"));
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                return Err(TemplateError::NotFound(name.to_owned()))
            }
            Err(err) => return Err(io_err("read", &path)(err)),
        };
        serde_json::from_slice(&bytes).map_err(|source| TemplateError::Record { path, source })
    }

    /// The template's layer directories, bottom first, each checked present.
    pub fn layer_dirs(&self, template: &Template) -> Result<Vec<PathBuf>, TemplateError> {
        template
            .diff_ids()
            .map(|d| {
                let dir = self.layer_dir(d);
                if dir.is_dir() {
                    Ok(dir)
                } else {
                    Err(TemplateError::LayerMissing(d.clone()))
                }
            })
            .collect()
    }

    /// Records `template` (replacing one of its name).
    pub fn write_record(&self, template: &Template) -> Result<(), TemplateError> {
        let dir = self.records();
        let mut file = tempfile::Builder::new()
            .prefix(".record-")
            .tempfile_in(&dir)
            .map_err(io_err("create in", &dir))?;
        let bytes = serde_json::to_vec_pretty(template).unwrap_or_default();
        file.write_all(&bytes).map_err(io_err("write", &dir))?;
        let path = dir.join(format!("{}.json", template.name));
        file.persist(&path)
            .map_err(|err| io_err("write", &path)(err.error))?;
        Ok(())
    }

    /// Removes template `name` and every layer no other template and nothing in `in_use`
    /// (the layers of live sandboxes) needs. Returns the bytes freed.
    pub fn remove(&self, name: &str, in_use: &HashSet<Digest>) -> Result<u64, TemplateError> {
        let _lock = self.lock(true)?;
        self.get(name)?;
        let path = self.records().join(format!("{name}.json"));
        fs::remove_file(&path).map_err(io_err("remove", &path))?;
        self.collect_garbage(in_use)
    }

    /// Removes layers and VM root filesystems that no template and nothing in `in_use` needs.
    /// Call with the store's lock held.
    fn collect_garbage(&self, in_use: &HashSet<Digest>) -> Result<u64, TemplateError> {
        let templates = self.list()?;
        let mut keep: HashSet<String> = in_use.iter().map(|d| d.hex().to_owned()).collect();
        keep.extend(
            templates
                .iter()
                .flat_map(|t| t.diff_ids().map(|d| d.hex().to_owned())),
        );
        let mut freed = 0;
        let layers = self.layers();
        for entry in fs::read_dir(&layers).map_err(io_err("read", &layers))? {
            let entry = entry.map_err(io_err("read", &layers))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if Digest::from_hex(&name).is_ok() && !keep.contains(&name) {
                freed += dir_bytes(&entry.path());
                fs::remove_dir_all(entry.path()).map_err(io_err("remove", &entry.path()))?;
            }
        }
        let vm_keep: HashSet<String> = templates.iter().map(crate::vm::rootfs_key).collect();
        let vm = self.vm_dir();
        if let Ok(entries) = fs::read_dir(&vm) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let key = name.split('-').next().unwrap_or_default();
                if !vm_keep.contains(key) && entry.path().is_file() {
                    freed += entry.metadata().map(|m| m.len()).unwrap_or(0);
                    fs::remove_file(entry.path()).map_err(io_err("remove", &entry.path()))?;
                }
            }
        }
        Ok(freed)
    }
}

/// Unix seconds now.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(super) fn not_found_ok(err: io::Error) -> io::Result<()> {
    if err.kind() == io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(err)
    }
}

/// Bytes of the regular files under `dir` (not following symlinks).
pub(super) fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            match entry.metadata() {
                Ok(meta) if meta.is_dir() => stack.push(entry.path()),
                Ok(meta) if meta.is_file() => total += meta.len(),
                _ => {}
            }
        }
    }
    total
}
