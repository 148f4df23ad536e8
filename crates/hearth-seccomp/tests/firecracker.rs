//! Firecracker rendering: Firecracker's own filter file round-trips to identical BPF.

use std::path::Path;

use hearth_seccomp::{
    compile_firecracker_json, encode_firecracker_bpf, profile, render_firecracker, Action,
    FirecrackerError, FirecrackerFilters, Rule, SeccompPolicy,
};

const FIRECRACKER_FILTERS: &str = "/work/shared/firecracker/x86_64-unknown-linux-musl.json";

fn firecracker_json() -> Option<String> {
    let path = Path::new(FIRECRACKER_FILTERS);
    // The file lives outside the repository (Apache-2.0, not copied in); skip where it is absent.
    path.exists()
        .then(|| std::fs::read_to_string(path).unwrap())
}

#[test]
fn firecrackers_own_filters_round_trip_to_identical_bpf() {
    let Some(original) = firecracker_json() else {
        eprintln!("skipped: {FIRECRACKER_FILTERS} not present");
        return;
    };
    let parsed = FirecrackerFilters::from_json_str(&original).unwrap();
    assert_eq!(
        parsed.threads.keys().collect::<Vec<_>>(),
        ["api", "vcpu", "vmm"]
    );
    let vmm = &parsed.threads["vmm"];
    assert_eq!(vmm.default_action, Action::Trap);
    assert!(vmm.rules.iter().any(|r| r.comment.is_some()));
    assert!(vmm
        .rules
        .iter()
        .flat_map(|r| &r.args)
        .any(|a| a.comment.is_some()));

    let rendered = parsed.to_json().unwrap();
    let before = compile_firecracker_json(&original).unwrap();
    let after = compile_firecracker_json(&rendered).unwrap();
    assert_eq!(before, after);
    assert_eq!(
        encode_firecracker_bpf(&before),
        encode_firecracker_bpf(&after)
    );
    // And the rendering is a fixed point.
    let again = FirecrackerFilters::from_json_str(&rendered).unwrap();
    assert_eq!(again, parsed);
    assert_eq!(again.to_json().unwrap(), rendered);
}

#[test]
fn single_action_profiles_render_and_compile() {
    let allowlist = SeccompPolicy {
        default_action: Action::Errno(1),
        rules: ["read", "write", "exit_group"]
            .iter()
            .map(|n| Rule::new(n, Action::Allow))
            .chain([Rule::new("mount", Action::AuditDeny)])
            .collect(),
    };
    for policy in [profile("audit").unwrap(), allowlist] {
        let json = render_firecracker(&policy).unwrap();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        for thread in ["vmm", "api", "vcpu"] {
            assert_eq!(value[thread]["filter_action"], serde_json::json!("allow"));
        }
        let map = compile_firecracker_json(&json).unwrap();
        assert_eq!(map.len(), 3);
    }
}

#[test]
fn default_and_strict_need_two_actions_and_say_so() {
    // clone3 must fail with ENOSYS (libc then falls back to clone) while the rest gets EPERM.
    for name in ["default", "strict"] {
        let err = render_firecracker(&profile(name).unwrap()).unwrap_err();
        let FirecrackerError::MixedActions { actions, .. } = err else {
            panic!("{name}: {err}");
        };
        assert_eq!(actions, [Action::Allow, Action::Errno(38)]);
    }
}

#[test]
fn mixed_actions_are_refused_with_the_actions_named() {
    let policy = SeccompPolicy {
        default_action: Action::Errno(1),
        rules: vec![
            Rule::new("read", Action::Allow),
            Rule::new("ptrace", Action::KillProcess),
        ],
    };
    let err = render_firecracker(&policy).unwrap_err();
    assert!(
        matches!(err, FirecrackerError::MixedActions { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("KillProcess"), "{err}");
}

#[test]
fn binary_file_layout_matches_firecrackers_bincode() {
    let map =
        compile_firecracker_json(&render_firecracker(&profile("audit").unwrap()).unwrap()).unwrap();
    let bytes = encode_firecracker_bpf(&map);
    assert_eq!(u64::from_le_bytes(bytes[..8].try_into().unwrap()), 3);
    assert_eq!(u64::from_le_bytes(bytes[8..16].try_into().unwrap()), 3);
    assert_eq!(&bytes[16..19], b"api");
    let count = u64::from_le_bytes(bytes[19..27].try_into().unwrap());
    assert_eq!(count, map["api"].len() as u64);
    let first = &map["api"][0];
    assert_eq!(u16::from_le_bytes([bytes[27], bytes[28]]), first.code);
    let per_thread: usize = map.iter().map(|(k, p)| 16 + k.len() + 8 * p.len()).sum();
    assert_eq!(bytes.len(), 8 + per_thread);
}
