//! The user-notify rendering `hearth-guest` installs in microVMs: where the notification lands
//! and which policies it refuses. (The listener itself is exercised in hearth-guest's tests.)

use hearth_seccomp::{
    profile, raw_program_notifies, render_bpf, render_bpf_notify, Action, BpfError, Rule,
};

fn notifying(filters: &hearth_seccomp::BpfFilters) -> usize {
    filters
        .to_raw()
        .iter()
        .filter(|p| raw_program_notifies(p))
        .count()
}

#[test]
fn every_profile_has_exactly_one_listener_program_when_it_audits() {
    for name in hearth_seccomp::PROFILE_NAMES {
        let policy = profile(name).unwrap();
        let audits = policy.default_action == Action::AuditDeny
            || policy.rules.iter().any(|r| r.action == Action::AuditDeny);
        let notify = render_bpf_notify(&policy).unwrap();
        assert_eq!(notifying(&notify), usize::from(audits), "profile {name}");
        assert_eq!(
            notifying(&render_bpf(&policy).unwrap()),
            0,
            "plain rendering of {name} must never notify"
        );
    }
}

#[test]
fn audit_rules_and_other_actions_keep_one_listener_program() {
    // Default errno(ENOSYS), audited mount, killed getppid, allowed read: three programs, of
    // which only the audit_deny group notifies.
    let mut policy = profile("default").unwrap();
    policy.default_action = Action::Errno(38);
    policy
        .rules
        .retain(|r| r.syscall != "getppid" && r.syscall != "mount");
    policy.rules.push(Rule::new("getppid", Action::KillProcess));
    policy.rules.push(Rule::new("mount", Action::AuditDeny));
    let filters = render_bpf_notify(&policy).unwrap();
    assert!(
        filters.programs().len() >= 3,
        "{}",
        filters.programs().len()
    );
    assert_eq!(notifying(&filters), 1);
    // With an audited default, the audited rules fold into the default program.
    policy.default_action = Action::AuditDeny;
    assert_eq!(notifying(&render_bpf_notify(&policy).unwrap()), 1);
}

#[test]
fn refuses_a_policy_that_audits_the_handoff_calls() {
    for call in ["sendmsg", "execve"] {
        let mut policy = profile("default").unwrap();
        policy.rules.retain(|r| r.syscall != call);
        policy.rules.push(Rule::new(call, Action::AuditDeny));
        let err = render_bpf_notify(&policy).unwrap_err();
        assert!(
            matches!(err, BpfError::NotifyHandoff { syscall } if syscall == call),
            "{err}"
        );
        assert!(err.to_string().contains(call), "{err}");
        // The plain rendering has no handoff and takes it.
        render_bpf(&policy).unwrap();
    }
}
