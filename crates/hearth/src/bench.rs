//! `hearth bench sandbox`: hearth's sandbox lifecycle and exec latency, each printed next to
//! the same work done by the bare OCI runtime in the same run.
//!
//! - cycle: hearth create -> exec `true` -> remove, against a bare `runc run` of a minimal
//!   bundle running `true` (runc creates, starts, waits and deletes).
//! - exec: `true` through hearth-guest in a running sandbox, against `runc exec` into a bare
//!   container of the minimal bundle (a sandbox's own user namespace cannot join its host-owned
//!   network namespace, so the runtime cannot exec into it).

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Subcommand;
use hearth_proto::ExecRequest;
use hearth_sandbox::backend::BackendKind;
use hearth_sandbox::spec::SandboxSpec;
use hearth_sandbox::SandboxId;
use serde::Serialize;

mod floods;
mod seccomp;
mod vm;

use crate::cli::output::{self, errln, outln, OutputError};
use crate::config::Settings;
use crate::request::{RequestError, SandboxRequest, SeccompRequest};
use crate::sandboxes::SandboxManager;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Sandbox create/exec/remove cycle and exec latency, next to bare runc.
    Sandbox {
        /// Full create -> exec -> remove cycles to time.
        #[arg(long, default_value_t = 30)]
        cycles: usize,
        /// Execs into one running sandbox to time.
        #[arg(long, default_value_t = 300)]
        execs: usize,
        /// Print the figures as JSON.
        #[arg(long)]
        json: bool,
    },
    /// QEMU microVM boot: `create --backend qemu` to guest ready, next to the same kernel
    /// booting straight to a trivial init (needs `hearth image build`).
    Vm {
        /// Boots to time of each kind.
        #[arg(long, default_value_t = 5)]
        boots: usize,
        /// Print the figures as JSON.
        #[arg(long)]
        json: bool,
    },
    /// A flood of denied calls in one sandbox: supervisor memory, exact counts, and exec
    /// latency in a second sandbox during the flood next to idle.
    Seccomp {
        /// Denied calls the flooding sandbox makes.
        #[arg(long, default_value_t = 1_000_000)]
        calls: u64,
        /// Execs timed in the second sandbox, idle and during the flood.
        #[arg(long, default_value_t = 200)]
        execs: usize,
        /// Print the figures as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Host-side work one sandbox causes (denied calls, DNS queries, dropped packets), each
    /// flood in turn: its supervisor's CPU, and exec latency in a second sandbox during it
    /// next to idle.
    Floods {
        /// Seconds each flood runs.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Execs timed in the second sandbox, idle and during each flood.
        #[arg(long, default_value_t = 200)]
        execs: usize,
        /// Print the figures as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// p50 and p99 of a set of samples, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Percentiles {
    pub samples: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl Percentiles {
    pub fn of(mut samples: Vec<Duration>) -> Self {
        samples.sort();
        let pick = |q: f64| {
            if samples.is_empty() {
                return 0.0;
            }
            #[allow(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                clippy::cast_precision_loss
            )]
            let index = ((samples.len() - 1) as f64 * q).round() as usize;
            samples[index].as_secs_f64() * 1000.0
        };
        Self {
            samples: samples.len(),
            p50_ms: pick(0.50),
            p99_ms: pick(0.99),
        }
    }
}

#[derive(Debug, Serialize)]
struct SandboxBench {
    runtime: String,
    hearth_cycle: Percentiles,
    bare_runtime_run: Percentiles,
    cycle_ratio_p50: f64,
    hearth_exec: Percentiles,
    runtime_exec: Percentiles,
}

pub async fn run(command: BenchCommand, settings: &Settings) -> anyhow::Result<u8> {
    let (cycles, execs, json) = match command {
        BenchCommand::Sandbox {
            cycles,
            execs,
            json,
        } => (cycles, execs, json),
        BenchCommand::Vm { boots, json } => {
            let manager = settings.manager().await?;
            return vm::run(&manager, boots.max(1), json).await;
        }
        BenchCommand::Seccomp { calls, execs, json } => {
            let manager = settings.manager().await?;
            return seccomp::run(&manager, calls, execs, json).await;
        }
        BenchCommand::Floods {
            seconds,
            execs,
            json,
        } => {
            let manager = settings.manager().await?;
            return floods::run(&manager, seconds.max(1), execs.max(1), json).await;
        }
    };
    let manager = settings.manager().await?;
    manager.reconcile().await?;
    let runtime = manager.backends.get(BackendKind::Oci)?.describe();
    let scratch = tempfile::Builder::new()
        .prefix("hearth-bench-")
        .tempdir_in(manager.dirs.root())?;

    progress(json, &format!("bare `runc run` x{cycles}"));
    let bare = bench_bare_run(settings, scratch.path(), cycles)?;
    progress(json, &format!("hearth create -> exec true -> rm x{cycles}"));
    let cycle = bench_cycle(&manager, cycles).await?;
    progress(
        json,
        &format!("exec true x{execs} (hearth-guest and runc exec)"),
    );
    let (hearth_exec, runtime_exec) = bench_exec(&manager, settings, scratch.path(), execs).await?;

    let result = SandboxBench {
        runtime,
        cycle_ratio_p50: cycle.p50_ms / bare.p50_ms.max(f64::MIN_POSITIVE),
        hearth_cycle: cycle,
        bare_runtime_run: bare,
        hearth_exec,
        runtime_exec,
    };
    if json {
        output::print_json(&result)?;
    } else {
        print_table(&result)?;
    }
    Ok(0)
}

/// A progress line on stderr; a closed stderr doesn't stop the bench (or its cleanup).
pub(crate) fn progress(json: bool, what: &str) {
    if !json {
        let _ = errln!("bench: {what} ...");
    }
}

fn print_table(r: &SandboxBench) -> Result<(), OutputError> {
    outln!("runtime: {}", r.runtime)?;
    outln!("{:<44} {:>9} {:>9}", "", "p50 ms", "p99 ms")?;
    let row =
        |name: &str, p: &Percentiles| outln!("{name:<44} {:>9.2} {:>9.2}", p.p50_ms, p.p99_ms);
    row("hearth create -> exec true -> rm", &r.hearth_cycle)?;
    row("reference: bare runc run (true)", &r.bare_runtime_run)?;
    outln!(
        "{:<44} {:>9.2}x (goal <= 1.3x)",
        "cycle ratio (p50)",
        r.cycle_ratio_p50
    )?;
    row("hearth exec true (running sandbox)", &r.hearth_exec)?;
    row(
        "reference: runc exec true (a bare container)",
        &r.runtime_exec,
    )
}

async fn bench_cycle(manager: &SandboxManager, cycles: usize) -> anyhow::Result<Percentiles> {
    let mut samples = Vec::with_capacity(cycles);
    for _ in 0..cycles {
        let spec = bench_spec()?;
        let start = Instant::now();
        manager.create(&spec).await?;
        let status = manager
            .guest(&spec.id)
            .await?
            .exec(&true_request(), |_| {})
            .await?;
        manager.remove(&spec.id, false).await?;
        samples.push(start.elapsed());
        if !status.success() {
            bail!("`true` failed in the bench sandbox: {status:?}");
        }
    }
    Ok(Percentiles::of(samples))
}

async fn bench_exec(
    manager: &SandboxManager,
    settings: &Settings,
    scratch: &Path,
    execs: usize,
) -> anyhow::Result<(Percentiles, Percentiles)> {
    let spec = bench_spec()?;
    manager.create(&spec).await?;
    let outcome = exec_samples(manager, settings, scratch, &spec.id, execs).await;
    manager.remove(&spec.id, false).await?;
    outcome
}

async fn exec_samples(
    manager: &SandboxManager,
    settings: &Settings,
    scratch: &Path,
    id: &SandboxId,
    execs: usize,
) -> anyhow::Result<(Percentiles, Percentiles)> {
    let client = manager.guest(id).await?;
    let request = true_request();
    let mut hearth = Vec::with_capacity(execs);
    for _ in 0..execs {
        let start = Instant::now();
        client.exec(&request, |_| {}).await?;
        hearth.push(start.elapsed());
    }
    Ok((
        Percentiles::of(hearth),
        runtime_exec_samples(settings, scratch, execs)?,
    ))
}

/// `runc exec true` into a bare container of the minimal bundle. (Not into the hearth
/// sandbox: its user namespace cannot join the host-owned network namespace an exec would
/// need, which is the point of keeping that namespace host-owned.)
fn runtime_exec_samples(
    settings: &Settings,
    scratch: &Path,
    execs: usize,
) -> anyhow::Result<Percentiles> {
    let runtime = hearth_sandbox::backend::OciRuntime::detect(
        settings.oci_runtime,
        scratch.join("exec-state"),
    )?;
    let bundle = scratch.join("exec-bundle");
    write_bundle_running(&bundle, &["/usr/bin/sleep", "600"])?;
    let container = format!("hearth-bench-exec-{}", std::process::id());
    let runc = |args: &[&str]| {
        Command::new(&runtime.binary)
            .arg("--root")
            .arg(&runtime.state_root)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .context("cannot run the OCI runtime")
    };
    let bundle_arg = bundle.to_string_lossy().into_owned();
    let started = runc(&["run", "--detach", "--bundle", &bundle_arg, &container])?;
    if !started.success() {
        bail!("the reference container did not start: {started}");
    }
    let mut samples = Vec::with_capacity(execs);
    let mut failed = None;
    for _ in 0..execs {
        let start = Instant::now();
        let status = runc(&["exec", &container, "/usr/bin/true"])?;
        samples.push(start.elapsed());
        if !status.success() {
            failed = Some(status);
            break;
        }
    }
    let _ = runc(&["delete", "--force", &container]);
    match failed {
        Some(status) => bail!("`runc exec true` failed: {status}"),
        None => Ok(Percentiles::of(samples)),
    }
}

/// A plain sandbox without a seccomp filter, to compare with a bare runtime.
pub(crate) fn bench_request(backend: BackendKind) -> SandboxRequest {
    SandboxRequest {
        backend,
        seccomp: SeccompRequest::Unfiltered,
        ..SandboxRequest::default()
    }
}

/// [`bench_request`] of an OCI sandbox, validated.
pub(crate) fn bench_spec() -> Result<SandboxSpec, RequestError> {
    bench_request(BackendKind::Oci).validate()
}

fn true_request() -> ExecRequest {
    ExecRequest {
        argv: vec!["/usr/bin/true".to_owned()],
        ..ExecRequest::default()
    }
}

/// A bare `runc run` of the smallest useful bundle: host /usr read-only, runc's default
/// namespaces and mounts, running `true`.
fn bench_bare_run(
    settings: &Settings,
    scratch: &Path,
    cycles: usize,
) -> anyhow::Result<Percentiles> {
    let runtime =
        hearth_sandbox::backend::OciRuntime::detect(settings.oci_runtime, scratch.join("state"))?;
    let bundle = scratch.join("bundle");
    write_minimal_bundle(&bundle)?;
    let mut samples = Vec::with_capacity(cycles);
    for i in 0..cycles {
        let start = Instant::now();
        let status = Command::new(&runtime.binary)
            .arg("--root")
            .arg(&runtime.state_root)
            .args(["run", "--bundle"])
            .arg(&bundle)
            .arg(format!("hearth-bench-bare-{}-{i}", std::process::id()))
            .stdin(Stdio::null())
            .status()
            .context("cannot run the OCI runtime")?;
        samples.push(start.elapsed());
        if !status.success() {
            bail!("bare `{} run` failed: {status}", runtime.kind);
        }
    }
    Ok(Percentiles::of(samples))
}

fn write_minimal_bundle(bundle: &Path) -> anyhow::Result<()> {
    write_bundle_running(bundle, &["/usr/bin/true"])
}

/// The minimal bundle, running `args`.
fn write_bundle_running(bundle: &Path, args: &[&str]) -> anyhow::Result<()> {
    use oci_spec::runtime::{Mount, ProcessBuilder, RootBuilder, Spec};
    let rootfs = bundle.join("rootfs");
    fs::create_dir_all(&rootfs)?;
    for name in ["bin", "lib", "lib64", "sbin"] {
        if let Ok(target) = fs::read_link(Path::new("/").join(name)) {
            std::os::unix::fs::symlink(target, rootfs.join(name))?;
        }
    }
    let mut spec = Spec::default();
    let mut usr = Mount::default();
    usr.set_destination("/usr".into())
        .set_typ(Some("bind".to_owned()))
        .set_source(Some("/usr".into()))
        .set_options(Some(vec!["rbind".to_owned(), "ro".to_owned()]));
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    mounts.push(usr);
    spec.set_mounts(Some(mounts));
    spec.set_root(Some(
        RootBuilder::default().path(rootfs).readonly(true).build()?,
    ));
    spec.set_process(Some(
        ProcessBuilder::default()
            .terminal(false)
            .args(args.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>())
            .cwd("/")
            .build()?,
    ));
    spec.save(bundle.join("config.json"))?;
    Ok(())
}
