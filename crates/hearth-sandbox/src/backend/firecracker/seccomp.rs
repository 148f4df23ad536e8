//! The VMM's own seccomp filter: the file Firecracker reads with `--seccomp-filter`.
//!
//! This filters the syscalls of Firecracker's threads on the host. The sandbox's policy for
//! the agent's processes is a different layer: those syscalls hit the guest kernel, never the
//! host, so `hearth-guest` applies that policy inside the VM (the BPF travels on the config
//! drive, see [`super::boot`]). A hearth policy can still be rendered for the VMM threads when it
//! has one action besides its default (the `audit` profile does; `default` and `strict` need
//! `ENOSYS` for `clone3` too and are refused with a message saying so). Firecracker's own filter
//! JSON compiles through the same code, so an operator can tighten or loosen it by editing a copy.

use std::io;
use std::path::{Path, PathBuf};

use hearth_seccomp::{
    compile_firecracker_json, encode_firecracker_bpf, FirecrackerError as RenderError,
    FirecrackerFilters, SeccompPolicy,
};

/// Which filter the VMM runs under.
#[derive(Debug, Clone, Default)]
pub enum VmmFilter {
    /// Firecracker's built-in filters (no `--seccomp-filter`): the upstream-maintained default.
    #[default]
    Builtin,
    /// seccompiler JSON (for example Firecracker's `x86_64-unknown-linux-musl.json`).
    Json(String),
    /// A hearth policy applied to the `vmm`, `api` and `vcpu` threads alike.
    Policy(SeccompPolicy),
}

/// Errors writing the filter file.
#[derive(Debug, thiserror::Error)]
pub enum SeccompFileError {
    #[error("render the VMM seccomp filter: {0}")]
    Render(#[from] RenderError),
    #[error("write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

/// Compiles `filter` and writes it to `path` (mode 0600, replaced if present). Returns false
/// for [`VmmFilter::Builtin`], which writes nothing: Firecracker then needs no flag.
pub fn write_filter_file(filter: &VmmFilter, path: &Path) -> Result<bool, SeccompFileError> {
    let programs = match filter {
        VmmFilter::Builtin => return Ok(false),
        VmmFilter::Json(json) => compile_firecracker_json(json)?,
        VmmFilter::Policy(policy) => FirecrackerFilters::uniform(policy).compile()?,
    };
    let bytes = encode_firecracker_bpf(&programs);
    write_private(path, &bytes).map_err(|source| SeccompFileError::Write {
        path: path.to_owned(),
        source,
    })?;
    Ok(true)
}

fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn firecracker_filters() -> std::path::PathBuf {
        crate::backend::firecracker::find_shared_file(
            "x86_64-unknown-linux-musl.json",
            &[env!("CARGO_MANIFEST_DIR").into()],
        )
        .expect("Firecracker's seccomp filters under shared/firecracker")
    }

    /// Reads back the thread names of the bincode layout Firecracker deserializes.
    fn threads_in(bytes: &[u8]) -> Vec<String> {
        let word = |at: usize| {
            usize::try_from(u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())).unwrap()
        };
        let mut at = 8;
        let mut names = Vec::new();
        for _ in 0..word(0) {
            let len = word(at);
            names.push(String::from_utf8(bytes[at + 8..at + 8 + len].to_vec()).unwrap());
            at += 8 + len;
            at += 8 + 8 * word(at);
        }
        assert_eq!(at, bytes.len(), "trailing bytes");
        names
    }

    #[test]
    fn firecrackers_own_filter_compiles_to_a_loadable_file() {
        let source = firecracker_filters();
        let json = std::fs::read_to_string(&source)
            .unwrap_or_else(|e| panic!("{}: {e} (shared/ sits beside the repo)", source.display()));
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("seccomp.bpf");
        assert!(write_filter_file(&VmmFilter::Json(json), &path).unwrap());
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(threads_in(&bytes), ["api", "vcpu", "vmm"]);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_single_action_policy_compiles_and_builtin_writes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("seccomp.bpf");
        let audit = hearth_seccomp::profile("audit").unwrap();
        assert!(write_filter_file(&VmmFilter::Policy(audit), &path).unwrap());
        assert_eq!(
            threads_in(&std::fs::read(&path).unwrap()),
            ["api", "vcpu", "vmm"]
        );
        let other = tmp.path().join("none.bpf");
        assert!(!write_filter_file(&VmmFilter::Builtin, &other).unwrap());
        assert!(!other.exists());
    }

    #[test]
    fn the_default_profile_is_refused_with_the_reason() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("seccomp.bpf");
        let default = hearth_seccomp::profile("default").unwrap();
        let err = write_filter_file(&VmmFilter::Policy(default), &path).unwrap_err();
        assert!(
            matches!(
                err,
                SeccompFileError::Render(RenderError::MixedActions { .. })
            ),
            "{err}"
        );
        assert!(!path.exists());
    }
}
