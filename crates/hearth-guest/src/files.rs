//! File endpoints: `GET`/`PUT`/`DELETE /v1/files`, `GET /v1/dirs`, `GET /v1/stat`,
//! `POST /v1/mkdir`, `POST /v1/rename`.
//!
//! Writes are atomic: the body goes to a fresh temporary file in the target's directory
//! (`O_EXCL`, mode 0600, so nobody sees or hijacks it half-written), which is synced, given its
//! final mode and renamed over the target. Sizes are checked against the cap while streaming, so
//! an oversized upload costs at most one cap's worth of disk and never that much memory.

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use hearth_proto::{DirEntry, DirListing, ErrorKind, FileKind, FileStat, MkdirResult, WriteResult};
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::http::{json, query_param, ApiError, ChannelBody, RespBody};
use crate::server::State;

/// A file-level failure, always naming the path it happened on.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{path} is {size} bytes; the limit is {limit}")]
    TooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    #[error("{0} is a directory")]
    IsDir(PathBuf),
    #[error("{0} is not a regular file")]
    NotRegular(PathBuf),
    #[error("upload to {path} exceeds the {limit}-byte limit")]
    BodyTooLarge { path: PathBuf, limit: u64 },
    #[error("reading the request body for {path}: {source}")]
    Body { path: PathBuf, source: hyper::Error },
}

impl From<FileError> for ApiError {
    fn from(err: FileError) -> Self {
        let message = err.to_string();
        match err {
            FileError::Io { source, .. } => ApiError::from_io(&source, message),
            FileError::TooLarge { .. } | FileError::BodyTooLarge { .. } => {
                ApiError::new(ErrorKind::TooLarge, message)
            }
            FileError::IsDir(_) => ApiError::new(ErrorKind::IsADirectory, message),
            FileError::NotRegular(_) => ApiError::new(ErrorKind::BadRequest, message),
            FileError::Body { .. } => ApiError::new(ErrorKind::BadRequest, message),
        }
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> FileError + 'a {
    move |source| FileError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// The `path` query parameter, which must be absolute.
fn path_param(query: Option<&str>) -> Result<PathBuf, ApiError> {
    absolute_param(query, "path")
}

/// The query parameter `name`, which must be an absolute path.
fn absolute_param(query: Option<&str>, name: &str) -> Result<PathBuf, ApiError> {
    let path = query_param(query, name)?.ok_or_else(|| {
        ApiError::new(
            ErrorKind::BadRequest,
            format!("missing query parameter `{name}`"),
        )
    })?;
    if !path.starts_with('/') || path.contains('\0') {
        return Err(ApiError::new(
            ErrorKind::BadRequest,
            format!("path {path:?} must be absolute and free of NUL bytes"),
        ));
    }
    Ok(PathBuf::from(path))
}

/// `GET /v1/files?path=`: the file's bytes, streamed.
pub async fn read(state: &State, query: Option<&str>) -> Result<Response<RespBody>, ApiError> {
    let path = path_param(query)?;
    let limit = state.config.max_file;
    // Checked before opening: opening a FIFO would block, and a device could stream forever.
    let meta = tokio::fs::metadata(&path)
        .await
        .map_err(io_err("stat", &path))?;
    if meta.is_dir() {
        return Err(FileError::IsDir(path).into());
    }
    if !meta.is_file() {
        return Err(FileError::NotRegular(path).into());
    }
    let mut file = tokio::fs::File::open(&path)
        .await
        .map_err(io_err("open", &path))?;
    if meta.len() > limit {
        return Err(FileError::TooLarge {
            path,
            size: meta.len(),
            limit,
        }
        .into());
    }
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        // Read one byte past the limit so files that grew (or lie about their size, like
        // /proc) are cut off with an error instead of being sent unbounded.
        let mut remaining = limit + 1;
        let mut buf = vec![0u8; 64 * 1024];
        while remaining > 0 {
            let want = usize::try_from(remaining)
                .unwrap_or(usize::MAX)
                .min(buf.len());
            match file.read(&mut buf[..want]).await {
                Ok(0) => return,
                Ok(n) => {
                    remaining -= n as u64;
                    if tx
                        .send(Ok(Bytes::copy_from_slice(&buf[..n])))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Err(err) => {
                    let _ = tx.send(Err(err)).await;
                    return;
                }
            }
        }
        let msg = format!(
            "{} grew past the {limit}-byte limit while being read",
            path.display()
        );
        let _ = tx
            .send(Err(io::Error::new(io::ErrorKind::FileTooLarge, msg)))
            .await;
    });
    let mut resp = Response::new(ChannelBody::new(rx).boxed());
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    Ok(resp)
}

/// `PUT /v1/files?path=&mode=0644`: atomically replace the file with the request body.
pub async fn write(state: &State, req: Request<Incoming>) -> Result<Response<RespBody>, ApiError> {
    let path = path_param(req.uri().query())?;
    let mode = match query_param(req.uri().query(), "mode")? {
        Some(text) => parse_mode(&text)?,
        None => 0o644,
    };
    let limit = state.config.max_file;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let expects_continue = req
        .headers()
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let mut body = req.into_body();
    if declared.is_some_and(|len| len > limit) {
        // A client waiting for `100 Continue` has sent nothing yet; anyone else is mid-send.
        if !expects_continue {
            drain(&mut body, limit).await;
        }
        return Err(FileError::BodyTooLarge { path, limit }.into());
    }
    let parent = path.parent().unwrap_or(Path::new("/")).to_path_buf();
    let mut temp = TempFile::create(&path).await?;
    let mut size = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|source| FileError::Body {
            path: path.clone(),
            source,
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        size += data.len() as u64;
        if size > limit {
            drop(temp);
            drain(&mut body, limit).await;
            return Err(FileError::BodyTooLarge { path, limit }.into());
        }
        temp.file
            .write_all(&data)
            .await
            .map_err(io_err("write", &temp.path))?;
    }
    temp.file
        .sync_all()
        .await
        .map_err(io_err("fsync", &temp.path))?;
    let perms = std::fs::Permissions::from_mode(mode);
    tokio::fs::set_permissions(&temp.path, perms)
        .await
        .map_err(io_err("chmod", &temp.path))?;
    tokio::fs::rename(&temp.path, &path)
        .await
        .map_err(io_err("rename into", &path))?;
    temp.disarm();
    // Make the rename itself durable; a directory we just wrote into can be opened.
    if let Ok(dir) = tokio::fs::File::open(&parent).await {
        let _ = dir.sync_all().await;
    }
    let result = WriteResult {
        path: path.to_string_lossy().into_owned(),
        size,
    };
    Ok(json(StatusCode::OK, &result))
}

/// Reads and discards the rest of a refused upload, up to `max(limit, 16 MiB)` more bytes.
///
/// Answering 413 while the client is still sending makes hyper close the connection, and the
/// client then sees a broken pipe instead of the answer. Draining a bounded amount lets ordinary
/// clients read the 413; a client sending far more gets the broken pipe.
async fn drain(body: &mut Incoming, limit: u64) {
    let budget = limit.max(16 << 20);
    let mut seen = 0u64;
    while let Some(Ok(frame)) = body.frame().await {
        seen += frame.data_ref().map_or(0, |d| d.len() as u64);
        if seen > budget {
            break;
        }
    }
}

fn parse_mode(text: &str) -> Result<u32, ApiError> {
    u32::from_str_radix(text, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| {
            ApiError::new(
                ErrorKind::BadRequest,
                format!("mode {text:?} is not an octal permission like 0644"),
            )
        })
}

/// The temporary file of an in-progress write; removed on drop unless renamed into place, so an
/// error or a dropped connection leaves nothing behind.
#[derive(Debug)]
struct TempFile {
    path: PathBuf,
    file: tokio::fs::File,
    armed: bool,
}

impl TempFile {
    async fn create(target: &Path) -> Result<Self, FileError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let dir = target.parent().unwrap_or(Path::new("/"));
        let name = target.file_name().map_or_else(
            || "file".into(),
            |n| n.to_string_lossy().chars().take(64).collect::<String>(),
        );
        loop {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = dir.join(format!(".{name}.hearth-{}-{n}.tmp", std::process::id()));
            let opened = tokio::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .await;
            match opened {
                Ok(file) => {
                    return Ok(TempFile {
                        path,
                        file,
                        armed: true,
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_err("create temporary file", &path)(e)),
            }
        }
    }

    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// `GET /v1/dirs?path=`: entries sorted by name, symlinks not followed.
pub async fn list(query: Option<&str>) -> Result<Response<RespBody>, ApiError> {
    let path = path_param(query)?;
    let listing = blocking(move || list_dir(&path)).await?;
    Ok(json(StatusCode::OK, &listing))
}

fn list_dir(path: &Path) -> Result<DirListing, FileError> {
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(path).map_err(io_err("list", path))? {
        let entry = entry.map_err(io_err("list", path))?;
        let meta = match entry.metadata() {
            Ok(meta) => meta,
            // Deleted between readdir and lstat: it is simply not there any more.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err("stat", &entry.path())(e)),
        };
        let symlink_target = if meta.file_type().is_symlink() {
            std::fs::read_link(entry.path())
                .ok()
                .map(|target| target.to_string_lossy().into_owned())
        } else {
            None
        };
        entries.push(DirEntry {
            name: entry.file_name().to_string_lossy().into_owned(),
            kind: kind_of(&meta),
            size: meta.len(),
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            mtime_ms: meta.mtime() * 1000 + meta.mtime_nsec() / 1_000_000,
            symlink_target,
        });
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(DirListing {
        path: path.to_string_lossy().into_owned(),
        entries,
    })
}

/// `GET /v1/stat?path=`: `lstat` of the path.
pub async fn stat(query: Option<&str>) -> Result<Response<RespBody>, ApiError> {
    let path = path_param(query)?;
    let stat = blocking(move || stat_path(&path)).await?;
    Ok(json(StatusCode::OK, &stat))
}

fn stat_path(path: &Path) -> Result<FileStat, FileError> {
    let meta = std::fs::symlink_metadata(path).map_err(io_err("stat", path))?;
    let symlink_target = if meta.file_type().is_symlink() {
        let target = std::fs::read_link(path).map_err(io_err("readlink", path))?;
        Some(target.to_string_lossy().into_owned())
    } else {
        None
    };
    Ok(FileStat {
        path: path.to_string_lossy().into_owned(),
        kind: kind_of(&meta),
        size: meta.len(),
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        mtime_ms: meta.mtime() * 1000 + meta.mtime_nsec() / 1_000_000,
        symlink_target,
    })
}

/// `POST /v1/mkdir?path=`: the directory and its missing parents (0755).
pub async fn mkdir(query: Option<&str>) -> Result<Response<RespBody>, ApiError> {
    let path = path_param(query)?;
    let result = blocking(move || {
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => {
                return Ok(MkdirResult {
                    path: path.to_string_lossy().into_owned(),
                    created: false,
                })
            }
            Ok(_) => {
                let exists = io::Error::from(nix::errno::Errno::EEXIST);
                return Err(io_err("mkdir", &path)(exists));
            }
            Err(_) => {}
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&path)
            .map_err(io_err("mkdir", &path))?;
        Ok(MkdirResult {
            path: path.to_string_lossy().into_owned(),
            created: true,
        })
    })
    .await?;
    Ok(json(StatusCode::OK, &result))
}

/// `POST /v1/rename?from=&to=`: `rename(2)`, replacing a file at `to` as it does.
pub async fn rename(query: Option<&str>) -> Result<Response<RespBody>, ApiError> {
    let from = absolute_param(query, "from")?;
    let to = absolute_param(query, "to")?;
    let stat = blocking(move || {
        std::fs::rename(&from, &to).map_err(io_err("rename", &from))?;
        stat_path(&to)
    })
    .await?;
    Ok(json(StatusCode::OK, &stat))
}

/// `DELETE /v1/files?path=`: a file, symlink or whole directory tree. `remove_dir_all` never
/// follows symlinks, also not ones swapped in while it runs.
pub async fn remove(query: Option<&str>) -> Result<Response<RespBody>, ApiError> {
    let path = path_param(query)?;
    // `/`, also spelled `/workspace/..` or through a symlink.
    if std::fs::canonicalize(&path).is_ok_and(|real| real == Path::new("/")) {
        return Err(ApiError::new(ErrorKind::BadRequest, "refusing to remove /"));
    }
    blocking(move || {
        let meta = std::fs::symlink_metadata(&path).map_err(io_err("remove", &path))?;
        if meta.is_dir() {
            std::fs::remove_dir_all(&path).map_err(io_err("remove", &path))
        } else {
            std::fs::remove_file(&path).map_err(io_err("remove", &path))
        }
    })
    .await?;
    Ok(json(StatusCode::OK, &serde_json::json!({})))
}

fn kind_of(meta: &std::fs::Metadata) -> FileKind {
    let ft = meta.file_type();
    if ft.is_symlink() {
        FileKind::Symlink
    } else if ft.is_dir() {
        FileKind::Dir
    } else if ft.is_file() {
        FileKind::File
    } else {
        FileKind::Other
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, FileError> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result.map_err(ApiError::from),
        Err(join) => Err(ApiError::new(ErrorKind::Internal, join.to_string())),
    }
}
