//! `GET /v1/watch?path=/abs[&recursive=1]`: changes under a directory as an NDJSON stream of
//! `WatchEvent`s, from inotify. `started` comes once every watch is in place; the stream runs
//! until the client hangs up, the directory goes away, or the watch limit is reached.
//!
//! Recursive watching adds a watch for each subdirectory, also for ones created (or moved in)
//! while the stream runs. Events are folded as Go's fsnotify folds them, which is what E2B's
//! envd reports: a move out of a directory is `rename`, a move into it `create`.

use std::collections::HashMap;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use hearth_proto::{ErrorInfo, ErrorKind, WatchEvent, WatchOp, NDJSON};
use http::{header, HeaderValue, Response};
use http_body_util::BodyExt;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

use crate::http::{query_param, ApiError, ChannelBody, RespBody};

/// Watches one stream may hold (each costs kernel memory, charged to the sandbox's user).
const MAX_WATCHES: usize = 8192;

fn mask() -> AddWatchFlags {
    AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_MODIFY
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_ATTRIB
        | AddWatchFlags::IN_DELETE_SELF
        | AddWatchFlags::IN_ONLYDIR
        | AddWatchFlags::IN_DONT_FOLLOW
}

/// The watches of one stream: which directory (relative to the root) each descriptor is.
struct Watches {
    inotify: Inotify,
    root: PathBuf,
    dirs: HashMap<WatchDescriptor, PathBuf>,
    recursive: bool,
}

impl Watches {
    /// Watches `rel` (relative to the root) and, when recursive, every directory below it.
    fn add_tree(&mut self, rel: &Path) -> Result<(), String> {
        let mut pending = vec![rel.to_path_buf()];
        while let Some(rel) = pending.pop() {
            if self.dirs.len() >= MAX_WATCHES {
                return Err(format!(
                    "more than {MAX_WATCHES} directories under {}",
                    self.root.display()
                ));
            }
            let full = self.root.join(&rel);
            match self.inotify.add_watch(&full, mask()) {
                Ok(wd) => {
                    self.dirs.insert(wd, rel.clone());
                }
                // Gone or replaced by a file since it was seen: nothing to watch.
                Err(nix::errno::Errno::ENOENT | nix::errno::Errno::ENOTDIR) => continue,
                Err(err) => return Err(format!("watch {}: {err}", full.display())),
            }
            if !self.recursive {
                continue;
            }
            let Ok(entries) = std::fs::read_dir(&full) else {
                continue;
            };
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    pending.push(rel.join(entry.file_name()));
                }
            }
        }
        Ok(())
    }
}

/// Starts the watch; the response streams its events.
pub async fn handle(query: Option<&str>) -> Result<Response<RespBody>, ApiError> {
    let path = query_param(query, "path")?
        .ok_or_else(|| ApiError::new(ErrorKind::BadRequest, "missing query parameter `path`"))?;
    if !path.starts_with('/') || path.contains('\0') {
        return Err(ApiError::new(
            ErrorKind::BadRequest,
            format!("path {path:?} must be absolute"),
        ));
    }
    let recursive = matches!(
        query_param(query, "recursive")?.as_deref(),
        Some("1" | "true")
    );
    let root = PathBuf::from(&path);
    let meta = std::fs::metadata(&root)
        .map_err(|e| ApiError::from_io(&e, format!("watch {path}: {e}")))?;
    if !meta.is_dir() {
        return Err(ApiError::new(
            ErrorKind::NotADirectory,
            format!("{path} is not a directory"),
        ));
    }
    let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
        .map_err(|e| ApiError::new(ErrorKind::Io, format!("inotify: {e}")))?;
    let mut watches = Watches {
        inotify,
        root,
        dirs: HashMap::new(),
        recursive,
    };
    watches
        .add_tree(Path::new(""))
        .map_err(|message| ApiError::new(ErrorKind::TooLarge, message))?;
    let (tx, rx) = mpsc::channel(64);
    let _ = tx.try_send(Ok(line(&WatchEvent::Started)));
    tokio::spawn(pump(watches, tx));
    let mut resp = Response::new(ChannelBody::new(rx).boxed());
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(NDJSON));
    Ok(resp)
}

fn line(event: &WatchEvent) -> Bytes {
    let mut out = serde_json::to_vec(event).unwrap_or_default();
    out.push(b'\n');
    Bytes::from(out)
}

/// Reads inotify until the client goes away or the watch cannot go on.
async fn pump(mut watches: Watches, tx: mpsc::Sender<Result<Bytes, io::Error>>) {
    let fd = match watches.inotify.as_fd().try_clone_to_owned() {
        Ok(fd) => fd,
        Err(err) => {
            let _ = tx
                .send(Ok(error_line(ErrorKind::Io, err.to_string())))
                .await;
            return;
        }
    };
    // SAFETY: an OwnedFd is a valid open descriptor that it alone closes, on drop, and its
    // `as_raw_fd` always returns that same descriptor; the AsyncFd owns it from here on.
    let Ok(ready) = (unsafe { AsyncFd::register(fd) }) else {
        return;
    };
    loop {
        let mut guard = tokio::select! {
            guard = ready.readable() => match guard {
                Ok(guard) => guard,
                Err(_) => return,
            },
            () = tx.closed() => return,
        };
        let events = match watches.inotify.read_events() {
            Ok(events) => events,
            Err(nix::errno::Errno::EAGAIN) => {
                guard.clear_ready();
                continue;
            }
            Err(err) => {
                let _ = tx
                    .send(Ok(error_line(ErrorKind::Io, err.to_string())))
                    .await;
                return;
            }
        };
        for event in events {
            let Some(dir) = watches.dirs.get(&event.wd).cloned() else {
                continue;
            };
            if event.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                let _ = tx
                    .send(Ok(error_line(
                        ErrorKind::TooLarge,
                        "too many changes at once: events were lost".into(),
                    )))
                    .await;
                return;
            }
            if event.mask.contains(AddWatchFlags::IN_IGNORED) {
                watches.dirs.remove(&event.wd);
                if dir.as_os_str().is_empty() {
                    // The watched directory itself is gone: nothing more can happen in it.
                    return;
                }
                continue;
            }
            let Some(name) = event.name else { continue };
            let rel = dir.join(&name);
            let is_dir = event.mask.contains(AddWatchFlags::IN_ISDIR);
            if watches.recursive
                && is_dir
                && event
                    .mask
                    .intersects(AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO)
            {
                if let Err(message) = watches.add_tree(&rel) {
                    let _ = tx.send(Ok(error_line(ErrorKind::TooLarge, message))).await;
                    return;
                }
            }
            let op = if event
                .mask
                .intersects(AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO)
            {
                WatchOp::Create
            } else if event.mask.contains(AddWatchFlags::IN_MOVED_FROM) {
                WatchOp::Rename
            } else if event.mask.contains(AddWatchFlags::IN_DELETE) {
                WatchOp::Remove
            } else if event.mask.contains(AddWatchFlags::IN_MODIFY) {
                WatchOp::Write
            } else if event.mask.contains(AddWatchFlags::IN_ATTRIB) {
                WatchOp::Chmod
            } else {
                continue;
            };
            let event = WatchEvent::Event {
                op,
                name: rel.to_string_lossy().into_owned(),
            };
            if tx.send(Ok(line(&event))).await.is_err() {
                return;
            }
        }
    }
}

fn error_line(kind: ErrorKind, message: String) -> Bytes {
    line(&WatchEvent::Error(ErrorInfo { kind, message }))
}
