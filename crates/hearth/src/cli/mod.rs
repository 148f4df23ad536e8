//! The command line: `hearth sandbox ...`, `hearth doctor`, `hearth bench ...`.

mod audit;
pub(crate) mod escape;
mod image;
mod net;
pub(crate) mod output;
mod run;
mod sandbox;
pub(crate) mod seccomp;
mod serve;
mod snapshot;
mod spinner;
mod supervise;
mod task;
mod template;
mod template_file;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::Settings;

/// hearth runs AI-agent tasks in isolated sandboxes.
///
/// Each sandbox is an OCI container (runc, crun or runsc) with its own PID, mount, IPC, UTS,
/// cgroup and network namespaces, no capabilities, `no_new_privs`, cgroup limits, and
/// `hearth-guest` as PID 1. Sandboxes keep running after the command that created them exits.
#[derive(Debug, Parser)]
#[command(name = "hearth", version, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Options shared by every command.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Runtime root for running sandboxes (default /run/hearth as root).
    #[arg(long, global = true, env = "HEARTH_RUNTIME_DIR", value_name = "DIR")]
    pub runtime_dir: Option<PathBuf>,
    /// State dir holding the SQLite database (default /var/lib/hearth as root).
    #[arg(long, global = true, env = "HEARTH_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// OCI runtime: runc, crun or runsc (default: detected for this host's cgroups).
    #[arg(long, global = true, env = "HEARTH_OCI_RUNTIME", value_name = "NAME")]
    pub oci_runtime: Option<String>,
    /// The hearth-guest binary run as PID 1 (default: next to the hearth binary).
    #[arg(long, global = true, env = "HEARTH_GUEST_BINARY", value_name = "PATH")]
    pub guest_binary: Option<PathBuf>,
    /// Nameserver that sandboxes' allowed names are resolved with, IP[:PORT] (default: the
    /// first nameserver of the host's /etc/resolv.conf).
    #[arg(long, global = true, env = "HEARTH_DNS_UPSTREAM", value_name = "ADDR", value_parser = parse_dns_upstream)]
    pub dns_upstream: Option<std::net::SocketAddr>,
    /// The firecracker binary for `--backend firecracker` (default: firecracker on PATH).
    /// (`-bin`: `hearth image kernel --firecracker` is a flag of its own.)
    #[arg(long, global = true, env = "HEARTH_FIRECRACKER", value_name = "PATH")]
    pub firecracker_bin: Option<PathBuf>,
    /// Firecracker's jailer (default: jailer on PATH); without one Firecracker runs directly
    /// in the sandbox's network namespace.
    #[arg(long, global = true, env = "HEARTH_JAILER", value_name = "PATH")]
    pub jailer_bin: Option<PathBuf>,
    /// Run Firecracker directly (in the sandbox's network namespace, as hearth's user) even
    /// when a jailer is installed. Use the same setting for `create` and `rm`.
    #[arg(long, global = true, env = "HEARTH_FIRECRACKER_DIRECT")]
    pub firecracker_direct: bool,
    /// The Firecracker VMM's own seccomp filter: `builtin` (Firecracker's, the default), a
    /// seccompiler JSON file with `vmm`/`api`/`vcpu` filters, or a hearth policy applied to
    /// every VMM thread. (The sandbox's --seccomp filters the guest's processes instead.)
    #[arg(
        long,
        global = true,
        env = "HEARTH_FIRECRACKER_SECCOMP",
        value_name = "builtin|FILE|PROFILE"
    )]
    pub firecracker_seccomp: Option<String>,
    /// More logging on stderr (-v info, -vv debug; RUST_LOG overrides).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// `IP` or `IP:PORT` (port 53 when omitted); `[v6]:PORT` for IPv6 with a port.
fn parse_dns_upstream(text: &str) -> Result<std::net::SocketAddr, String> {
    if let Ok(ip) = text.parse::<std::net::IpAddr>() {
        return Ok(std::net::SocketAddr::new(ip, 53));
    }
    text.parse()
        .map_err(|_| format!("{text:?} is not an IP address or IP:PORT"))
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run an agent task in a new sandbox: live progress, then the answer and the workspace diff.
    Run(run::RunArgs),
    /// Inspect tasks and their timelines.
    #[command(subcommand)]
    Task(task::TaskCommand),
    /// Create, use and remove sandboxes.
    #[command(subcommand)]
    Sandbox(SandboxCommand),
    /// Validate and render seccomp policies.
    #[command(subcommand)]
    Seccomp(seccomp::SeccompCommand),
    /// Check what this host can run, with a one-line fix for each failing check.
    Doctor {
        /// Print the checks as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Build and manage the microVM guest image.
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// Make sandboxes from OCI images: build, list, show and remove templates.
    #[command(subcommand)]
    Template(template::TemplateCommand),
    /// Serve the HTTP API (tasks, their events, sandboxes) on loopback and a Unix socket.
    Serve(serve::ServeArgs),
    /// Measure hearth against its reference tools on this host.
    #[command(subcommand)]
    Bench(BenchCommand),
}

/// `hearth bench ...`: the task benchmark next to those of bench.rs.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Agent tasks per second end to end (scripted upstream), and the gateway's added latency.
    Tasks(crate::api::bench_tasks::TasksBenchArgs),
    #[command(flatten)]
    Other(crate::bench::BenchCommand),
}

/// `hearth sandbox ...`: the commands of sandbox.rs, and the supervisor's hidden entry.
#[derive(Debug, Subcommand)]
pub enum SandboxCommand {
    #[command(flatten)]
    Other(sandbox::SandboxCommand),
    /// Run a sandbox's seccomp supervisor (started by `create`, not by hand).
    #[command(hide = true)]
    Supervise(supervise::SuperviseArgs),
}

/// Runs a parsed command; returns the process exit code.
pub async fn run(cli: Cli) -> anyhow::Result<u8> {
    let settings = Settings::from_args(&cli.global)?;
    match cli.command {
        Command::Run(args) => run::run(args, &settings).await,
        Command::Task(command) => task::run(command, &settings).await,
        Command::Sandbox(SandboxCommand::Other(command)) => sandbox::run(command, &settings).await,
        Command::Sandbox(SandboxCommand::Supervise(args)) => supervise::run(args, &settings).await,
        Command::Seccomp(command) => seccomp::run(command),
        Command::Doctor { json } => crate::doctor::run(&settings, json),
        Command::Serve(args) => serve::run(args, &settings).await,
        Command::Image(command) => image::run(command, &settings),
        Command::Template(command) => template::run(command, &settings).await,
        Command::Bench(BenchCommand::Tasks(args)) => {
            crate::api::bench_tasks::run(args, &settings).await
        }
        Command::Bench(BenchCommand::Other(command)) => crate::bench::run(command, &settings).await,
    }
}
