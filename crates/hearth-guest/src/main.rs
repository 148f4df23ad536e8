//! `hearth-guest`: the in-sandbox daemon, PID 1 of every hearth sandbox.
//!
//! It reaps zombies, forwards signals to the commands it runs, and serves exec, file and health
//! requests over HTTP/1.1 + JSON on a Unix socket (see `server` for the endpoints).

mod audit;
mod confine;
mod dirwatch;
mod exec;
mod files;
mod http;
mod mcp;
mod oom;
mod procs;
mod reaper;
mod seccomp;
mod server;
mod spawn;
mod transport;
mod vm;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "hearth-guest", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the guest protocol on a Unix socket until SIGTERM.
    Serve(ServeArgs),
    /// Serve the agent's tools (shell, files) as an MCP server on stdin/stdout until stdin closes.
    Mcp(mcp::McpArgs),
    /// PID 1 of a microVM: set the system up from the kernel command line (`hearth.*` keys),
    /// then serve on the transport it names. Also chosen when run as PID 1 under the name `/init`.
    Init,
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Unix socket to listen on (created with mode 0600; a stale socket is replaced).
    #[arg(
        long,
        default_value = "/.hearth/guest.sock",
        conflicts_with = "listen_fd"
    )]
    listen: PathBuf,
    /// Serve on this inherited, already listening Unix socket instead of binding one (how an
    /// OCI sandbox gets its channel: the socket file stays on the host, out of the sandbox's
    /// reach).
    #[arg(long, value_name = "FD")]
    listen_fd: Option<i32>,
    /// An inherited fd open for writing on the workload's own memory cgroup's `cgroup.procs`:
    /// every process the guest starts is moved there, so the workload's OOMs stay among its
    /// own processes and the guest keeps the memory the host reserved for it.
    #[arg(long, value_name = "FD")]
    workload_cgroup_fd: Option<i32>,
    /// Bytes of stdout and of stderr kept per exec; the rest is counted and dropped.
    /// Accepts K/M/G suffixes (binary).
    #[arg(long, default_value = "16M", value_parser = parse_size)]
    max_output: u64,
    /// Largest file that can be read or written.
    #[arg(long, default_value = "64M", value_parser = parse_size)]
    max_file: u64,
    /// Largest stdin accepted with one exec.
    #[arg(long, default_value = "16M", value_parser = parse_size)]
    max_stdin: u64,
    /// Milliseconds between SIGTERM and SIGKILL for running execs at shutdown.
    #[arg(long, default_value_t = 2000)]
    shutdown_grace_ms: u64,
    /// Mount point of the sandbox's cgroup, read for the OOM-kill counter.
    #[arg(long, default_value = "/sys/fs/cgroup")]
    cgroup_root: PathBuf,
    /// Seccomp filters (the `hearth_proto::bpf` file format) installed in every process the
    /// guest starts; the guest itself stays unfiltered. A bad file stops the guest.
    #[arg(long, value_name = "PATH")]
    seccomp_bpf: Option<PathBuf>,
    /// A template's environment and working directory (`hearth_proto::ExecDefaults` as JSON),
    /// filled into every exec request that leaves them unset. A bad file stops the guest.
    #[arg(long, value_name = "PATH")]
    exec_defaults: Option<PathBuf>,
}

fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, suffix) = text.split_at(split);
    let shift = match suffix.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        other => return Err(format!("unknown size suffix {other:?} (use K, M or G)")),
    };
    let n: u64 = digits.parse().map_err(|e| format!("{text:?}: {e}"))?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{text:?} is too large"))
}

fn init_logging() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HEARTH_GUEST_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
}

fn main() -> anyhow::Result<()> {
    // The kernel starts /init with no subcommand.
    let as_init = std::process::id() == 1
        && std::env::args_os()
            .next()
            .is_some_and(|arg0| arg0 == "/init");
    let command = if as_init {
        Command::Init
    } else {
        Cli::parse().command
    };
    let args = match command {
        Command::Serve(args) => args,
        Command::Mcp(args) => return mcp::run(args),
        Command::Init => vm_init(),
    };
    init_logging();
    protect_from_workload();
    let seccomp = match &args.seccomp_bpf {
        Some(path) => {
            let filters = seccomp::GuestFilters::load(path)?;
            tracing::info!(path = %path.display(), programs = filters.len(), "seccomp filters for every exec");
            Some(std::sync::Arc::new(filters))
        }
        None => None,
    };
    let confinement = args
        .workload_cgroup_fd
        .map(confine::Confinement::inherited_cgroup)
        .transpose()?
        .map(std::sync::Arc::new);
    let exec_defaults = match &args.exec_defaults {
        Some(path) => {
            let bytes = std::fs::read(path)
                .map_err(|err| anyhow::anyhow!("exec defaults {}: {err}", path.display()))?;
            serde_json::from_slice(&bytes)
                .map_err(|err| anyhow::anyhow!("exec defaults {}: {err}", path.display()))?
        }
        None => hearth_proto::ExecDefaults::default(),
    };
    let listen = match args.listen_fd {
        Some(fd) => transport::Listen::UnixFd(fd),
        None => transport::Listen::Unix(args.listen.clone()),
    };
    run_server(server::Config {
        confinement,
        exec_defaults,
        ..config(args, listen, seccomp)
    })
}

/// Boots the VM, serves until SIGTERM, powers off. Never returns.
fn vm_init() -> ! {
    init_logging();
    protect_from_workload();
    // PID 1 of a VM is real root: it can take itself out of the OOM killer's reach.
    oom::protect_self();
    let booted = match vm::boot() {
        Ok(Some(booted)) => booted,
        Ok(None) => {
            // Kernel messages are quiet; this line is what the boot benchmark waits for.
            eprintln!("hearth-guest: baseline ready");
            vm::power_off();
        }
        Err(err) => {
            eprintln!("hearth-guest: boot failed: {err}");
            vm::power_off();
        }
    };
    let Cli {
        command: Command::Serve(defaults),
    } = Cli::parse_from(["hearth-guest", "serve"])
    else {
        unreachable!("parsed the serve subcommand");
    };
    let seccomp = booted.seccomp.map(std::sync::Arc::new);
    let config = server::Config {
        vm_workspace: Some(booted.workspace),
        confinement: Some(std::sync::Arc::new(booted.confinement)),
        cgroup_root: PathBuf::from(vm::workload_ns::WORKLOAD_CGROUP),
        exec_defaults: booted.exec_defaults,
        ..config(defaults, booted.listen, seccomp)
    };
    if let Err(err) = run_server(config) {
        eprintln!("hearth-guest: {err:#}");
    }
    vm::power_off();
}

/// Makes this process non-dumpable: without `CAP_SYS_PTRACE` (which no workload has) nothing
/// can ptrace it, `pidfd_getfd` its fds (the host's channel among them), or open its
/// `/proc/<pid>/mem`, `fd/` or `environ`, even a workload running as the same uid. Children get
/// their own dumpable flag back when they exec.
fn protect_from_workload() {
    if let Err(err) = nix::sys::prctl::set_dumpable(false) {
        // Only a kernel without prctl could refuse; say so, since the channel is then exposed.
        tracing::error!(%err, "cannot make hearth-guest non-dumpable");
    }
}

fn config(
    args: ServeArgs,
    listen: transport::Listen,
    seccomp: Option<std::sync::Arc<seccomp::GuestFilters>>,
) -> server::Config {
    server::Config {
        listen,
        max_output: args.max_output,
        max_file: args.max_file,
        max_stdin: args.max_stdin,
        shutdown_grace: Duration::from_millis(args.shutdown_grace_ms),
        cgroup_root: args.cgroup_root,
        seccomp,
        vm_workspace: None,
        confinement: None,
        exec_defaults: hearth_proto::ExecDefaults::default(),
    }
}

fn run_server(config: server::Config) -> anyhow::Result<()> {
    // Two workers are plenty for a per-sandbox daemon and keep its footprint small.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start the async runtime")?;
    let result = runtime.block_on(server::serve(config));
    // Do not wait on stragglers (a stuck blocking read); everything was told to stop.
    runtime.shutdown_timeout(Duration::from_millis(500));
    result.context("hearth-guest serve")
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_take_binary_suffixes() {
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("1K"), Ok(1024));
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert!(parse_size("1T").is_err());
        assert!(parse_size("M").is_err());
    }
}
