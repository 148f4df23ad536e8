//! The Firecracker backend: each sandbox is a Firecracker microVM, run under the official
//! `jailer` when configured, or directly inside the sandbox's network namespace.
//!
//! # Starting a VM
//! 1. `<sandbox dir>/vm/` is made (0700); with the jailer, also the jail root (owned by the
//!    VMM's uid) with the kernel, initrd and rootfs linked or copied in ([`jailer`]).
//! 2. The config drive (the shared [`crate::backend::vm::config_drive_bytes`]: hostname, the
//!    guest seccomp BPF), empty log
//!    and metrics files, and the VMM's own seccomp filter ([`seccomp`]) are written.
//! 3. Firecracker (or the jailer) is spawned in its own session, stdout+stderr to `vm/vmm.log`
//!    (its errors and the guest's serial console); `vm/vmm.pid` records `PID STARTTIME`.
//! 4. Once `GET /` answers on the API socket, the [`boot::BootPlan`] is sent in order
//!    (logger, metrics, machine-config, boot-source, drives, network interface `tap0`, vsock),
//!    then `InstanceStart`.
//!
//! Any failure kills the VMM and removes the jail and `vm/`, so nothing half-made is left. The
//! guest is then reached through Firecracker's vsock socket ([`vsock::VsockConnector`]); the
//! relay serves the sandbox's usual guest socket on top of it.
//!
//! A running VM can be paused, resumed and snapshotted (`PATCH /vm`, `PUT /snapshot/create`),
//! and a new sandbox restored from a snapshot (`PUT /snapshot/load` on a fresh VMM). The
//! process that spawned a VMM can read how it ended ([`VmmExit`]: exit status 148 and the
//! "bad syscall (N)" log line are a seccomp fault of the VMM's own filter, for the audit).
//!
//! # Measuring `InstanceStart` to guest-ready (goal: at most 150 ms on KVM hardware)
//! Firecracker cannot run on hosts without usable KVM, and no `hearth bench` subcommand boots it
//! yet (`hearth bench vm` measures QEMU): this is how a Firecracker boot bench is to measure it
//! where it can. The clock is `Instant` (monotonic) in the hearth process; the VM's work lies
//! between two points hearth itself observes:
//! - `t0`: just before the `PUT /actions {"action_type": "InstanceStart"}` request is written
//!   (after every configuration call has returned, so API round trips before it are excluded);
//! - `t1`: when the first `GET /v1/health` through [`vsock::VsockConnector`] (`CONNECT 1024`,
//!   `OK`, then the HTTP exchange) returns 200. Attempts before that fail fast: Firecracker
//!   closes the connection while nothing listens on port 1024, so polling every millisecond
//!   adds at most about a millisecond of error.
//!
//! `t1 - t0` is the figure: guest kernel boot, `hearth-guest` as PID 1 mounting the rootfs and
//! listening on vsock, plus one request, which is what a task waits for. The bench is to run N
//! boots (default 20) of fresh sandboxes, and print p50, p90 and max next to a reference measured
//! in the same run on the same kernel: the same VM booted with `init=/bin/true`-style trivial init
//! that powers off at once (`t0` to the VMM's exit), which is the floor Firecracker and the
//! kernel set; for example
//! `firecracker InstanceStart->ready  p50 128 ms  p90 141 ms  max 155 ms  (trivial init p50 96 ms, 1.33x)`.
//! It is also to print, without judging them, the spawn->API-socket and configuration times, since
//! those are hearth's own overhead before `t0`. No test asserts a duration.

pub mod api;
pub mod boot;
pub mod client;
pub mod jailer;
pub mod layout;
pub mod process;
pub mod seccomp;
pub mod support;
pub mod vsock;

mod backend;

pub use backend::{
    saved_files, FirecrackerBackend, FirecrackerConfig, LaunchKind, LaunchMode, SnapshotFiles,
    SnapshotManifest, VmmExit,
};
pub use client::{ApiClient, ApiError};
pub use jailer::{JailerConfig, JailerError};
pub use process::ProcessError;
pub use seccomp::{SeccompFileError, VmmFilter};
pub use support::{firecracker_support, FirecrackerSupport};
pub use vsock::VsockConnector;

use std::path::PathBuf;
use std::time::Duration;

use crate::dirs::DirsError;
use crate::id::SandboxId;

/// Errors of the Firecracker backend.
#[derive(Debug, thiserror::Error)]
pub enum FirecrackerError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(transparent)]
    Jailer(#[from] JailerError),
    #[error("{}", join_errors(.0))]
    Cleanup(Vec<FirecrackerError>),
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error(transparent)]
    Seccomp(#[from] SeccompFileError),
    #[error(transparent)]
    Dirs(#[from] DirsError),
    #[error("write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    ConfigDrive(#[from] crate::backend::vm::ConfigDriveError),
    #[error(transparent)]
    Tap(#[from] crate::net::TapError),
    #[error("the Firecracker backend needs a guest image (a Firecracker kernel from `hearth image kernel --firecracker`, and `hearth image build`)")]
    NoImage,
    #[error("guest image file {path} is missing")]
    ImageFileMissing { path: PathBuf },
    #[error("encode the VM configuration: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("start a runtime for the Firecracker API: {0}")]
    Runtime(std::io::Error),
    #[error("the VMM of sandbox {id} exited during start ({status}); see {log}")]
    VmmExited {
        id: SandboxId,
        status: String,
        log: PathBuf,
    },
    #[error("the VMM of sandbox {id} did not finish booting within {waited:?}")]
    StartTimeout { id: SandboxId, waited: Duration },
    #[error("the VM of sandbox {id} stopped while its guest was booting{}", tail_hint(.tail))]
    DiedBooting { id: SandboxId, tail: String },
    #[error("the guest of sandbox {id} was not ready within {waited:?}{}", tail_hint(.tail))]
    BootTimeout {
        id: SandboxId,
        waited: Duration,
        tail: String,
    },
    #[error("sandbox {id} has no running VMM")]
    NotRunning { id: SandboxId },
    #[error("snapshot directory {path} already exists")]
    SnapshotExists { path: PathBuf },
    #[error("a snapshot of sandbox {id} is already being taken; try again when it is done")]
    SnapshotBusy { id: SandboxId },
    #[error("sandbox {id} was started by an older hearth that did not record what a snapshot needs; recreate it to snapshot it")]
    NoLaunchRecord { id: SandboxId },
    #[error("cannot tell the version of {binary} (`--version` failed); a snapshot can only be restored by the Firecracker that took it")]
    VersionUnknown { binary: PathBuf },
    #[error("snapshot file {path}: {source}")]
    SnapshotFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("unreadable snapshot manifest {path}: {source}")]
    SnapshotManifest {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("snapshot {path} was taken with {field} {snapshot}, but this host has {here}; restore it where it was taken")]
    SnapshotMismatch {
        path: PathBuf,
        field: &'static str,
        snapshot: String,
        here: String,
    },
}

/// Overrides where Firecracker's upstream files (API spec, seccomp filters, kernel config) are
/// read from: `$HEARTH_SHARED_DIR/firecracker/NAME`.
pub const SHARED_DIR_ENV: &str = "HEARTH_SHARED_DIR";

/// One of Firecracker's upstream files, which hearth reads at build or test time and never
/// copies into the project: `$HEARTH_SHARED_DIR/firecracker/NAME`, else the first
/// `shared/firecracker/NAME` found beside a directory on the way up from each of `starts`
/// (the project's checkout sits next to `shared/`).
pub fn find_shared_file(name: &str, starts: &[PathBuf]) -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os(SHARED_DIR_ENV) {
        let path = PathBuf::from(dir).join("firecracker").join(name);
        return path.is_file().then_some(path);
    }
    starts
        .iter()
        .flat_map(|start| start.ancestors())
        .map(|dir| dir.join("shared/firecracker").join(name))
        .find(|path| path.is_file())
}

fn tail_hint(tail: &str) -> String {
    if tail.is_empty() {
        String::new()
    } else {
        format!(": {tail}")
    }
}

fn join_errors(errors: &[FirecrackerError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}
