//! `hearth sandbox create|exec|cp|ls|rm|...`; snapshots in [`super::snapshot`].

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read, Write};

use super::escape::field;
use super::output::{self, errln, outln, CommandOutput};
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use hearth_proto::ExecRequest;
use hearth_sandbox::backend::BackendKind;
use hearth_sandbox::spec::{Cpus, MemoryBytes};
use hearth_sandbox::SandboxId;

use crate::config::Settings;
use crate::exit::{CliError, ErrorKind, COMMAND_NOT_FOUND, TIMED_OUT};
use crate::request::{NetRequest, RequestError, SandboxRequest, SeccompRequest};
use crate::sandboxes::SandboxManager;

/// Largest file `cp` moves in one go (the guest enforces its own cap too).
const MAX_COPY_BYTES: u64 = 64 * 1024 * 1024;
/// Largest stdin `exec --stdin` forwards.
const MAX_STDIN_BYTES: u64 = 16 * 1024 * 1024;

#[derive(Debug, Subcommand)]
pub enum SandboxCommand {
    /// Create a sandbox and print its id.
    Create(Box<CreateArgs>),
    /// Run a command in a sandbox; exits with the command's exit code.
    Exec(ExecArgs),
    /// Copy a file into or out of a sandbox: `cp ./local ID:/path` or `cp ID:/path ./local`.
    Cp {
        /// Source: a host path or ID:/absolute/path.
        src: String,
        /// Destination: a host path or ID:/absolute/path (a directory keeps the file's name).
        dst: String,
    },
    /// Show a sandbox's network policy, addresses and firewall rule counters.
    Net {
        /// Sandbox id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List sandboxes.
    Ls {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove sandboxes: stop every process and delete everything they owned.
    Rm {
        /// Sandbox ids.
        #[arg(required = true)]
        ids: Vec<String>,
        /// Also remove a sandbox stuck in `creating`, and succeed for ids with no record,
        /// removing any leftovers named after them.
        #[arg(long, short)]
        force: bool,
    },
    /// Show the system calls a sandbox's seccomp policy refused: exact counts per syscall, then
    /// the recent entries.
    Audit(super::audit::AuditArgs),
    /// Pause every vCPU of a microVM sandbox (its processes stop; memory stays).
    Pause {
        /// Sandbox id.
        id: String,
    },
    /// Resume a paused microVM sandbox.
    Resume {
        /// Sandbox id.
        id: String,
    },
    /// Save a running or paused microVM sandbox (QEMU or Firecracker: memory and device state)
    /// as a snapshot under the state dir; the sandbox goes on as it was. `create
    /// --from-snapshot NAME` resumes it as a new sandbox on this host. A QEMU sandbox's shared
    /// workspace is not part of it: processes must not be using /workspace while it is taken.
    Snapshot(super::snapshot::SnapshotArgs),
    /// List snapshots.
    Snapshots {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete snapshots (their memory images and records).
    SnapshotRm {
        /// Snapshot names.
        #[arg(required = true)]
        names: Vec<String>,
    },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Sandbox id ([a-z0-9-], 1-64 chars, not starting with '-'); random when absent.
    #[arg(long)]
    pub(super) id: Option<String>,
    /// Memory limit, e.g. 512M or 2G [default: 512M; with --from-snapshot, the snapshot's].
    #[arg(long)]
    pub(super) memory: Option<MemoryBytes>,
    /// CPU allowance in CPUs, e.g. 1 or 0.5 [default: 1; with --from-snapshot, the snapshot's].
    #[arg(long)]
    pub(super) cpus: Option<Cpus>,
    /// Maximum number of processes and threads [default: 256; with --from-snapshot, the
    /// snapshot's].
    #[arg(long)]
    pub(super) pids: Option<u32>,
    /// Size of the private workspace, e.g. 2G [default: 4G]: /workspace is a filesystem of
    /// its own, so a workload can fill it and nothing more of the host's disk. (A --workspace
    /// DIR is the host's own directory, limited only by its filesystem.)
    #[arg(long, value_name = "SIZE")]
    pub(super) disk: Option<MemoryBytes>,
    /// Host directory mounted read-write at /workspace (default: an empty private one). Not
    /// with Firecracker, which shares no host directory.
    #[arg(long, value_name = "DIR")]
    pub(super) workspace: Option<PathBuf>,
    /// Network: none (loopback only), gateway (only hearth's gateway and resolver; the
    /// default) or allowlist (also the --allow destinations).
    #[arg(long, value_name = "MODE")]
    net: Option<String>,
    /// A destination to allow: CIDR[:port] or domain[:port] (repeatable; implies
    /// --net allowlist). Link-local, loopback and other sandboxes stay denied regardless.
    #[arg(long = "allow", value_name = "DEST")]
    allow: Vec<String>,
    /// Let allowlisted private destinations through (RFC 1918, CGNAT, ULA, the host's own
    /// addresses).
    #[arg(long)]
    allow_private: bool,
    /// A TCP port of the sandbox that may accept connections from outside (repeatable).
    #[arg(long = "publish", value_name = "PORT")]
    publish: Vec<u16>,
    /// Bandwidth limit in each direction, e.g. 10mbit.
    #[arg(long, value_name = "RATE")]
    net_rate: Option<String>,
    /// Seccomp policy: a built-in profile (default, strict, audit) or a .toml/.json policy file
    /// [default: default].
    #[arg(long, value_name = "PROFILE|FILE")]
    pub(super) seccomp: Option<String>,
    /// Also have hearth-guest install this policy as raw BPF in every process it starts (what
    /// microVM guests do). Off by default: the runtime already filters, and the guest's EPERM
    /// would answer audited calls before they reach the audit.
    #[arg(long, value_name = "PROFILE|FILE")]
    pub(super) guest_seccomp: Option<String>,
    /// Isolation: oci (a container), qemu (a microVM with its own kernel; needs `hearth image
    /// build`) or firecracker. `hearth doctor` shows what this host can run [default: oci; with
    /// --from-snapshot, the snapshot's].
    #[arg(long, value_name = "BACKEND", value_parser = parse_backend)]
    pub(super) backend: Option<BackendKind>,
    /// Resume snapshot NAME (see `hearth sandbox snapshot`) instead of booting: a new sandbox
    /// with its own id, network and workspace, running the saved VM's processes and memory.
    /// Memory, CPUs and the seccomp policy are the snapshot's (flags that differ are refused);
    /// the guest takes the new sandbox's address and hostname, and mounts its workspace.
    #[arg(long, value_name = "NAME")]
    pub(super) from_snapshot: Option<String>,
    /// Make the sandbox's root from this template (`hearth template build`, `ls`): the image's
    /// files, env, working dir and user. Default: the host's /usr (OCI) or hearth's guest image.
    #[arg(long, value_name = "NAME")]
    pub(super) template: Option<String>,
    /// Print the new sandbox as JSON instead of just its id.
    #[arg(long)]
    pub(super) json: bool,
}

fn parse_backend(text: &str) -> Result<BackendKind, String> {
    text.parse()
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Sandbox id.
    id: String,
    /// Kill the command (and everything it started) after this many seconds.
    #[arg(long, value_name = "SECONDS")]
    timeout: Option<f64>,
    /// Environment variable for the command (repeatable). Nothing else is passed through.
    #[arg(long = "env", short = 'e', value_name = "K=V")]
    env: Vec<String>,
    /// Working directory inside the sandbox (default: /workspace, or the template's working
    /// dir when it names one).
    #[arg(long, value_name = "DIR")]
    cwd: Option<String>,
    /// Forward this command's stdin to the command (read to the end first; 16 MiB at most).
    #[arg(long, short = 'i')]
    stdin: bool,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

pub async fn run(command: SandboxCommand, settings: &Settings) -> anyhow::Result<u8> {
    let manager = settings.manager().await?;
    match command {
        SandboxCommand::Create(args) => create(&manager, *args).await,
        SandboxCommand::Exec(args) => exec(&manager, args).await,
        SandboxCommand::Cp { src, dst } => copy(&manager, &src, &dst).await,
        SandboxCommand::Net { id, json } => super::net::show(&manager, &id, json).await,
        SandboxCommand::Ls { json } => list(&manager, json).await,
        SandboxCommand::Rm { ids, force } => remove(&manager, &ids, force).await,
        SandboxCommand::Audit(args) => super::audit::audit(&manager, args).await,
        SandboxCommand::Pause { id } => pause_or_resume(&manager, &id, true).await,
        SandboxCommand::Resume { id } => pause_or_resume(&manager, &id, false).await,
        SandboxCommand::Snapshot(args) => super::snapshot::snapshot(&manager, args).await,
        SandboxCommand::Snapshots { json } => super::snapshot::list(&manager, json).await,
        SandboxCommand::SnapshotRm { names } => super::snapshot::remove(&manager, &names).await,
    }
}

async fn pause_or_resume(manager: &SandboxManager, raw: &str, pause: bool) -> anyhow::Result<u8> {
    let id = SandboxId::parse(raw)?;
    let status = manager.set_paused(&id, pause).await?;
    outln!("{id} {status}")?;
    Ok(0)
}

async fn create(manager: &SandboxManager, args: CreateArgs) -> anyhow::Result<u8> {
    if args.from_snapshot.is_some() {
        return super::snapshot::create_from(manager, args).await;
    }
    let spec = request(&args)?.validate().map_err(bad_request)?;
    manager.reconcile().await?;
    let record = manager.create(&spec).await?;
    print_created(&record, args.json)
}

/// The flags as a [`SandboxRequest`]; a relative `--workspace` is taken from the current
/// directory.
pub(super) fn request(args: &CreateArgs) -> Result<SandboxRequest, CliError> {
    Ok(SandboxRequest {
        id: args.id.clone(),
        backend: args.backend.unwrap_or_default(),
        memory: args.memory,
        cpus: args.cpus,
        pids: args.pids,
        disk: args.disk,
        workspace: args.workspace.as_deref().map(absolute).transpose()?,
        seccomp: SeccompRequest::Profile(
            args.seccomp
                .clone()
                .unwrap_or_else(|| crate::request::DEFAULT_PROFILE.to_owned()),
        ),
        guest_seccomp: args.guest_seccomp.clone(),
        template: args.template.clone(),
        net: NetRequest {
            mode: args.net.clone(),
            allow: args.allow.clone(),
            allow_private: args.allow_private,
            publish: args.publish.clone(),
            rate: args.net_rate.clone(),
        },
    })
}

/// A refused request as the CLI reports it: bad input, in one line.
pub(super) fn bad_request(err: RequestError) -> CliError {
    CliError::new(ErrorKind::BadInput, err.to_string())
}

fn absolute(dir: &Path) -> Result<PathBuf, CliError> {
    std::path::absolute(dir).map_err(|err| {
        CliError::new(
            ErrorKind::BadInput,
            format!("workspace {}: {err}", dir.display()),
        )
    })
}

pub(super) fn print_created(
    record: &crate::store::SandboxRecord,
    json: bool,
) -> anyhow::Result<u8> {
    if json {
        output::print_json(record)?;
    } else {
        outln!("{}", record.id)?;
    }
    Ok(0)
}

async fn exec(manager: &SandboxManager, args: ExecArgs) -> anyhow::Result<u8> {
    let id = SandboxId::parse(&args.id)?;
    let env = parse_env(&args.env)?;
    let stdin = if args.stdin {
        Some(read_stdin()?)
    } else {
        None
    };
    let timeout_ms = match args.timeout {
        Some(secs) if secs > 0.0 && secs.is_finite() => Some(seconds_to_ms(secs)),
        Some(secs) => {
            return Err(CliError::new(
                ErrorKind::BadInput,
                format!("--timeout {secs} must be a positive number of seconds"),
            )
            .into())
        }
        None => None,
    };
    let (client, record) = manager.guest_and_record(&id).await?;
    // Left unset for a template with a working dir: the guest fills in the template's.
    let template_dir = record
        .spec
        .template
        .is_some_and(|t| t.exec_defaults.cwd.is_some());
    let cwd = args
        .cwd
        .or_else(|| (!template_dir).then(|| "/workspace".to_owned()));
    let request = ExecRequest {
        argv: args.command,
        env,
        cwd,
        stdin,
        timeout_ms,
        stdin_open: false,
    };
    // A write that fails (a closed pipe, a full disk) ends the exec: dropping the request
    // hangs up on the guest, which kills the command, as a closed pipe kills one run by `ssh`.
    let (failed_tx, failed_rx) = tokio::sync::oneshot::channel();
    let mut output = CommandOutput::new(failed_tx);
    let result = tokio::select! {
        result = client.exec(&request, |chunk| output.relay(chunk)) => result,
        Ok(err) = failed_rx => return Err(err.into()),
    };
    output.finish()?;
    // The notes below go to stderr right before the exit code that says the same: a failure
    // to write them changes nothing.
    let status = match result {
        Ok(status) => status,
        Err(err) if err.guest_kind() == Some(hearth_proto::ErrorKind::NotFound) => {
            let _ = errln!("hearth: {}", field(&err.to_string()));
            return Ok(COMMAND_NOT_FOUND);
        }
        Err(err) => return Err(err.into()),
    };
    manager.record_exit(&id, &request.argv[0], &status).await;
    if status.oom_killed {
        let _ = errln!(
            "hearth: command killed: out of memory (sandbox limit {})",
            manager.get(&id).await?.spec.limits.memory
        );
    } else if status.timed_out {
        let _ = errln!(
            "hearth: command killed: timeout of {}s reached",
            args.timeout.unwrap_or_default()
        );
        return Ok(TIMED_OUT);
    }
    Ok(u8::try_from(status.shell_code().clamp(0, 255)).unwrap_or(u8::MAX))
}

/// The network policy from `--net`, `--allow`, `--allow-private`, `--publish`, `--net-rate`.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // checked positive and finite; saturates
fn seconds_to_ms(secs: f64) -> u64 {
    (secs * 1000.0).ceil() as u64
}

fn parse_env(pairs: &[String]) -> Result<BTreeMap<String, String>, CliError> {
    let mut env = BTreeMap::new();
    for pair in pairs {
        match pair.split_once('=') {
            Some((key, value))
                if !key.is_empty() && !key.contains('\0') && !value.contains('\0') =>
            {
                env.insert(key.to_owned(), value.to_owned());
            }
            _ => {
                return Err(CliError::new(
                    ErrorKind::BadInput,
                    format!("--env {pair:?} is not KEY=VALUE"),
                ))
            }
        }
    }
    Ok(env)
}

fn read_stdin() -> anyhow::Result<Vec<u8>> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        return Err(CliError::new(
            ErrorKind::BadInput,
            "--stdin needs input piped in, not a terminal",
        )
        .into());
    }
    let mut data = Vec::new();
    stdin
        .lock()
        .take(MAX_STDIN_BYTES + 1)
        .read_to_end(&mut data)
        .context("cannot read stdin")?;
    if data.len() as u64 > MAX_STDIN_BYTES {
        return Err(CliError::new(
            ErrorKind::TooLarge,
            format!("stdin is over the {MAX_STDIN_BYTES}-byte limit"),
        )
        .into());
    }
    Ok(data)
}

/// One side of `cp`.
#[derive(Debug, PartialEq)]
enum Location {
    Host(PathBuf),
    Sandbox(SandboxId, String),
}

/// `ID:/path` is a sandbox path; anything with a `/` before the first `:` (or no `:`) is a
/// host path, so `./a:b` names a host file.
fn parse_location(raw: &str) -> anyhow::Result<Location> {
    match raw.split_once(':') {
        Some((prefix, path)) if !prefix.contains('/') => {
            let id =
                SandboxId::parse(prefix).with_context(|| format!("bad sandbox id in {raw:?}"))?;
            if !path.starts_with('/') {
                return Err(CliError::new(
                    ErrorKind::BadInput,
                    format!("{raw:?}: the path inside a sandbox must be absolute"),
                )
                .into());
            }
            Ok(Location::Sandbox(id, path.to_owned()))
        }
        _ => Ok(Location::Host(PathBuf::from(raw))),
    }
}

async fn copy(manager: &SandboxManager, src: &str, dst: &str) -> anyhow::Result<u8> {
    match (parse_location(src)?, parse_location(dst)?) {
        (Location::Host(local), Location::Sandbox(id, path)) => {
            copy_in(manager, &local, &id, &path).await
        }
        (Location::Sandbox(id, path), Location::Host(local)) => {
            copy_out(manager, &id, &path, &local).await
        }
        _ => Err(CliError::new(
            ErrorKind::BadInput,
            "exactly one of SRC and DST must be ID:/path",
        )
        .into()),
    }
}

async fn copy_in(
    manager: &SandboxManager,
    local: &Path,
    id: &SandboxId,
    path: &str,
) -> anyhow::Result<u8> {
    let meta = std::fs::metadata(local)
        .map_err(|err| CliError::new(ErrorKind::NotFound, format!("{}: {err}", local.display())))?;
    if !meta.is_file() {
        return Err(CliError::new(
            ErrorKind::BadInput,
            format!(
                "{} is not a regular file; cp copies single files",
                local.display()
            ),
        )
        .into());
    }
    if meta.len() > MAX_COPY_BYTES {
        return Err(CliError::new(
            ErrorKind::TooLarge,
            format!(
                "{} is {} bytes, over the {MAX_COPY_BYTES}-byte copy limit",
                local.display(),
                meta.len()
            ),
        )
        .into());
    }
    let data = std::fs::read(local).with_context(|| format!("cannot read {}", local.display()))?;
    let client = manager.guest(id).await?;
    let mut target = path.to_owned();
    let names_dir = target.ends_with('/')
        || matches!(client.stat(&target).await, Ok(stat) if stat.kind == hearth_proto::FileKind::Dir);
    if names_dir {
        let name = local
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        target = format!("{}/{name}", target.trim_end_matches('/'));
    }
    use std::os::unix::fs::PermissionsExt;
    client
        .write_file(&target, data, meta.permissions().mode() & 0o777)
        .await?;
    Ok(0)
}

async fn copy_out(
    manager: &SandboxManager,
    id: &SandboxId,
    path: &str,
    local: &Path,
) -> anyhow::Result<u8> {
    let client = manager.guest(id).await?;
    let data = client.read_file(path).await?;
    let target = if local.is_dir() {
        let name = Path::new(path).file_name().ok_or_else(|| {
            CliError::new(ErrorKind::BadInput, format!("{path} has no file name"))
        })?;
        local.join(name)
    } else {
        local.to_owned()
    };
    // Write beside the target and rename, so a failed copy never leaves a partial file.
    let dir = target
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    tmp.write_all(&data)
        .with_context(|| format!("cannot write {}", target.display()))?;
    tmp.persist(&target)
        .with_context(|| format!("cannot write {}", target.display()))?;
    Ok(0)
}

async fn list(manager: &SandboxManager, json: bool) -> anyhow::Result<u8> {
    manager.reconcile().await?;
    let records = manager.list().await?;
    if json {
        output::print_json(&records)?;
        return Ok(0);
    }
    outln!(
        "{:<24} {:<9} {:<8} {:<5} {:<5} WORKSPACE",
        "ID",
        "STATUS",
        "MEMORY",
        "CPUS",
        "PIDS"
    )?;
    for record in records {
        let limits = record.spec.limits;
        let workspace = record.spec.workspace.as_ref().map_or_else(
            || "(private)".to_owned(),
            |p| field(&p.display().to_string()).into_owned(),
        );
        outln!(
            "{:<24} {:<9} {:<8} {:<5} {:<5} {}",
            record.id.to_string(),
            record.status.to_string(),
            limits.memory.to_string(),
            limits.cpus.0,
            limits.pids,
            workspace
        )?;
    }
    Ok(0)
}

async fn remove(manager: &SandboxManager, raw_ids: &[String], force: bool) -> anyhow::Result<u8> {
    let ids = raw_ids
        .iter()
        .map(|raw| SandboxId::parse(raw))
        .collect::<Result<Vec<_>, _>>()?;
    for id in &ids {
        manager.remove(id, force).await?;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_copy_locations() {
        assert_eq!(
            parse_location("./a:b").unwrap(),
            Location::Host(PathBuf::from("./a:b"))
        );
        assert_eq!(
            parse_location("local.txt").unwrap(),
            Location::Host(PathBuf::from("local.txt"))
        );
        assert_eq!(
            parse_location("sb-1:/workspace/x").unwrap(),
            Location::Sandbox(SandboxId::parse("sb-1").unwrap(), "/workspace/x".to_owned())
        );
        assert!(parse_location("Bad:/x").is_err());
        assert!(parse_location("sb-1:relative").is_err());
    }

    #[test]
    fn parses_env_pairs() {
        let env = parse_env(&["A=1".to_owned(), "B=x=y".to_owned()]).unwrap();
        assert_eq!(env["B"], "x=y");
        assert!(parse_env(&["NOEQUALS".to_owned()]).is_err());
        assert!(parse_env(&["=v".to_owned()]).is_err());
    }
}
