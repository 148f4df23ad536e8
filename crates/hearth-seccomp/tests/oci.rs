//! OCI rendering: shape of `linux.seccomp`, notify handling and refusals.

use std::path::Path;

use hearth_seccomp::policy::EPERM;
use hearth_seccomp::{
    profile, render_oci, Action, ArgCondition, ArgWidth, CmpOp, OciError, OciSeccomp, Rule,
    SeccompPolicy,
};
use serde_json::json;

fn entry_for<'a>(value: &'a serde_json::Value, name: &str) -> Vec<&'a serde_json::Value> {
    value["syscalls"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["names"].as_array().unwrap().contains(&json!(name)))
        .collect()
}

#[test]
fn default_profile_with_a_listener_notifies_on_audited_calls() {
    let listener = Path::new("/run/hearth/seccomp.sock");
    let v = render_oci(&profile("default").unwrap(), Some(listener)).unwrap();
    assert_eq!(v["defaultAction"], json!("SCMP_ACT_ERRNO"));
    assert_eq!(v["defaultErrnoRet"], json!(1));
    assert_eq!(v["listenerPath"], json!("/run/hearth/seccomp.sock"));
    assert_eq!(
        v["architectures"],
        json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"])
    );
    let mount = entry_for(&v, "mount");
    assert_eq!(mount.len(), 1);
    assert_eq!(mount[0]["action"], json!("SCMP_ACT_NOTIFY"));
    for name in ["write", "execve", "read"] {
        assert_eq!(
            entry_for(&v, name)[0]["action"],
            json!("SCMP_ACT_ALLOW"),
            "{name}"
        );
    }
    let clone = entry_for(&v, "clone");
    let allow = clone
        .iter()
        .find(|e| e["action"] == json!("SCMP_ACT_ALLOW"))
        .unwrap();
    assert_eq!(
        allow["args"],
        json!([{"index": 0, "value": 0x7e02_0000u64, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}])
    );
    let personality = entry_for(&v, "personality");
    assert_eq!(personality[0]["args"][0]["value"], json!(0xffff_ffffu64));
}

#[test]
fn without_a_listener_audited_calls_fail_with_eperm() {
    let v = render_oci(&profile("default").unwrap(), None).unwrap();
    assert!(v.get("listenerPath").is_none());
    // audit_deny becomes the default action itself, so those rules disappear.
    assert!(entry_for(&v, "mount").is_empty());
    let text = v.to_string();
    assert!(!text.contains("SCMP_ACT_NOTIFY"));
}

#[test]
fn what_oci_cannot_say_exactly_is_refused() {
    let cond32 = ArgCondition::new(1, ArgWidth::W32, CmpOp::Gt, 4);
    let p = SeccompPolicy {
        default_action: Action::Allow,
        rules: vec![Rule::with_args("ioctl", Action::Errno(EPERM), vec![cond32])],
    };
    assert!(matches!(
        render_oci(&p, None),
        Err(OciError::Width32 { index: 0, .. })
    ));

    let twice = vec![
        ArgCondition::new(0, ArgWidth::W64, CmpOp::Ne, 1),
        ArgCondition::new(0, ArgWidth::W64, CmpOp::Ne, 2),
    ];
    let p = SeccompPolicy {
        default_action: Action::Allow,
        rules: vec![Rule::with_args("kill", Action::Errno(EPERM), twice)],
    };
    assert!(matches!(
        render_oci(&p, None),
        Err(OciError::SameArgument { arg: 0, .. })
    ));

    let p = SeccompPolicy {
        default_action: Action::Allow,
        rules: vec![Rule::new("write", Action::AuditDeny)],
    };
    assert!(render_oci(&p, None).is_ok());
    let err = render_oci(&p, Some(Path::new("/l"))).unwrap_err();
    assert!(matches!(err, OciError::NotifyRuntimeCall { .. }), "{err}");
}

#[test]
fn rendering_parses_back_to_the_same_meaning() {
    for name in ["default", "strict", "audit"] {
        let p = profile(name).unwrap();
        let listener = Some(Path::new("/l"));
        let oci: OciSeccomp = serde_json::from_value(render_oci(&p, listener).unwrap()).unwrap();
        assert_eq!(
            oci.to_policy().unwrap().normalize(),
            p.normalize(),
            "{name}"
        );
    }
}

#[test]
fn conditions_on_calls_i386_multiplexes_leave_i386_out() {
    let all = json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]);
    let without_i386 = json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X32"]);
    let family = |f| vec![ArgCondition::new(0, ArgWidth::W32, CmpOp::Eq, f)];
    let policy = |rules| SeccompPolicy {
        default_action: Action::Errno(EPERM),
        rules,
    };
    // Unconditional rules on multiplexed calls, and conditions on other calls, keep i386.
    let plain = policy(vec![
        Rule::new("socket", Action::Allow),
        Rule::new("shmget", Action::Allow),
        Rule::with_args("personality", Action::Allow, family(8)),
    ]);
    assert_eq!(render_oci(&plain, None).unwrap()["architectures"], all);
    // A socket family allowlist would allow every family through i386's socketcall.
    let families = policy(vec![Rule::with_args("socket", Action::Allow, family(2))]);
    assert_eq!(
        render_oci(&families, None).unwrap()["architectures"],
        without_i386
    );
    let ipc = policy(vec![Rule::with_args(
        "shmctl",
        Action::AuditDeny,
        family(0),
    )]);
    let listener = Some(Path::new("/l"));
    assert_eq!(
        render_oci(&ipc, listener).unwrap()["architectures"],
        without_i386
    );
    // A conditional rule that repeats the default is left out, so it changes nothing.
    let noop = policy(vec![Rule::with_args(
        "socket",
        Action::Errno(EPERM),
        family(40),
    )]);
    assert_eq!(render_oci(&noop, None).unwrap()["architectures"], all);
    assert_eq!(
        render_oci(&profile("default").unwrap(), listener).unwrap()["architectures"],
        all
    );
    let strict = render_oci(&profile("strict").unwrap(), None).unwrap();
    assert_eq!(strict["architectures"], without_i386);
}
