//! Reading the sandbox cgroup's OOM-kill counter, to tell an OOM kill from any other SIGKILL.
//!
//! The kernel does not say why a process got SIGKILL. If the cgroup's `oom_kill` counter rose
//! while an exec ran and the exec died of SIGKILL, the OOM killer is the likely culprit. Inside a
//! cgroup namespace the sandbox's own cgroup is the root of `/sys/fs/cgroup`.

use std::path::Path;

/// `oom_kill` of the cgroup mounted at `root` (v2 `memory.events`, else v1
/// `memory/memory.oom_control`); `None` when neither exists or has the key, i.e. unknown.
pub fn oom_kills(root: &Path) -> Option<u64> {
    ["memory.events", "memory/memory.oom_control"]
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
