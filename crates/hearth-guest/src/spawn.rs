//! Turning an [`ExecRequest`] into a `std::process::Command`, with errors a client can act on.
//!
//! The program is resolved here rather than by `execvp`, so a missing binary or a bad working
//! directory becomes a precise 4xx answer before anything is forked. The child's environment is
//! exactly the request's `env` (plus a default `PATH`), never the daemon's own.

use std::ffi::OsStr;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use hearth_proto::{ErrorKind, ExecRequest};

use crate::confine::Confinement;
use crate::http::ApiError;
use crate::seccomp::{GuestFilters, ListenerHandoff};

/// `PATH` given to children whose request sets none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Why a request cannot be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("argv is empty")]
    EmptyArgv,
    #[error("{0} contains a NUL byte")]
    NulByte(&'static str),
    #[error("environment variable name {0:?} is empty or contains '=' or NUL")]
    BadEnvName(String),
    #[error("cwd {0:?} is not an absolute path")]
    RelativeCwd(String),
    #[error("cwd {path}: {source}")]
    Cwd { path: PathBuf, source: io::Error },
    #[error("cwd {0} is not a directory")]
    CwdNotDir(PathBuf),
    #[error("command not found: {0:?} (not in the request's PATH)")]
    NotInPath(String),
    #[error("{path}: {source}")]
    Program { path: PathBuf, source: io::Error },
    #[error("{0} is not an executable file")]
    NotExecutable(PathBuf),
    #[error("start {path}: {source}")]
    Spawn { path: PathBuf, source: io::Error },
    #[error("create the seccomp listener socketpair: {0}")]
    Handoff(io::Error),
}

impl From<SpawnError> for ApiError {
    fn from(err: SpawnError) -> Self {
        let message = err.to_string();
        match err {
            SpawnError::NotInPath(_) => ApiError::new(ErrorKind::NotFound, message),
            SpawnError::NotExecutable(_) => ApiError::new(ErrorKind::PermissionDenied, message),
            SpawnError::CwdNotDir(_) => ApiError::new(ErrorKind::NotADirectory, message),
            SpawnError::Cwd { source, .. }
            | SpawnError::Program { source, .. }
            | SpawnError::Spawn { source, .. }
            | SpawnError::Handoff(source) => ApiError::from_io(&source, message),
            _ => ApiError::new(ErrorKind::BadRequest, message),
        }
    }
}

/// A command for `program` that will lead its own process group, so a timeout or a shutdown can
/// kill everything it started with one `killpg`.
///
/// `process_group(0)` rather than a `setsid()` hook: without a `pre_exec` hook std can use
/// `posix_spawn` (vfork-style, no page-table copy), which halves exec latency. The daemon has no
/// controlling terminal, so a new session would add nothing.
pub fn group_leader_command(program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(program);
    cmd.process_group(0);
    cmd
}

/// A command ready to spawn, with the socketpair its child hands a seccomp listener back on
/// when the filters audit calls (take it with [`ListenerHandoff::receive`] after the spawn).
#[derive(Debug)]
pub struct Prepared {
    pub cmd: Command,
    pub handoff: Option<ListenerHandoff>,
}

/// Validates `req` and builds its command; stdin is piped only when the request carries some
/// or asks to keep it open.
/// With `confinement`, the child first puts itself there (before it runs a single instruction
/// of the workload, so nothing it forks can escape it); with `seccomp`, it then installs those
/// filters right before exec.
pub fn build(
    req: &ExecRequest,
    seccomp: Option<&Arc<GuestFilters>>,
    confinement: Option<&Arc<Confinement>>,
) -> Result<Prepared, SpawnError> {
    let argv0 = req.argv.first().ok_or(SpawnError::EmptyArgv)?;
    if req.argv.iter().any(|a| a.contains('\0')) {
        return Err(SpawnError::NulByte("argv"));
    }
    for (name, value) in &req.env {
        if name.is_empty() || name.contains(['=', '\0']) {
            return Err(SpawnError::BadEnvName(name.clone()));
        }
        if value.contains('\0') {
            return Err(SpawnError::NulByte("an environment value"));
        }
    }
    let cwd = check_cwd(req.cwd.as_deref().unwrap_or("/"))?;
    let path_var = req.env.get("PATH").map_or(DEFAULT_PATH, String::as_str);
    let program = resolve(argv0, &cwd, path_var)?;

    let mut cmd = group_leader_command(&program);
    cmd.arg0(argv0)
        .args(&req.argv[1..])
        .env_clear()
        .envs(&req.env)
        .current_dir(&cwd)
        .stdin(if req.stdin.is_some() || req.stdin_open {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if !req.env.contains_key("PATH") {
        cmd.env("PATH", DEFAULT_PATH);
    }
    if let Some(confinement) = confinement {
        let confinement = Arc::clone(confinement);
        // Built before the fork: the child may not allocate.
        let cwd_c = std::ffi::CString::new(cwd.as_os_str().as_encoded_bytes())
            .map_err(|_| SpawnError::NulByte("cwd"))?;
        // SAFETY: the hook runs between fork and exec and makes only the system calls of
        // `Confinement::in_child` (write, setns, chdir, prctl, capset) on fds and a C string
        // that stay alive across the spawn; it allocates nothing and takes no locks.
        unsafe {
            cmd.pre_exec(move || confinement.in_child(&cwd_c));
        }
    }
    let mut handoff = None;
    if let Some(filters) = seccomp {
        let filters = Arc::clone(filters);
        if filters.has_listener() {
            handoff = Some(ListenerHandoff::new().map_err(SpawnError::Handoff)?);
        }
        // The child's end stays open in the parent until `Prepared` is dropped, after the spawn.
        let child_end = handoff.as_ref().map(ListenerHandoff::child_fd);
        // SAFETY: the hook runs between fork and exec and only makes the prctl, seccomp and
        // sendmsg calls of `GuestFilters::apply`, which allocates nothing and takes no locks.
        unsafe {
            cmd.pre_exec(move || filters.apply(child_end));
        }
    }
    Ok(Prepared { cmd, handoff })
}

fn check_cwd(cwd: &str) -> Result<PathBuf, SpawnError> {
    if cwd.contains('\0') {
        return Err(SpawnError::NulByte("cwd"));
    }
    let path = PathBuf::from(cwd);
    if !path.is_absolute() {
        return Err(SpawnError::RelativeCwd(cwd.to_string()));
    }
    let meta = std::fs::metadata(&path).map_err(|source| SpawnError::Cwd {
        path: path.clone(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(SpawnError::CwdNotDir(path));
    }
    Ok(path)
}

/// Finds the file `argv0` names: relative to `cwd` if it contains a `/`, else in `path_var`.
fn resolve(argv0: &str, cwd: &Path, path_var: &str) -> Result<PathBuf, SpawnError> {
    if argv0.contains('/') {
        let path = cwd.join(argv0);
        let meta = std::fs::metadata(&path).map_err(|source| SpawnError::Program {
            path: path.clone(),
            source,
        })?;
        return if is_executable(&meta) {
            Ok(path)
        } else {
            Err(SpawnError::NotExecutable(path))
        };
    }
    if argv0.is_empty() {
        return Err(SpawnError::NotInPath(String::new()));
    }
    path_var
        .split(':')
        .filter(|dir| dir.starts_with('/'))
        .map(|dir| Path::new(dir).join(argv0))
        .find(|candidate| std::fs::metadata(candidate).is_ok_and(|m| is_executable(&m)))
        .ok_or_else(|| SpawnError::NotInPath(argv0.to_string()))
}

fn is_executable(meta: &std::fs::Metadata) -> bool {
    meta.is_file() && meta.permissions().mode() & 0o111 != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_through_the_requests_path_only() {
        let sh = resolve("sh", Path::new("/"), DEFAULT_PATH).unwrap();
        assert!(sh.ends_with("sh") && sh.is_absolute());
        assert!(matches!(
            resolve("sh", Path::new("/"), "/nonexistent:relative/dir"),
            Err(SpawnError::NotInPath(_))
        ));
        assert!(matches!(
            resolve("./nope", Path::new("/"), DEFAULT_PATH),
            Err(SpawnError::Program { .. })
        ));
        assert!(matches!(
            resolve("/etc/passwd", Path::new("/"), DEFAULT_PATH),
            Err(SpawnError::NotExecutable(_))
        ));
    }

    #[test]
    fn rejects_bad_requests_before_forking() {
        let req = |argv: &[&str], cwd: Option<&str>| ExecRequest {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            cwd: cwd.map(str::to_string),
            ..ExecRequest::default()
        };
        assert!(matches!(
            build(&req(&[], None), None, None),
            Err(SpawnError::EmptyArgv)
        ));
        assert!(matches!(
            build(&req(&["true"], Some("tmp")), None, None),
            Err(SpawnError::RelativeCwd(_))
        ));
        assert!(matches!(
            build(&req(&["true"], Some("/etc/passwd")), None, None),
            Err(SpawnError::CwdNotDir(_))
        ));
        let mut bad_env = req(&["true"], None);
        bad_env.env.insert("A=B".into(), "x".into());
        assert!(matches!(
            build(&bad_env, None, None),
            Err(SpawnError::BadEnvName(_))
        ));
    }
}
