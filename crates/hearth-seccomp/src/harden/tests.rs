use super::*;
use crate::policy::EPERM;
use crate::profiles::{profile, PROFILE_NAMES};

/// The arguments of a mode-taking call with `mode` in its mode argument.
fn with_mode(arg: u8, mode: u64) -> [u64; 6] {
    let mut args = [3, 0, 0, 0, 0, 0];
    args[usize::from(arg)] = mode;
    args
}

fn hardened(name: &str) -> SeccompPolicy {
    harden_for_workload(&profile(name).unwrap()).unwrap()
}

fn chmod_actions(p: &SeccompPolicy) -> [Action; 3] {
    [0o4755, 0o2755, 0o755].map(|mode| p.evaluate("chmod", &with_mode(1, mode)))
}

#[test]
fn every_profile_hardened_refuses_setuid_and_setgid_chmod_and_allows_the_rest() {
    for name in PROFILE_NAMES {
        let p = hardened(name);
        validate(&p).unwrap_or_else(|e| panic!("{name}: {e}"));
        let [suid, sgid, plain] = chmod_actions(&p);
        assert_eq!(
            (suid, sgid, plain),
            (Action::AuditDeny, Action::AuditDeny, Action::Allow)
        );
        for (call, arg) in MODE_ARGUMENTS {
            let plain = profile(name)
                .unwrap()
                .evaluate(call, &with_mode(arg, 0o644));
            assert_eq!(
                p.evaluate(call, &with_mode(arg, 0o644)),
                plain,
                "{name} {call}"
            );
            // Bits the kernel ignores (above 16) don't hide the setuid bit.
            for mode in [0o4755, 0o2700, 0o6777, 0x1_0000 | 0o4000, 1 << 40 | 0o2000] {
                let got = p.evaluate(call, &with_mode(arg, mode));
                assert_eq!(got, Action::AuditDeny, "{name} {call} {mode:#o}");
            }
        }
    }
}

#[test]
fn the_audit_profile_hardened_refuses_only_the_mandatory_calls() {
    let plain = profile("audit").unwrap();
    assert_eq!(chmod_actions(&plain), [Action::Allow; 3]);
    let p = hardened("audit");
    assert_eq!(p.evaluate("mount", &[0; 6]), Action::Log);
    assert_eq!(
        p.evaluate("socket", &[40, 1, 0, 0, 0, 0]),
        Action::AuditDeny
    );
    assert_eq!(p.evaluate("socket", &[2, 1, 0, 0, 0, 0]), Action::Allow);
    assert_eq!(p.evaluate("openat2", &[0; 6]), Action::Errno(ENOSYS));
    assert_eq!(p.evaluate("fchmodat2", &[0; 6]), Action::Errno(ENOSYS));
    assert_eq!(plain.evaluate("io_uring_setup", &[0; 6]), Action::Log);
    for call in ["io_uring_setup", "io_uring_enter", "io_uring_register"] {
        assert_eq!(p.evaluate(call, &[0; 6]), Action::AuditDeny, "{call}");
    }
}

#[test]
fn a_user_policy_allowing_chmod_unconditionally_keeps_it_for_plain_modes() {
    let user = SeccompPolicy {
        default_action: Action::Errno(EPERM),
        rules: vec![
            Rule::new("chmod", Action::Allow),
            Rule::new("read", Action::Allow),
        ],
    };
    let p = harden_for_workload(&user).unwrap();
    let [suid, sgid, plain] = chmod_actions(&p);
    assert_eq!(
        (suid, sgid, plain),
        (Action::AuditDeny, Action::AuditDeny, Action::Allow)
    );
    // fchmod has no rule: plain modes keep the default, mode bits are audited.
    assert_eq!(
        p.evaluate("fchmod", &with_mode(1, 0o755)),
        Action::Errno(EPERM)
    );
    assert_eq!(
        p.evaluate("fchmod", &with_mode(1, 0o4755)),
        Action::AuditDeny
    );
    assert_eq!(p.evaluate("read", &[0; 6]), Action::Allow);
    // The allow rule gained the exclusion and kept its place and action.
    assert_eq!(p.rules[0].syscall, "chmod");
    assert_eq!(p.rules[0].action, Action::Allow);
    let exclusion = ArgCondition::new(1, ArgWidth::W32, CmpOp::MaskedEq(0o6000), 0);
    assert_eq!(p.rules[0].args, [exclusion]);
}

#[test]
fn a_default_allow_policy_is_hardened_too() {
    let user = SeccompPolicy {
        default_action: Action::Allow,
        rules: Vec::new(),
    };
    let p = harden_for_workload(&user).unwrap();
    let [suid, sgid, plain] = chmod_actions(&p);
    assert_eq!(
        (suid, sgid, plain),
        (Action::AuditDeny, Action::AuditDeny, Action::Allow)
    );
    assert_eq!(
        p.evaluate("socket", &[40, 1, 0, 0, 0, 0]),
        Action::AuditDeny
    );
    assert_eq!(
        p.evaluate("socket", &[40 | 1 << 32, 1, 0, 0, 0, 0]),
        Action::AuditDeny
    );
    assert_eq!(p.evaluate("socket", &[1, 1, 0, 0, 0, 0]), Action::Allow);
    assert_eq!(p.evaluate("openat2", &[0; 6]), Action::Errno(ENOSYS));
    assert_eq!(p.evaluate("io_uring_enter", &[0; 6]), Action::AuditDeny);
    assert_eq!(p.evaluate("getpid", &[0; 6]), Action::Allow);
}

#[test]
fn io_uring_allows_become_denials_and_existing_refusals_stay() {
    let user = SeccompPolicy {
        default_action: Action::Allow,
        rules: vec![
            Rule::new("io_uring_setup", Action::Allow),
            Rule::with_args(
                "io_uring_enter",
                Action::Log,
                vec![ArgCondition::new(0, ArgWidth::W32, CmpOp::Eq, 3)],
            ),
            Rule::new("io_uring_register", Action::KillProcess),
            Rule::new("openat2", Action::Trap),
        ],
    };
    let p = harden_for_workload(&user).unwrap();
    assert_eq!(p.evaluate("io_uring_setup", &[0; 6]), Action::AuditDeny);
    assert_eq!(
        p.evaluate("io_uring_enter", &[3, 0, 0, 0, 0, 0]),
        Action::AuditDeny
    );
    assert_eq!(
        p.evaluate("io_uring_register", &[0; 6]),
        Action::KillProcess
    );
    assert_eq!(p.evaluate("openat2", &[0; 6]), Action::Trap);
    assert_eq!(p.evaluate("fchmodat2", &[0; 6]), Action::Errno(ENOSYS));
    assert_eq!(
        p.rules
            .iter()
            .filter(|r| r.syscall.starts_with("io_uring"))
            .count(),
        3
    );
    let default = hardened("default");
    assert_eq!(
        default.evaluate("io_uring_setup", &[0; 6]),
        Action::AuditDeny
    );
}

#[test]
fn hardening_is_idempotent() {
    let users = [
        SeccompPolicy {
            default_action: Action::Allow,
            rules: vec![
                Rule::new("socket", Action::Log),
                Rule::new("mkdir", Action::Allow),
            ],
        },
        SeccompPolicy {
            default_action: Action::KillProcess,
            rules: vec![
                Rule::with_args(
                    "openat",
                    Action::Allow,
                    vec![ArgCondition::new(
                        2,
                        ArgWidth::W32,
                        CmpOp::MaskedEq(0o100),
                        0,
                    )],
                ),
                Rule::with_args(
                    "openat",
                    Action::Errno(13),
                    vec![ArgCondition::new(
                        2,
                        ArgWidth::W32,
                        CmpOp::MaskedEq(0o100),
                        0o100,
                    )],
                ),
            ],
        },
    ];
    let profiles = PROFILE_NAMES.iter().map(|n| profile(n).unwrap());
    for p in profiles.chain(users) {
        let once = harden_for_workload(&p).unwrap();
        let twice = harden_for_workload(&once).unwrap();
        assert_eq!(once, twice);
    }
}

#[test]
fn a_rule_conditioning_the_mode_is_refused_unless_it_excludes_the_bits() {
    let no_setuid = ArgCondition::new(1, ArgWidth::W32, CmpOp::MaskedEq(0o4000), 0);
    let user = SeccompPolicy {
        default_action: Action::Errno(EPERM),
        rules: vec![
            Rule::new("read", Action::Allow),
            Rule::with_args("chmod", Action::Allow, vec![no_setuid]),
        ],
    };
    let err = harden_for_workload(&user).unwrap_err();
    assert!(
        matches!(
            &err,
            HardenError::ConditionedArgument { index: 1, arg: 1, syscall, .. } if syscall == "chmod"
        ),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.starts_with("rule 1 (chmod): its condition on argument 1"),
        "{text}"
    );

    // Docker writes `socket` as a 64-bit `ne 40`, which lets `40 | 1 << 32` through.
    let docker = SeccompPolicy {
        default_action: Action::Errno(EPERM),
        rules: vec![Rule::with_args(
            "socket",
            Action::Allow,
            vec![ArgCondition::new(0, ArgWidth::W64, CmpOp::Ne, 40)],
        )],
    };
    let err = harden_for_workload(&docker).unwrap_err();
    assert!(
        matches!(
            err,
            HardenError::ConditionedArgument {
                what: "AF_VSOCK",
                ..
            }
        ),
        "{err}"
    );

    // Exclusive conditions stay; a rule that only matches refused modes goes.
    let exact = ArgCondition::new(1, ArgWidth::W32, CmpOp::Eq, 0o755);
    let setuid = ArgCondition::new(1, ArgWidth::W64, CmpOp::Eq, 0o4755);
    let user = SeccompPolicy {
        default_action: Action::Errno(EPERM),
        rules: vec![
            Rule::with_args("chmod", Action::Allow, vec![exact.clone()]),
            Rule::with_args("chmod", Action::Log, vec![setuid]),
        ],
    };
    let p = harden_for_workload(&user).unwrap();
    assert_eq!(p.rules[0].args, [exact]);
    assert!(p.rules.iter().all(|r| r.action != Action::Log));
    assert_eq!(
        p.evaluate("chmod", &with_mode(1, 0o4755)),
        Action::AuditDeny
    );
    assert_eq!(p.evaluate("chmod", &with_mode(1, 0o755)), Action::Allow);
    assert_eq!(
        p.evaluate("chmod", &with_mode(1, 0o700)),
        Action::Errno(EPERM)
    );
}

#[test]
fn an_invalid_policy_is_refused_before_merging() {
    let bad = SeccompPolicy {
        default_action: Action::Allow,
        rules: vec![Rule::new("chmodd", Action::Allow)],
    };
    let err = harden_for_workload(&bad).unwrap_err();
    assert!(matches!(err, HardenError::Invalid(_)), "{err}");
    assert!(err.to_string().contains("rule 0 (chmodd)"), "{err}");
}

#[test]
fn all_but_32_matches_every_other_value_exactly_once() {
    let policy_of = |conds: Vec<ArgCondition>| SeccompPolicy {
        default_action: Action::Errno(EPERM),
        rules: conds
            .into_iter()
            .map(|c| Rule::with_args("socket", Action::Allow, vec![c]))
            .collect(),
    };
    for value in [0, 1, 40, 0x8000_0000, u32::MAX] {
        let conds = all_but_32(0, value);
        assert_eq!(conds.len(), 32);
        let p = policy_of(conds.clone());
        let flips = (0..32).map(|b| u64::from(value ^ 1 << b));
        let probes: Vec<u64> = flips
            .chain([0, 1, 41, 1 << 31, u64::from(u32::MAX)])
            .collect();
        for probe in probes {
            let args = [probe | 7 << 32, 0, 0, 0, 0, 0];
            let matching = conds.iter().filter(|c| {
                let one = policy_of(vec![(*c).clone()]);
                one.evaluate("socket", &args) == Action::Allow
            });
            let expected = usize::from(probe != u64::from(value));
            assert_eq!(matching.count(), expected, "{value:#x} {probe:#x}");
            let want = if expected == 1 {
                Action::Allow
            } else {
                Action::Errno(EPERM)
            };
            assert_eq!(p.evaluate("socket", &args), want);
        }
    }
}

#[test]
fn load_workload_policy_hardens_names_and_files() {
    let p = load_workload_policy("audit").unwrap();
    assert_eq!(p, hardened("audit"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("user.toml");
    let text = "default_action = \"allow\"\n[[rules]]\nsyscall = \"chmod\"\naction = \"allow\"\n\
                args = [{ index = 1, op = \"gt\", value = 4 }]\n";
    std::fs::write(&path, text).unwrap();
    let err = load_workload_policy(path.to_str().unwrap()).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("user.toml") && text.contains("rule 0 (chmod)"),
        "{text}"
    );
    std::fs::write(&path, "default_action = \"allow\"\n").unwrap();
    let p = load_workload_policy(path.to_str().unwrap()).unwrap();
    assert_eq!(
        p.evaluate("chmod", &with_mode(1, 0o4755)),
        Action::AuditDeny
    );
}
