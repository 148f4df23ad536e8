//! `hearth sandbox snapshot|snapshots|snapshot-rm` and `create --from-snapshot`.

use clap::Args;
use hearth_sandbox::spec::ResourceLimits;
use hearth_sandbox::SandboxId;

use super::output::{self, outln};
use super::sandbox::CreateArgs;
use crate::exit::{CliError, ErrorKind};
use crate::request::{SandboxRequest, SeccompRequest};
use crate::sandboxes::SandboxManager;
use crate::store::{SnapshotName, SnapshotRecord};

#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// Sandbox id (a QEMU or Firecracker sandbox, running or paused).
    id: String,
    /// Name of the snapshot ([a-z0-9-], 1-64 chars, not starting with '-'); random when
    /// absent. An existing name is refused.
    #[arg(long)]
    name: Option<String>,
    /// Print the snapshot's record as JSON instead of just its name.
    #[arg(long)]
    json: bool,
}

pub async fn snapshot(manager: &SandboxManager, args: SnapshotArgs) -> anyhow::Result<u8> {
    let id = SandboxId::parse(&args.id)?;
    let name = match &args.name {
        Some(raw) => SnapshotName::parse(raw)?,
        None => SnapshotName::generate(),
    };
    let record = manager.snapshot(&id, name).await?;
    if args.json {
        output::print_json(&record)?;
    } else {
        outln!("{}", record.name)?;
    }
    Ok(0)
}

pub async fn list(manager: &SandboxManager, json: bool) -> anyhow::Result<u8> {
    let records = manager.snapshots().await?;
    if json {
        output::print_json(&records)?;
        return Ok(0);
    }
    outln!(
        "{:<24} {:<24} {:<8} {:>10} {:<8} CREATED",
        "NAME",
        "SOURCE",
        "BACKEND",
        "SIZE",
        "MEMORY"
    )?;
    for record in records {
        outln!(
            "{:<24} {:<24} {:<8} {:>10} {:<8} {}",
            record.name.to_string(),
            record.source_id.to_string(),
            record.backend,
            human_size(record.size_bytes),
            record.spec.limits.memory.to_string(),
            record.created_at / 1000,
        )?;
    }
    Ok(0)
}

pub async fn remove(manager: &SandboxManager, raw: &[String]) -> anyhow::Result<u8> {
    let names = raw
        .iter()
        .map(|raw| SnapshotName::parse(raw))
        .collect::<Result<Vec<_>, _>>()?;
    for name in &names {
        manager.remove_snapshot(name).await?;
    }
    Ok(0)
}

/// `create --from-snapshot NAME`: the new sandbox takes the VM's shape from the snapshot.
pub async fn create_from(manager: &SandboxManager, args: CreateArgs) -> anyhow::Result<u8> {
    let raw = args.from_snapshot.as_deref().unwrap_or_default();
    let name = SnapshotName::parse(raw)?;
    // The id, workspace and network are asked for as for any sandbox; the VM's shape and its
    // seccomp policy are the snapshot's (its guest installed that policy before it was saved).
    let request = SandboxRequest {
        seccomp: SeccompRequest::Unfiltered,
        guest_seccomp: None,
        ..super::sandbox::request(&args)?
    };
    let mut spec = request.validate().map_err(super::sandbox::bad_request)?;
    let snapshot = manager.get_snapshot(&name).await?;
    spec.limits = restored_limits(&args, &snapshot)?;
    spec.backend = snapshot.spec.backend;
    spec.seccomp.clone_from(&snapshot.spec.seccomp);
    spec.guest_seccomp.clone_from(&snapshot.spec.guest_seccomp);
    manager.reconcile().await?;
    let record = manager.create_from_snapshot(&spec, &name).await?;
    super::sandbox::print_created(&record, args.json)
}

/// The snapshot's limits; a flag that asks for something else is refused, since the saved VM
/// has its memory size and vCPUs built in. The seccomp policy lives in the saved guest too.
fn restored_limits(
    args: &CreateArgs,
    snapshot: &SnapshotRecord,
) -> Result<ResourceLimits, CliError> {
    let saved = snapshot.spec.limits;
    let conflict = |what: String| {
        CliError::new(
            ErrorKind::BadInput,
            format!(
                "--from-snapshot {}: {what}; the restored VM keeps the snapshot's",
                snapshot.name
            ),
        )
    };
    let saved_backend = snapshot.spec.backend;
    if let Some(backend) = args.backend.filter(|b| *b != saved_backend) {
        return Err(conflict(format!(
            "--backend {backend}, but the snapshot is of a {saved_backend} sandbox"
        )));
    }
    if let Some(memory) = args.memory.filter(|m| *m != saved.memory) {
        return Err(conflict(format!(
            "--memory {memory}, but the snapshot has {}",
            saved.memory
        )));
    }
    if let Some(cpus) = args.cpus.filter(|c| *c != saved.cpus) {
        return Err(conflict(format!(
            "--cpus {}, but the snapshot has {}",
            cpus.0, saved.cpus.0
        )));
    }
    if args.seccomp.is_some() || args.guest_seccomp.is_some() {
        return Err(conflict(
            "--seccomp/--guest-seccomp given, but the guest's policy is part of the saved VM"
                .to_owned(),
        ));
    }
    let limits = ResourceLimits {
        pids: args.pids.unwrap_or(saved.pids),
        ..saved
    };
    limits
        .validate()
        .map_err(|err| CliError::new(ErrorKind::BadInput, err.to_string()))?;
    Ok(limits)
}

fn human_size(bytes: u64) -> String {
    const MIB: u64 = 1024 * 1024;
    if bytes >= MIB {
        format!("{}M", bytes.div_ceil(MIB))
    } else {
        format!("{}K", bytes.div_ceil(1024))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use hearth_sandbox::backend::BackendKind;
    use hearth_sandbox::seccomp::SpecSeccomp;
    use hearth_sandbox::spec::{Cpus, MemoryBytes, SandboxSpec};

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        create: CreateArgs,
    }

    fn args(extra: &[&str]) -> CreateArgs {
        let mut argv = vec!["create", "--from-snapshot", "s1"];
        argv.extend(extra);
        Cli::parse_from(argv).create
    }

    fn record() -> SnapshotRecord {
        record_of(BackendKind::Qemu)
    }

    fn record_of(backend: BackendKind) -> SnapshotRecord {
        let spec = SandboxSpec {
            id: SandboxId::parse("src").unwrap(),
            limits: ResourceLimits {
                memory: MemoryBytes(256 << 20),
                cpus: Cpus(2.0),
                pids: 100,
                ..ResourceLimits::default()
            },
            workspace: None,
            seccomp: Some(SpecSeccomp::Bpf(vec![7])),
            net: Default::default(),
            guest_seccomp: None,
            backend,
            template: None,
        };
        crate::store::new_snapshot_record(
            SnapshotName::parse("s1").unwrap(),
            &spec,
            1,
            "v".into(),
            "q".into(),
        )
    }

    #[test]
    fn a_restore_takes_the_snapshots_shape() {
        let limits = restored_limits(&args(&[]), &record()).unwrap();
        assert_eq!(limits.memory, MemoryBytes(256 << 20));
        assert_eq!(limits.cpus, Cpus(2.0));
        assert_eq!(limits.pids, 100);
        // Saying the same is fine; pids is the host's business, not the VM's.
        let same = restored_limits(
            &args(&[
                "--memory",
                "256M",
                "--cpus",
                "2",
                "--pids",
                "50",
                "--backend",
                "qemu",
            ]),
            &record(),
        )
        .unwrap();
        assert_eq!(same.pids, 50);
    }

    #[test]
    fn contradicting_flags_are_refused() {
        for flags in [
            &["--memory", "1G"][..],
            &["--cpus", "1"],
            &["--backend", "oci"],
            &["--seccomp", "strict"],
            &["--guest-seccomp", "default"],
        ] {
            let err = restored_limits(&args(flags), &record()).unwrap_err();
            assert_eq!(err.kind, ErrorKind::BadInput, "{flags:?}");
            assert!(err.message.contains(flags[0]), "{}", err.message);
            assert!(!err.message.contains('\n'));
        }
    }

    #[test]
    fn the_backend_is_the_snapshots() {
        let firecracker = record_of(BackendKind::Firecracker);
        assert!(restored_limits(&args(&["--backend", "firecracker"]), &firecracker).is_ok());
        let err = restored_limits(&args(&["--backend", "qemu"]), &firecracker).unwrap_err();
        assert_eq!(err.kind, ErrorKind::BadInput);
        assert!(
            err.message.contains("a firecracker sandbox"),
            "{}",
            err.message
        );
    }
}
