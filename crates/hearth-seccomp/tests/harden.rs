//! Hardened policies render for every workload target: OCI (with and without a listener, and
//! back to the same meaning) and BPF (errno and notify forms).

use std::path::Path;

use hearth_seccomp::{
    harden_for_workload, profile, render_bpf, render_bpf_notify, render_oci, Action, OciSeccomp,
    SeccompPolicy, PROFILE_NAMES,
};
use serde_json::json;

fn hardened(name: &str) -> SeccompPolicy {
    harden_for_workload(&profile(name).unwrap()).unwrap()
}

/// The OCI entries for `name` with their args, as (action, args) pairs.
fn entries(oci: &serde_json::Value, name: &str) -> Vec<(String, serde_json::Value)> {
    oci["syscalls"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["names"].as_array().unwrap().contains(&json!(name)))
        .map(|s| (s["action"].as_str().unwrap().to_owned(), s["args"].clone()))
        .collect()
}

#[test]
fn hardened_profiles_render_to_oci_with_the_same_meaning() {
    let listener = Path::new("/run/hearth/seccomp.sock");
    for name in PROFILE_NAMES {
        let p = hardened(name);
        for l in [None, Some(listener)] {
            let value = render_oci(&p, l).unwrap_or_else(|e| panic!("{name}: {e}"));
            let oci: OciSeccomp = serde_json::from_value(value).unwrap();
            let expected = match l {
                Some(_) => p.clone(),
                None => map_without_notify(&p),
            };
            assert_eq!(
                oci.to_policy().unwrap().normalize(),
                expected.normalize(),
                "{name}"
            );
        }
    }
    // With a listener, setuid chmod notifies hearth; plain chmod is allowed with the exclusion.
    let v = render_oci(&hardened("audit"), Some(listener)).unwrap();
    let chmod = entries(&v, "chmod");
    let mask = |m: u64, v: u64| json!([{"index": 1, "value": m, "valueTwo": v, "op": "SCMP_CMP_MASKED_EQ"}]);
    assert!(
        chmod.contains(&("SCMP_ACT_ALLOW".into(), mask(0o6000, 0))),
        "{chmod:?}"
    );
    assert!(
        chmod.contains(&("SCMP_ACT_NOTIFY".into(), mask(0o4000, 0o4000))),
        "{chmod:?}"
    );
    assert!(
        chmod.contains(&("SCMP_ACT_NOTIFY".into(), mask(0o2000, 0o2000))),
        "{chmod:?}"
    );
    let vsock =
        json!([{"index": 0, "value": 0xffff_ffffu64, "valueTwo": 40, "op": "SCMP_CMP_MASKED_EQ"}]);
    assert!(entries(&v, "socket").contains(&("SCMP_ACT_NOTIFY".into(), vsock)));
    // i386's socketcall can't see the family: i386 is left out rather than let AF_VSOCK through.
    for name in PROFILE_NAMES {
        for l in [None, Some(listener)] {
            let v = render_oci(&hardened(name), l).unwrap();
            let archs = json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X32"]);
            assert_eq!(v["architectures"], archs, "{name}");
        }
    }
}

fn map_without_notify(p: &SeccompPolicy) -> SeccompPolicy {
    let mut out = p.clone();
    out.default_action = out.default_action.without_notify();
    for r in &mut out.rules {
        r.action = r.action.without_notify();
    }
    out
}

#[test]
fn hardened_profiles_compile_to_bpf_in_both_forms() {
    for name in PROFILE_NAMES {
        let p = hardened(name);
        let errno = render_bpf(&p).unwrap_or_else(|e| panic!("{name}: {e}"));
        let notify = render_bpf_notify(&p).unwrap_or_else(|e| panic!("{name}: {e}"));
        for filters in [&errno, &notify] {
            // A filter holds at most 4096 instructions (BPF_MAXINSNS).
            assert!(filters.programs().iter().all(|prog| prog.len() <= 4096));
        }
        // Only the notify form needs a listener.
        let notifies = |f: &hearth_seccomp::BpfFilters| {
            f.to_raw()
                .iter()
                .any(|raw| hearth_seccomp::raw_program_notifies(raw))
        };
        assert!(!notifies(&errno), "{name}");
        assert!(notifies(&notify), "{name}");
    }
    // The hardened audit profile refuses with two errnos besides logging: EPERM and ENOSYS.
    let audit = render_bpf(&hardened("audit")).unwrap();
    assert_eq!(audit.programs().len(), 3);
    assert_eq!(hardened("audit").evaluate("clone3", &[0; 6]), Action::Log);
}
