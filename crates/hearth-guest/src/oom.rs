//! Reading the sandbox cgroup's OOM-kill counter, to tell an OOM kill from any other SIGKILL.
//!
//! The kernel does not say why a process got SIGKILL. If the cgroup's `oom_kill` counter rose
//! while an exec ran and the exec died of SIGKILL, the OOM killer is the likely culprit. Inside a
//! cgroup namespace the sandbox's own cgroup is the root of `/sys/fs/cgroup`.

use std::path::Path;

/// hearth-guest's own `oom_score_adj`: never chosen by the OOM killer, so an OOM in the
/// sandbox kills the workload's process and hearth-guest lives to report it.
pub const GUEST_OOM_SCORE_ADJ: i32 = -1000;
/// What every process hearth-guest starts gets instead: preferred victims.
pub const WORKLOAD_OOM_SCORE_ADJ: i32 = 500;

/// Makes this process unkillable by the OOM killer (microVMs, where PID 1 is root; in an OCI
/// sandbox nothing can lower a score, and the workload's own cgroup protects the guest).
pub fn protect_self() {
    if let Err(err) = std::fs::write("/proc/self/oom_score_adj", GUEST_OOM_SCORE_ADJ.to_string()) {
        tracing::warn!(%err, "cannot protect hearth-guest from the OOM killer");
    }
}

/// Gives a just-started child the workload's score, above hearth-guest's own (children inherit
/// the guest's, which in a microVM is -1000: unkillable). Written from here rather than
/// between fork and exec, which would cost the `posix_spawn` fast path, so the child runs its
/// first instructions with the guest's score.
pub fn make_killable(pid: u32) {
    let path = format!("/proc/{pid}/oom_score_adj");
    if let Err(err) = std::fs::write(&path, WORKLOAD_OOM_SCORE_ADJ.to_string()) {
        // The child may already be gone; anything else leaves it protected, which the log says.
        tracing::debug!(pid, %err, "cannot set the child's oom_score_adj");
    }
}

/// v1's workload cgroup, whose OOM counter v1 does not add up into its parent's.
const V1_WORKLOAD_OOM_CONTROL: &str = "memory/workload/memory.oom_control";

/// `oom_kill` of the cgroup mounted at `root` (v2 `memory.events`, else v1
/// `memory/memory.oom_control`, the workload cgroup's when there is one); `None` when none
/// exists or has the key, i.e. unknown.
pub fn oom_kills(root: &Path) -> Option<u64> {
    [
        "memory.events",
        V1_WORKLOAD_OOM_CONTROL,
        "memory/memory.oom_control",
    ]
    .iter()
    .find_map(|file| std::fs::read_to_string(root.join(file)).ok())
    .and_then(|text| parse_counter(&text, "oom_kill"))
}

fn parse_counter(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (name, value) = line.split_once(' ')?;
        (name == key).then(|| value.trim().parse().ok()).flatten()
    })
}

/// Whether the counter rose between `before` and `after`; unknown counts as no.
pub fn rose(before: Option<u64>, after: Option<u64>) -> bool {
    matches!((before, after), (Some(b), Some(a)) if a > b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_v2_then_v1_and_treats_missing_as_unknown() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(oom_kills(dir.path()), None);

        std::fs::create_dir(dir.path().join("memory")).unwrap();
        std::fs::write(
            dir.path().join("memory/memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 4\n",
        )
        .unwrap();
        assert_eq!(oom_kills(dir.path()), Some(4));

        std::fs::write(
            dir.path().join("memory.events"),
            "low 0\nhigh 0\nmax 3\noom 2\noom_kill 1\noom_group_kill 0\n",
        )
        .unwrap();
        assert_eq!(oom_kills(dir.path()), Some(1), "v2 wins when both exist");
    }

    #[test]
    fn only_a_known_rise_counts() {
        assert!(rose(Some(1), Some(2)));
        assert!(!rose(Some(2), Some(2)));
        assert!(!rose(None, Some(2)));
        assert!(!rose(Some(1), None));
    }
}
