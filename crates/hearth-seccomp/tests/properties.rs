//! Property tests: for arbitrary valid policies every rendering is valid, compiles, is
//! deterministic and round-trips through the model; arbitrary text never panics the parsers.

use std::collections::BTreeSet;
use std::path::Path;

use hearth_seccomp::validate::syscall_names;
use hearth_seccomp::{
    compile_firecracker_json, harden_for_workload, render_bpf, render_firecracker, render_oci,
    validate, Action, ArgCondition, ArgWidth, CmpOp, FirecrackerError, FirecrackerFilters,
    HardenError, OciError, OciSeccomp, Rule, SeccompPolicy,
};
use proptest::prelude::*;

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        4 => Just(Action::Allow),
        2 => (0u32..=4095).prop_map(Action::Errno),
        1 => Just(Action::KillProcess),
        1 => Just(Action::KillThread),
        1 => Just(Action::Log),
        1 => Just(Action::Trap),
        2 => Just(Action::AuditDeny),
    ]
}

fn value(width: ArgWidth) -> BoxedStrategy<u64> {
    match width {
        ArgWidth::W32 => prop_oneof![0u64..16, 0..=u64::from(u32::MAX)].boxed(),
        ArgWidth::W64 => prop_oneof![0u64..16, any::<u64>()].boxed(),
    }
}

fn condition(index: u8) -> impl Strategy<Value = ArgCondition> {
    prop_oneof![Just(ArgWidth::W32), Just(ArgWidth::W64)].prop_flat_map(move |width| {
        let op = prop_oneof![
            Just(CmpOp::Eq),
            Just(CmpOp::Ne),
            Just(CmpOp::Lt),
            Just(CmpOp::Le),
            Just(CmpOp::Gt),
            Just(CmpOp::Ge),
            value(width).prop_map(CmpOp::MaskedEq),
        ];
        let comment = proptest::option::of("[a-z ]{0,8}");
        (op, value(width), comment).prop_map(move |(op, value, comment)| ArgCondition {
            index,
            width,
            op,
            value,
            comment,
        })
    })
}

/// Conditions on distinct arguments (what every target can express).
fn conditions() -> impl Strategy<Value = Vec<ArgCondition>> {
    proptest::collection::btree_set(0u8..6, 0..3)
        .prop_flat_map(|indexes| indexes.into_iter().map(condition).collect::<Vec<_>>())
}

fn rule(names: &'static [&'static str]) -> impl Strategy<Value = Rule> {
    let name = proptest::sample::select(names);
    let comment = proptest::option::of("[a-zA-Z0-9 ]{0,12}");
    (name, conditions(), action(), comment).prop_map(|(syscall, args, action, comment)| Rule {
        syscall: syscall.to_owned(),
        args,
        action,
        comment,
    })
}

/// Valid policies: rules that would make the policy invalid (overlaps) are dropped. A small
/// name pool makes several rules per call (and so overlaps and exclusions) common.
fn policy() -> impl Strategy<Value = SeccompPolicy> {
    let all: &'static [&'static str] = Box::leak(syscall_names().collect::<Vec<_>>().into());
    let few: &'static [&'static str] = &["read", "ioctl", "clone", "seccomp", "futex"];
    let rules = proptest::collection::vec(prop_oneof![rule(all), rule(few)], 0..14);
    (action(), rules).prop_map(|(default_action, candidates)| {
        let mut p = SeccompPolicy {
            default_action,
            rules: Vec::new(),
        };
        for r in candidates {
            p.rules.push(r);
            if validate(&p).is_err() {
                p.rules.pop();
            }
        }
        p
    })
}

/// The calls hardening guards, with the argument it checks (written out here rather than taken
/// from the crate, so a call dropped from the crate's list fails these tests).
const GUARDED: [(&str, usize); 11] = [
    ("chmod", 1),
    ("fchmod", 1),
    ("fchmodat", 2),
    ("open", 2),
    ("openat", 3),
    ("creat", 1),
    ("mkdir", 1),
    ("mkdirat", 2),
    ("mknod", 1),
    ("mknodat", 2),
    ("socket", 0),
];
const REFUSED: [&str; 5] = [
    "openat2",
    "fchmodat2",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
];

/// Valid policies whose rules are mostly for the calls hardening touches.
fn workload_policy() -> impl Strategy<Value = SeccompPolicy> {
    let names: &'static [&'static str] = &[
        "chmod",
        "fchmodat",
        "openat",
        "mknod",
        "socket",
        "openat2",
        "io_uring_setup",
        "read",
    ];
    let rules = proptest::collection::vec(rule(names), 0..10);
    (action(), rules).prop_map(|(default_action, candidates)| {
        let mut p = SeccompPolicy {
            default_action,
            rules: Vec::new(),
        };
        for r in candidates {
            p.rules.push(r);
            if validate(&p).is_err() {
                p.rules.pop();
            }
        }
        p
    })
}

/// `args` with the guarded argument's low 32 bits replaced: setuid/setgid bits from `bits`
/// (0..4) for a mode, AF_VSOCK (`bits != 0`) or a family other than it for `socket`.
fn guarded_args(call: &str, arg: usize, mut args: [u64; 6], bits: u64) -> [u64; 6] {
    let high = args[arg] & !u64::from(u32::MAX);
    args[arg] = if call == "socket" {
        let other = args[arg] & u64::from(u32::MAX);
        high | if bits != 0 {
            40
        } else if other == 40 {
            41
        } else {
            other
        }
    } else {
        (args[arg] & !0o6000) | bits << 10
    };
    args
}

/// Valid policies whose rules use one action besides the default (what Firecracker takes).
fn single_action_policy() -> impl Strategy<Value = SeccompPolicy> {
    (policy(), action()).prop_map(|(p, act)| {
        let mut out = SeccompPolicy {
            rules: Vec::new(),
            ..p.clone()
        };
        for r in p.rules {
            let action = if r.action == p.default_action {
                r.action
            } else {
                act
            };
            out.rules.push(Rule { action, ..r });
            if validate(&out).is_err() {
                out.rules.pop();
            }
        }
        out
    })
}

/// Valid policies without the 32-bit comparisons OCI refuses (those become 64-bit).
fn oci_policy() -> impl Strategy<Value = SeccompPolicy> {
    policy().prop_map(|p| {
        let mut out = SeccompPolicy {
            rules: Vec::new(),
            ..p.clone()
        };
        for mut r in p.rules {
            for c in &mut r.args {
                if !matches!(c.op, CmpOp::Eq | CmpOp::MaskedEq(_)) {
                    c.width = ArgWidth::W64;
                }
            }
            out.rules.push(r);
            if validate(&out).is_err() {
                out.rules.pop();
            }
        }
        out
    })
}

fn map_actions(p: &SeccompPolicy, f: impl Fn(Action) -> Action) -> SeccompPolicy {
    SeccompPolicy {
        default_action: f(p.default_action),
        rules: p
            .rules
            .iter()
            .map(|r| Rule {
                action: f(r.action),
                ..r.clone()
            })
            .collect(),
    }
}

/// The actions a single-filter target must express besides the default.
fn extra_actions(p: &SeccompPolicy) -> BTreeSet<Action> {
    let d = p.default_action.without_notify();
    p.rules
        .iter()
        .map(|r| r.action.without_notify())
        .filter(|a| *a != d)
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn policy_files_round_trip(p in policy()) {
        prop_assert_eq!(SeccompPolicy::from_json_str(&p.to_json_string()).unwrap(), p.clone());
        let toml = p.to_toml_string().unwrap();
        prop_assert_eq!(SeccompPolicy::from_toml_str(&toml).unwrap(), p);
    }

    #[test]
    fn bpf_compiles_and_is_deterministic(p in policy()) {
        let a = render_bpf(&p).unwrap();
        let b = render_bpf(&p).unwrap();
        prop_assert!(!a.programs().is_empty());
        prop_assert!(a.programs().iter().all(|prog| !prog.is_empty()));
        prop_assert_eq!(a.to_raw(), b.to_raw());
    }

    #[test]
    fn firecracker_json_compiles_and_round_trips(
        p in prop_oneof![policy(), single_action_policy()],
    ) {
        let json = match render_firecracker(&p) {
            Ok(json) => json,
            Err(FirecrackerError::MixedActions { .. }) => {
                prop_assert!(extra_actions(&p).len() > 1);
                return Ok(());
            }
            Err(e) => return Err(TestCaseError::fail(e.to_string())),
        };
        prop_assert!(extra_actions(&p).len() <= 1);
        serde_json::from_str::<serde_json::Value>(&json).unwrap();
        prop_assert_eq!(&render_firecracker(&p).unwrap(), &json);
        let bpf = compile_firecracker_json(&json).unwrap();
        let back = FirecrackerFilters::from_json_str(&json).unwrap();
        let expected = map_actions(&p, Action::without_notify).normalize();
        for thread in back.threads.values() {
            prop_assert_eq!(&thread.normalize(), &expected);
        }
        prop_assert_eq!(back.compile().unwrap(), bpf);
    }

    #[test]
    fn oci_json_round_trips(p in prop_oneof![policy(), oci_policy()], listen in any::<bool>()) {
        let listener = listen.then_some(Path::new("/run/hearth/l.sock"));
        let value = match render_oci(&p, listener) {
            Ok(v) => v,
            Err(OciError::Width32 { .. }) => {
                let narrow = |c: &ArgCondition| c.width == ArgWidth::W32
                    && !matches!(c.op, CmpOp::Eq | CmpOp::MaskedEq(_));
                prop_assert!(p.rules.iter().flat_map(|r| &r.args).any(narrow));
                return Ok(());
            }
            Err(OciError::NotifyRuntimeCall { .. }) => {
                prop_assert!(listen);
                return Ok(());
            }
            Err(e) => return Err(TestCaseError::fail(e.to_string())),
        };
        let text = serde_json::to_string(&value).unwrap();
        prop_assert_eq!(serde_json::to_string(&render_oci(&p, listener).unwrap()).unwrap(), text.clone());
        let oci: OciSeccomp = serde_json::from_str(&text).unwrap();
        let back = oci.to_policy().unwrap();
        validate(&back).unwrap();
        let expected = if listen { p.clone() } else { map_actions(&p, Action::without_notify) };
        prop_assert_eq!(back.normalize(), expected.normalize());
    }

    #[test]
    fn hardening_refuses_what_it_must_and_changes_nothing_else(
        p in workload_policy(),
        args in any::<[u64; 6]>(),
        bits in 0u64..4,
    ) {
        let h = match harden_for_workload(&p) {
            Ok(h) => h,
            Err(HardenError::ConditionedArgument { index, arg, .. }) => {
                prop_assert!(p.rules[index].args.iter().any(|c| c.index == arg));
                return Ok(());
            }
            Err(e) => return Err(TestCaseError::fail(e.to_string())),
        };
        validate(&h).unwrap();
        prop_assert_eq!(&harden_for_workload(&h).unwrap(), &h);
        for (call, arg) in GUARDED {
            let a = guarded_args(call, arg, args, bits);
            if bits == 0 {
                prop_assert_eq!(h.evaluate(call, &a), p.evaluate(call, &a), "{}", call);
            } else {
                prop_assert_eq!(h.evaluate(call, &a), Action::AuditDeny, "{}", call);
            }
        }
        for call in REFUSED {
            prop_assert!(!matches!(h.evaluate(call, &args), Action::Allow | Action::Log));
        }
        for call in ["read", "write", "clone"] {
            prop_assert_eq!(h.evaluate(call, &args), p.evaluate(call, &args));
        }
        render_bpf(&h).unwrap();
    }

    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        exercise(&text);
    }

    #[test]
    fn mutated_policies_never_panic(p in policy(), edits in proptest::collection::vec((any::<usize>(), any::<char>()), 1..4)) {
        for base in [p.to_json_string(), p.to_toml_string().unwrap()] {
            let mut chars: Vec<char> = base.chars().collect();
            for (pos, c) in &edits {
                if !chars.is_empty() {
                    let i = pos % chars.len();
                    chars[i] = *c;
                }
            }
            exercise(&chars.into_iter().collect::<String>());
        }
    }
}

/// Parses text every way hearth does and, when it parses, validates and renders it.
fn exercise(text: &str) {
    let parsed = [
        SeccompPolicy::from_json_str(text).ok(),
        SeccompPolicy::from_toml_str(text).ok(),
    ];
    for p in parsed.into_iter().flatten() {
        if validate(&p).is_ok() {
            let _ = render_bpf(&p);
            let _ = render_firecracker(&p);
            let _ = render_oci(&p, None);
        }
    }
    if let Ok(f) = FirecrackerFilters::from_json_str(text) {
        let _ = f.to_json();
    }
    let _ = serde_json::from_str::<OciSeccomp>(text).map(|o| o.to_policy());
}
