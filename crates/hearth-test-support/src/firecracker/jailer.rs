//! The one stand-in for Firecracker's `jailer`, shared by hearth-sandbox's backend tests and
//! hearth's CLI tests (the real jailer needs a real Firecracker, which can't run here).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Set by the fake jailer for the fake VMM: the jail's root, where the real jailer would chroot
/// (the fake VMM resolves its paths under it).
pub const JAIL_ROOT: &str = "HEARTH_TEST_FAKE_JAIL_ROOT";

/// What the fake jailer leaves behind for a test to check, besides running the VMM.
#[derive(Debug, Default, Clone, Copy)]
pub struct JailerTrace<'a> {
    /// Writes its argv here, one argument a line.
    pub args: Option<&'a Path>,
    /// Makes the VMM's cgroup directory (`firecracker/<id>`) under this root, as the real
    /// jailer does under `/sys/fs/cgroup`.
    pub cgroup_root: Option<&'a Path>,
}

/// Writes `dir/jailer`, a `jailer` standing in for Firecracker's: it reads the flags hearth
/// passes, joins the netns and runs the exec file with the jail root in [`JAIL_ROOT`], where
/// the real one would chroot. It stays root: the uid drop is the real jailer's, but the
/// ownership hearth prepares can still be checked.
pub fn fake_jailer(dir: &Path, trace: JailerTrace<'_>) -> PathBuf {
    let record_args = trace
        .args
        .map(|args| format!("printf '%s\\n' \"$@\" > '{}'\n", args.display()))
        .unwrap_or_default();
    let make_cgroup = trace
        .cgroup_root
        .map(|root| format!("mkdir -p '{}/firecracker/'\"$id\"\n", root.display()))
        .unwrap_or_default();
    let script = format!(
        r#"#!/bin/sh
{record_args}while [ $# -gt 0 ]; do
  case "$1" in
    --id) id=$2; shift 2;;
    --exec-file) exec_file=$2; shift 2;;
    --chroot-base-dir) base=$2; shift 2;;
    --netns) netns=$2; shift 2;;
    --) shift; break;;
    *) shift 2;;
  esac
done
root="$base/$(basename "$exec_file")/$id/root"
[ -d "$root" ] || {{ echo "no jail root $root" >&2; exit 1; }}
{make_cgroup}export {JAIL_ROOT}="$root"
exec nsenter --net="$netns" "$exec_file" --id="$id" "$@"
"#
    );
    let path = dir.join("jailer");
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}
