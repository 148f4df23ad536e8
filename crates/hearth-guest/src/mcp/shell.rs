//! The `shell` tool: `/bin/sh -c COMMAND` in the workspace, with a timeout and capped output.
//!
//! Each command leads its own process group, so a timeout or a cancel kills everything it started
//! with one `killpg`. Groups still alive when the server exits (background jobs) are killed then,
//! so closing the agent's MCP session leaves nothing behind.

use std::collections::HashSet;
use std::future::Future;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::task::JoinHandle;

use super::output::{split_budget, HeadTail};

/// How long output may keep arriving after the shell exits: a background job that inherited the
/// pipes would otherwise hold the call open until it ends.
const DRAIN_GRACE: Duration = Duration::from_millis(250);
const READ_CHUNK: usize = 64 * 1024;

/// Why a command produced no ordinary result.
#[derive(Debug, thiserror::Error)]
pub enum ShellError {
    #[error("timeout_s must be a positive number of seconds, got {0}")]
    BadTimeout(f64),
    #[error("cannot start /bin/sh in {cwd}: {source}")]
    Spawn { cwd: PathBuf, source: io::Error },
    #[error("waiting for the command: {0}")]
    Wait(io::Error),
    #[error("command timed out after {}s; its process group was killed\n{output}", .after.as_secs_f64())]
    TimedOut { after: Duration, output: String },
    #[error("command cancelled by the client; its process group was killed\n{output}")]
    Cancelled { output: String },
}

/// What every command runs with.
#[derive(Debug, Clone)]
pub struct Shell {
    pub cwd: PathBuf,
    pub env: Vec<(String, String)>,
    pub max_output: usize,
    pub default_timeout: Duration,
    pub groups: Groups,
}

/// Process groups started and not yet known to be empty.
#[derive(Debug, Clone, Default)]
pub struct Groups(Arc<Mutex<HashSet<i32>>>);

impl Groups {
    fn insert(&self, pgid: i32) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(pgid);
    }

    /// Forgets `pgid` once no process is left in it, so `kill_all` never signals a group id
    /// that was since reused.
    fn forget_if_empty(&self, pgid: i32) {
        if killpg(Pid::from_raw(pgid), None) == Err(nix::errno::Errno::ESRCH) {
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&pgid);
        }
    }

    /// SIGKILLs every group still registered; called once, when the server stops.
    pub fn kill_all(&self) {
        let groups = std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner));
        for pgid in groups {
            // ESRCH (the group is already gone) is the common, harmless answer.
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
    }
}

enum Ending {
    Exited(ExitStatus),
    TimedOut(Duration),
    Cancelled,
}

type Captured = Arc<Mutex<HeadTail>>;

impl Shell {
    /// The timeout a call asked for, or the default; NaN, zero, negative and absurd are refused.
    pub fn timeout(&self, requested: Option<f64>) -> Result<Duration, ShellError> {
        match requested {
            None => Ok(self.default_timeout),
            Some(secs) if secs > 0.0 => {
                Duration::try_from_secs_f64(secs).map_err(|_| ShellError::BadTimeout(secs))
            }
            Some(secs) => Err(ShellError::BadTimeout(secs)),
        }
    }

    /// Runs `command` until it exits, `timeout` passes or `cancelled` resolves.
    ///
    /// A non-zero exit is an ordinary result (the text says so); a timeout or cancel is an error
    /// that still carries the output captured so far.
    pub async fn run(
        &self,
        command: &str,
        timeout: Duration,
        cancelled: impl Future<Output = ()>,
    ) -> Result<String, ShellError> {
        let mut child = tokio::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(command)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.cwd)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| ShellError::Spawn {
                cwd: self.cwd.clone(),
                source,
            })?;
        let pgid = child.id().and_then(|id| i32::try_from(id).ok());
        if let Some(pgid) = pgid {
            self.groups.insert(pgid);
        }
        let (stdout, stdout_task) = self.capture(child.stdout.take());
        let (stderr, stderr_task) = self.capture(child.stderr.take());

        let ending = tokio::select! {
            status = child.wait() => Ending::Exited(status.map_err(ShellError::Wait)?),
            () = tokio::time::sleep(timeout) => Ending::TimedOut(timeout),
            () = cancelled => Ending::Cancelled,
        };
        if !matches!(ending, Ending::Exited(_)) {
            if let Some(pgid) = pgid {
                let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
            }
            child.wait().await.map_err(ShellError::Wait)?;
        }
        let abandoned = !drain(stdout_task, stderr_task).await;
        if let Some(pgid) = pgid {
            self.groups.forget_if_empty(pgid);
        }
        let output = render(&stdout, &stderr, self.max_output, abandoned);
        match ending {
            Ending::Exited(status) => Ok(format!("exit code: {}\n{output}", describe(status))),
            Ending::TimedOut(after) => Err(ShellError::TimedOut { after, output }),
            Ending::Cancelled => Err(ShellError::Cancelled { output }),
        }
    }

    /// Reads `pipe` into a bounded buffer on its own task, so the child never blocks on a full
    /// pipe whatever we are waiting for.
    fn capture<R>(&self, pipe: Option<R>) -> (Captured, Option<JoinHandle<()>>)
    where
        R: AsyncRead + Unpin + Send + 'static,
    {
        let buffer = Arc::new(Mutex::new(HeadTail::new(self.max_output)));
        let task = pipe.map(|mut pipe| {
            let buffer = Arc::clone(&buffer);
            tokio::spawn(async move {
                let mut chunk = vec![0; READ_CHUNK];
                while let Ok(n @ 1..) = pipe.read(&mut chunk).await {
                    let mut buffer = buffer.lock().unwrap_or_else(PoisonError::into_inner);
                    buffer.push(&chunk[..n]);
                }
            })
        });
        (buffer, task)
    }
}

/// Waits up to [`DRAIN_GRACE`] for both readers to see EOF; false if they had to be abandoned.
async fn drain(stdout: Option<JoinHandle<()>>, stderr: Option<JoinHandle<()>>) -> bool {
    let tasks: Vec<_> = stdout.into_iter().chain(stderr).collect();
    let aborts: Vec<_> = tasks.iter().map(JoinHandle::abort_handle).collect();
    let all = async {
        for task in tasks {
            let _ = task.await;
        }
    };
    let finished = tokio::time::timeout(DRAIN_GRACE, all).await.is_ok();
    for abort in aborts {
        abort.abort();
    }
    finished
}

fn render(stdout: &Captured, stderr: &Captured, budget: usize, abandoned: bool) -> String {
    let stdout = stdout.lock().unwrap_or_else(PoisonError::into_inner);
    let stderr = stderr.lock().unwrap_or_else(PoisonError::into_inner);
    let (out_budget, err_budget) = split_budget(budget, stdout.len(), stderr.len());
    let mut text = format!(
        "stdout:\n{}\nstderr:\n{}",
        stdout.render(out_budget),
        stderr.render(err_budget)
    );
    if abandoned {
        text.push_str(
            "\n[background processes still hold the output open; their further output is \
             discarded. Redirect it to a file: `cmd > log 2>&1 &`]",
        );
    }
    text
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => code.to_string(),
        (None, Some(signal)) => format!("{} (killed by signal {signal})", 128 + signal),
        (None, None) => "unknown".to_string(),
    }
}

/// The environment of every command: a short allowlist from the server's own environment (never
/// all of it), with defaults, plus `HEARTH_WORKSPACE`.
pub fn allowlisted_env(
    workspace: &std::path::Path,
    lookup: impl Fn(&str) -> Option<String>,
) -> Vec<(String, String)> {
    const DEFAULTS: &[(&str, Option<&str>)] = &[
        ("PATH", Some(crate::spawn::DEFAULT_PATH)),
        ("HOME", None), // the workspace, below
        ("LANG", Some("C.UTF-8")),
        ("LC_ALL", None),
        ("LC_CTYPE", None),
        ("TERM", Some("dumb")),
        ("TZ", None),
        ("TMPDIR", None),
        ("USER", None),
        ("LOGNAME", None),
    ];
    let workspace = workspace.to_string_lossy().into_owned();
    let mut env: Vec<(String, String)> = DEFAULTS
        .iter()
        .filter_map(|&(name, default)| {
            let value = lookup(name).filter(|v| !v.is_empty());
            let value = match name {
                "HOME" => value.or_else(|| Some(workspace.clone())),
                _ => value.or_else(|| default.map(str::to_string)),
            };
            value.map(|v| (name.to_string(), v))
        })
        .collect();
    env.push(("HEARTH_WORKSPACE".to_string(), workspace));
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_is_an_allowlist_with_defaults() {
        let lookup = |name: &str| match name {
            "PATH" => Some("/opt/bin:/usr/bin".to_string()),
            "LANG" => Some(String::new()), // empty counts as unset
            "AWS_SECRET_ACCESS_KEY" | "OPENAI_API_KEY" => Some("secret".to_string()),
            _ => None,
        };
        let env = allowlisted_env(std::path::Path::new("/ws"), lookup);
        let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            pairs,
            [
                ("PATH", "/opt/bin:/usr/bin"),
                ("HOME", "/ws"),
                ("LANG", "C.UTF-8"),
                ("TERM", "dumb"),
                ("HEARTH_WORKSPACE", "/ws"),
            ]
        );
    }

    #[test]
    fn timeouts_must_be_positive_and_finite() {
        let shell = Shell {
            cwd: PathBuf::from("/"),
            env: Vec::new(),
            max_output: 100,
            default_timeout: Duration::from_secs(60),
            groups: Groups::default(),
        };
        assert_eq!(shell.timeout(None).unwrap(), Duration::from_secs(60));
        assert_eq!(
            shell.timeout(Some(0.5)).unwrap(),
            Duration::from_millis(500)
        );
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(
                matches!(shell.timeout(Some(bad)), Err(ShellError::BadTimeout(_))),
                "{bad}"
            );
        }
    }
}
