//! envd's `filesystem.Filesystem` service on hearth-guest's stat, list, mkdir, rename, remove
//! and watch. Paths resolve as envd resolves them (`~` and relative paths under `/workspace`).

use axum::extract::{Path, Request, State};
use axum::response::Response;
use hearth_proto::{DirEntry, FileKind, FileStat};
use hearth_sandbox::guest_client::GuestClient;

use super::connect::{self, Code, ConnectError, StreamItem};
use super::control::rfc3339;
use super::envd::{self, guest_error, resolve};
use super::messages::{
    Empty, EntryInfo, EntryResponse, ListDirRequest, ListDirResponse, MoveRequest, PathRequest,
    WatchRequest, WatcherRequest,
};
use super::{watchers, E2bState};

/// Most entries one `ListDir` answers (a listing is one JSON message).
const MAX_ENTRIES: usize = 100_000;

/// `POST /filesystem.Filesystem/{method}`.
pub async fn dispatch(
    State(state): State<E2bState>,
    Path(method): Path<String>,
    request: Request,
) -> Response {
    if method == "WatchDir" {
        return watch_dir(state, request).await;
    }
    let result = async {
        let target = envd::target(&state, request.headers())
            .await
            .map_err(|r| r.0)?;
        envd::rpc_user(request.headers())?;
        let guest = &target.guest;
        let answer = match method.as_str() {
            "Stat" => {
                let req: PathRequest = connect::unary_request(request).await?;
                serde_json::to_value(EntryResponse {
                    entry: stat(guest, &resolve(&req.path)?).await?,
                })
            }
            "MakeDir" => {
                let req: PathRequest = connect::unary_request(request).await?;
                let path = resolve(&req.path)?;
                let made = guest.mkdir(&path).await.map_err(|e| guest_error(&e))?;
                if !made.created {
                    return Err(ConnectError::new(
                        Code::AlreadyExists,
                        format!("directory {path} already exists"),
                    ));
                }
                serde_json::to_value(EntryResponse {
                    entry: stat(guest, &path).await?,
                })
            }
            "Move" => {
                let req: MoveRequest = connect::unary_request(request).await?;
                let (from, to) = (resolve(&req.source)?, resolve(&req.destination)?);
                let moved = guest
                    .rename(&from, &to)
                    .await
                    .map_err(|e| guest_error(&e))?;
                serde_json::to_value(EntryResponse {
                    entry: entry_of_stat(&moved),
                })
            }
            "ListDir" => {
                let req: ListDirRequest = connect::unary_request(request).await?;
                let path = resolve(&req.path)?;
                let mut entries = Vec::new();
                list(guest, &path, req.depth.max(1), &mut entries).await?;
                serde_json::to_value(ListDirResponse { entries })
            }
            "Remove" => {
                let req: PathRequest = connect::unary_request(request).await?;
                guest
                    .remove(&resolve(&req.path)?)
                    .await
                    .map_err(|e| guest_error(&e))?;
                serde_json::to_value(Empty {})
            }
            "CreateWatcher" => {
                let req: WatchRequest = connect::unary_request(request).await?;
                let path = watch_path(&req)?;
                let (task, updates) = watchers::start(guest.clone(), path, req.recursive).await?;
                let id = state.watchers.add(&target.row.id, task, updates)?;
                Ok(serde_json::json!({"watcherId": id}))
            }
            "GetWatcherEvents" => {
                let req: WatcherRequest = connect::unary_request(request).await?;
                let events = state.watchers.take(&target.row.id, &req.watcher_id)?;
                Ok(serde_json::json!({"events": events}))
            }
            "RemoveWatcher" => {
                let req: WatcherRequest = connect::unary_request(request).await?;
                state.watchers.remove(&target.row.id, &req.watcher_id)?;
                serde_json::to_value(Empty {})
            }
            other => {
                return Err(ConnectError::new(
                    Code::Unimplemented,
                    format!("filesystem.Filesystem/{other} is not a method hearth knows"),
                ))
            }
        };
        answer.map_err(|err| ConnectError::new(Code::Internal, err.to_string()))
    }
    .await;
    connect::unary_response(result)
}

/// The watched path, refusing what hearth cannot add to events.
fn watch_path(req: &WatchRequest) -> Result<String, ConnectError> {
    if req.include_entry {
        return Err(ConnectError::new(
            Code::Unimplemented,
            "watch events with entries (include_entry) are not supported by hearth",
        ));
    }
    if req.allow_network_mounts {
        return Err(ConnectError::new(
            Code::Unimplemented,
            "allow_network_mounts is not supported by hearth (a sandbox has no network mounts)",
        ));
    }
    resolve(&req.path)
}

/// `WatchDir`: `start` once the watch is in place, then `filesystem` events and keepalives
/// until the client hangs up (which ends the guest's watch) or the watch fails.
async fn watch_dir(state: E2bState, request: Request) -> Response {
    let headers = request.headers().clone();
    let started = async {
        let target = envd::target(&state, &headers).await.map_err(|r| r.0)?;
        envd::rpc_user(&headers)?;
        let req: WatchRequest = connect::stream_request(request).await?;
        let path = watch_path(&req)?;
        watchers::start(target.guest, path, req.recursive).await
    }
    .await;
    let (task, updates) = match started {
        Ok(started) => started,
        Err(err) => return connect::stream_error(err),
    };
    let map = |update: Option<watchers::Update>| {
        vec![match update {
            Some(watchers::Update::Event(event)) => {
                StreamItem::Message(serde_json::json!({"filesystem": event}))
            }
            Some(watchers::Update::Failed(err)) => StreamItem::End(Err(err)),
            None => StreamItem::End(Ok(())),
        }]
    };
    // Dropping the watch task's handle does not stop it; the guard does, however the stream
    // ends.
    connect::forward(
        &headers,
        serde_json::json!({"start": {}}),
        updates,
        map,
        serde_json::json!({"keepalive": {}}),
        ConnectError::new(Code::DeadlineExceeded, "the watch's timeout expired"),
        AbortOnDrop(task),
    )
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn stat(guest: &GuestClient, path: &str) -> Result<EntryInfo, ConnectError> {
    let stat = guest.stat(path).await.map_err(|e| guest_error(&e))?;
    Ok(entry_of_stat(&stat))
}

/// Lists `path` and, while `depth` allows, its subdirectories (symlinks are not followed).
async fn list(
    guest: &GuestClient,
    path: &str,
    depth: u32,
    out: &mut Vec<EntryInfo>,
) -> Result<(), ConnectError> {
    let listing = guest.list_dir(path).await.map_err(|e| guest_error(&e))?;
    for entry in listing.entries {
        if out.len() >= MAX_ENTRIES {
            return Err(ConnectError::new(
                Code::ResourceExhausted,
                format!("more than {MAX_ENTRIES} entries under {path}; list a smaller depth"),
            ));
        }
        let full = format!("{}/{}", path.trim_end_matches('/'), entry.name);
        let is_dir = entry.kind == FileKind::Dir;
        out.push(entry_of_dir(&full, &entry));
        if is_dir && depth > 1 {
            Box::pin(list(guest, &full, depth - 1, out)).await?;
        }
    }
    Ok(())
}

fn kind_name(kind: FileKind) -> &'static str {
    match kind {
        FileKind::File => "FILE_TYPE_FILE",
        FileKind::Dir => "FILE_TYPE_DIRECTORY",
        FileKind::Symlink => "FILE_TYPE_SYMLINK",
        FileKind::Other => "FILE_TYPE_UNSPECIFIED",
    }
}

/// `ls -l`'s mode string, as Go's `FileMode.String()` gives it to envd.
fn permissions(kind: FileKind, mode: u32) -> String {
    let mut out = String::with_capacity(10);
    out.push(match kind {
        FileKind::Dir => 'd',
        FileKind::Symlink => 'L',
        FileKind::File => '-',
        FileKind::Other => '?',
    });
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        out.push(if bits & 4 != 0 { 'r' } else { '-' });
        out.push(if bits & 2 != 0 { 'w' } else { '-' });
        out.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    out
}

/// A uid or gid by name where every sandbox has it; the number otherwise (a sandbox's
/// `/etc/passwd` is its own business).
fn owner_name(id: u32) -> String {
    if id == 0 {
        "root".to_owned()
    } else {
        id.to_string()
    }
}

#[allow(clippy::too_many_arguments)]
fn entry(
    path: &str,
    kind: FileKind,
    size: u64,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime_ms: i64,
    symlink_target: Option<String>,
) -> EntryInfo {
    EntryInfo {
        name: path.rsplit('/').next().unwrap_or("").to_owned(),
        kind: kind_name(kind),
        path: path.to_owned(),
        size: size.to_string(),
        mode,
        permissions: permissions(kind, mode),
        owner: owner_name(uid),
        group: owner_name(gid),
        modified_time: rfc3339(mtime_ms),
        is_symlink: kind == FileKind::Symlink,
        symlink_target,
    }
}

fn entry_of_stat(stat: &FileStat) -> EntryInfo {
    entry(
        &stat.path,
        stat.kind,
        stat.size,
        stat.mode,
        stat.uid,
        stat.gid,
        stat.mtime_ms,
        stat.symlink_target.clone(),
    )
}

fn entry_of_dir(path: &str, dir: &DirEntry) -> EntryInfo {
    entry(
        path,
        dir.kind,
        dir.size,
        dir.mode,
        dir.uid,
        dir.gid,
        dir.mtime_ms,
        dir.symlink_target.clone(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_look_like_envds() {
        let e = entry(
            "/workspace/a.txt",
            FileKind::File,
            5,
            0o644,
            0,
            1000,
            0,
            None,
        );
        assert_eq!(e.name, "a.txt");
        assert_eq!(e.permissions, "-rw-r--r--");
        assert_eq!((e.owner.as_str(), e.group.as_str()), ("root", "1000"));
        assert_eq!(e.size, "5");
        assert_eq!(e.modified_time, "1970-01-01T00:00:00.000Z");
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["type"], "FILE_TYPE_FILE");
        assert_eq!(json["modifiedTime"], "1970-01-01T00:00:00.000Z");
        assert_eq!(permissions(FileKind::Dir, 0o755), "drwxr-xr-x");
    }
}
