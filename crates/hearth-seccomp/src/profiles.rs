//! The built-in profiles: `default`, `strict` and `audit`.
//!
//! - `default`: a container allowlist in the spirit of Docker's default profile. Anything not
//!   listed fails with `EPERM`; the calls that matter for escaping a sandbox (namespaces, mounts,
//!   tracing, kernel keyring, BPF, modules, ...) are listed explicitly as `audit_deny`, so hearth
//!   records every attempt. `clone` is allowed without namespace flags; `personality` only with
//!   the values Docker allows; `clone3` fails with `ENOSYS` so libc falls back to `clone`, whose
//!   flags a filter can inspect (clone3 passes them in memory).
//! - `strict`: what agent tools need (a shell, python, coreutils, git, sockets to the gateway)
//!   and little else, with the same audited denials.
//! - `audit`: `default` with every refusal turned into `log`: nothing is refused, and the kernel
//!   logs (`SECCOMP_RET_LOG`, audit record type 1326 / `dmesg`) each call `default` would refuse.
//!   Use it to find out what a workload needs before tightening it.
//!
//! These are the profiles as written, and what the VMM's own filter (Firecracker's threads on
//! the host) uses. What a backend should apply to a workload is a profile hardened by
//! [`crate::harden::harden_for_workload`], which adds refusals no profile or policy file can opt
//! out of: setuid/setgid mode bits, `socket(AF_VSOCK)` (both `audit_deny`), `openat2` and
//! `fchmodat2` (`ENOSYS`), `io_uring`. So the hardened `audit` refuses those too, and the
//! hardened `default` records AF_VSOCK attempts that the profile as written allows.
//!
//! AF_VSOCK is refused by the hardening rather than written into `default`: an audited denial
//! next to the allowed families needs `socket` rules with two actions, which the OCI rendering
//! can only load without the i386 ABI (see [`crate::render::oci`]), and `default` as written
//! keeps it. (`strict` allows `AF_UNIX`, `AF_INET`, `AF_INET6` and `AF_NETLINK` only, so AF_VSOCK
//! already falls to its default `EPERM` there.)

use crate::policy::{Action, ArgCondition, ArgWidth, CmpOp, Rule, SeccompPolicy, EPERM};

/// The names [`profile`] knows, in the order the CLI lists them.
pub const PROFILE_NAMES: &[&str] = &["default", "strict", "audit"];

/// A built-in profile by name.
pub fn profile(name: &str) -> Option<SeccompPolicy> {
    match name {
        "default" => Some(default_profile()),
        "strict" => Some(strict_profile()),
        "audit" => Some(audit_profile()),
        _ => None,
    }
}

const ENOSYS: u32 = 38;

/// `CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID |
/// CLONE_NEWNET`, one flag each, so a denial names nothing vaguer than the flag that caused it.
const CLONE_NAMESPACE_FLAGS: [u64; 7] = [
    0x0002_0000,
    0x0200_0000,
    0x0400_0000,
    0x0800_0000,
    0x1000_0000,
    0x2000_0000,
    0x4000_0000,
];

/// `PER_LINUX`, `PER_LINUX32`, `UNAME26`, `PER_LINUX32|UNAME26`, and the query value.
const SAFE_PERSONALITIES: [u64; 5] = [0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// Calls denied and recorded by `default` and `strict`.
const AUDITED_DENIALS: &[&str] = &[
    "mount",
    "umount2",
    "unshare",
    "setns",
    "ptrace",
    "bpf",
    "keyctl",
    "add_key",
    "request_key",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "perf_event_open",
    "pivot_root",
    "swapon",
    "swapoff",
    "reboot",
    "open_by_handle_at",
    "name_to_handle_at",
    "userfaultfd",
    "acct",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "iopl",
    "ioperm",
    "lookup_dcookie",
    "quotactl",
    "fanotify_init",
    "syslog",
    "process_vm_readv",
    "process_vm_writev",
    "kcmp",
    "chroot",
    "sethostname",
    "setdomainname",
    "vhangup",
    "fsopen",
    "fsmount",
    "fsconfig",
    "fspick",
    "move_mount",
    "open_tree",
    "mount_setattr",
    "create_module",
    "get_kernel_syms",
    "query_module",
    "uselib",
    "_sysctl",
    "nfsservctl",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
];

/// What a shell, python, coreutils and git need; `strict` allows exactly these (plus the
/// conditional rules), `default` allows these and [`DEFAULT_EXTRA`].
const TOOLS: &[&str] = &[
    // files and directories
    "read",
    "write",
    "readv",
    "writev",
    "pread64",
    "pwrite64",
    "preadv",
    "pwritev",
    "preadv2",
    "pwritev2",
    "open",
    "openat",
    "openat2",
    "creat",
    "close",
    "close_range",
    "lseek",
    "stat",
    "fstat",
    "lstat",
    "newfstatat",
    "statx",
    "statfs",
    "fstatfs",
    "access",
    "faccessat",
    "faccessat2",
    "getdents",
    "getdents64",
    "getcwd",
    "chdir",
    "fchdir",
    "mkdir",
    "mkdirat",
    "rmdir",
    "rename",
    "renameat",
    "renameat2",
    "link",
    "linkat",
    "unlink",
    "unlinkat",
    "symlink",
    "symlinkat",
    "readlink",
    "readlinkat",
    "chmod",
    "fchmod",
    "fchmodat",
    "chown",
    "fchown",
    "fchownat",
    "lchown",
    "umask",
    "truncate",
    "ftruncate",
    "fallocate",
    "fsync",
    "fdatasync",
    "sync",
    "syncfs",
    "sync_file_range",
    "utime",
    "utimes",
    "utimensat",
    "futimesat",
    "flock",
    "fcntl",
    "dup",
    "dup2",
    "dup3",
    "pipe",
    "pipe2",
    "ioctl",
    "sendfile",
    "copy_file_range",
    "splice",
    "tee",
    "fadvise64",
    "readahead",
    "getxattr",
    "lgetxattr",
    "fgetxattr",
    "listxattr",
    "llistxattr",
    "flistxattr",
    "setxattr",
    "lsetxattr",
    "fsetxattr",
    "removexattr",
    "lremovexattr",
    "fremovexattr",
    "inotify_init",
    "inotify_init1",
    "inotify_add_watch",
    "inotify_rm_watch",
    "memfd_create",
    // memory
    "brk",
    "mmap",
    "munmap",
    "mremap",
    "mprotect",
    "madvise",
    "mincore",
    "msync",
    "mlock",
    "munlock",
    "membarrier",
    // processes, threads, signals
    "execve",
    "execveat",
    "fork",
    "vfork",
    "exit",
    "exit_group",
    "wait4",
    "waitid",
    "kill",
    "tkill",
    "tgkill",
    "getpid",
    "getppid",
    "gettid",
    "getpgid",
    "setpgid",
    "getpgrp",
    "getsid",
    "setsid",
    "getuid",
    "geteuid",
    "getgid",
    "getegid",
    "getresuid",
    "getresgid",
    "getgroups",
    "capget",
    "prctl",
    "arch_prctl",
    "set_tid_address",
    "set_robust_list",
    "get_robust_list",
    "rseq",
    "futex",
    "futex_waitv",
    "sched_yield",
    "sched_getaffinity",
    "sched_setaffinity",
    "sched_getparam",
    "sched_getscheduler",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "getpriority",
    "setpriority",
    "getrlimit",
    "setrlimit",
    "prlimit64",
    "getrusage",
    "times",
    "rt_sigaction",
    "rt_sigprocmask",
    "rt_sigreturn",
    "rt_sigpending",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigqueueinfo",
    "rt_tgsigqueueinfo",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "pidfd_open",
    "pidfd_send_signal",
    "pidfd_getfd",
    "restart_syscall",
    "pause",
    "seccomp",
    // time
    "nanosleep",
    "clock_nanosleep",
    "clock_gettime",
    "clock_getres",
    "gettimeofday",
    "time",
    "alarm",
    "getitimer",
    "setitimer",
    "timer_create",
    "timer_settime",
    "timer_gettime",
    "timer_getoverrun",
    "timer_delete",
    "timerfd_create",
    "timerfd_settime",
    "timerfd_gettime",
    // waiting
    "poll",
    "ppoll",
    "select",
    "pselect6",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_wait",
    "epoll_pwait",
    "epoll_pwait2",
    "eventfd",
    "eventfd2",
    // sockets (the domain is checked by the `socket` rules)
    "socketpair",
    "connect",
    "accept",
    "accept4",
    "bind",
    "listen",
    "getsockname",
    "getpeername",
    "getsockopt",
    "setsockopt",
    "sendto",
    "recvfrom",
    "sendmsg",
    "recvmsg",
    "sendmmsg",
    "recvmmsg",
    "shutdown",
    // system information
    "uname",
    "sysinfo",
    "getrandom",
    "getcpu",
];

/// What `default` allows beyond [`TOOLS`]: Docker's default allowlist minus what hearth denies.
const DEFAULT_EXTRA: &[&str] = &[
    "setuid",
    "setgid",
    "setreuid",
    "setregid",
    "setresuid",
    "setresgid",
    "setfsuid",
    "setfsgid",
    "setgroups",
    "capset",
    "mknod",
    "mknodat",
    "mlock2",
    "mlockall",
    "munlockall",
    "remap_file_pages",
    "vmsplice",
    "fanotify_mark",
    "ioprio_get",
    "ioprio_set",
    "sched_setparam",
    "sched_setscheduler",
    "sched_getattr",
    "sched_setattr",
    "sched_rr_get_interval",
    "io_setup",
    "io_destroy",
    "io_getevents",
    "io_submit",
    "io_cancel",
    "io_pgetevents",
    "mq_open",
    "mq_unlink",
    "mq_timedsend",
    "mq_timedreceive",
    "mq_notify",
    "mq_getsetattr",
    "msgget",
    "msgsnd",
    "msgrcv",
    "msgctl",
    "semget",
    "semop",
    "semtimedop",
    "semctl",
    "shmget",
    "shmat",
    "shmdt",
    "shmctl",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "landlock_create_ruleset",
    "landlock_add_rule",
    "landlock_restrict_self",
    "process_mrelease",
    "memfd_secret",
    "epoll_ctl_old",
    "epoll_wait_old",
    "modify_ldt",
    "get_thread_area",
    "set_thread_area",
    "socket",
];

/// Socket families `strict` allows: `AF_UNIX`, `AF_INET`, `AF_INET6`, `AF_NETLINK` (libc's
/// `getaddrinfo` asks the kernel for interface addresses over netlink).
const STRICT_SOCKET_FAMILIES: [u64; 4] = [1, 2, 10, 16];

fn arg0_32(op: CmpOp, value: u64) -> ArgCondition {
    ArgCondition::new(0, ArgWidth::W32, op, value)
}

/// `clone` without namespace flags is allowed; each namespace flag gets an audited denial.
fn clone_rules() -> Vec<Rule> {
    let all: u64 = CLONE_NAMESPACE_FLAGS.iter().fold(0, |acc, f| acc | f);
    let mut rules = vec![Rule::with_args(
        "clone",
        Action::Allow,
        vec![ArgCondition::new(0, ArgWidth::W64, CmpOp::MaskedEq(all), 0)],
    )];
    rules.extend(CLONE_NAMESPACE_FLAGS.iter().map(|&flag| {
        let cond = ArgCondition::new(0, ArgWidth::W64, CmpOp::MaskedEq(flag), flag);
        Rule::with_args("clone", Action::AuditDeny, vec![cond])
    }));
    rules.push(Rule {
        comment: Some("ENOSYS makes libc fall back to clone, whose flags are checked".into()),
        ..Rule::new("clone3", Action::Errno(ENOSYS))
    });
    rules
}

/// Only the safe personalities are allowed; others fall to the default action. (An explicit
/// audited denial would need five `ne` conditions on one argument, which runc turns into an OR.)
fn personality_rules() -> Vec<Rule> {
    SAFE_PERSONALITIES
        .iter()
        .map(|&v| Rule::with_args("personality", Action::Allow, vec![arg0_32(CmpOp::Eq, v)]))
        .collect()
}

fn allow_all<'a>(names: &'a [&'a str]) -> impl Iterator<Item = Rule> + 'a {
    names.iter().map(|n| Rule::new(n, Action::Allow))
}

fn deny_all<'a>(names: &'a [&'a str]) -> impl Iterator<Item = Rule> + 'a {
    names.iter().map(|n| Rule::new(n, Action::AuditDeny))
}

fn default_profile() -> SeccompPolicy {
    let mut rules: Vec<Rule> = allow_all(TOOLS).chain(allow_all(DEFAULT_EXTRA)).collect();
    rules.extend(clone_rules());
    rules.extend(personality_rules());
    rules.extend(deny_all(AUDITED_DENIALS));
    SeccompPolicy {
        default_action: Action::Errno(EPERM),
        rules,
    }
}

fn strict_profile() -> SeccompPolicy {
    let mut rules: Vec<Rule> = allow_all(TOOLS).collect();
    rules.extend(
        STRICT_SOCKET_FAMILIES
            .iter()
            .map(|&f| Rule::with_args("socket", Action::Allow, vec![arg0_32(CmpOp::Eq, f)])),
    );
    rules.extend(clone_rules());
    rules.extend(personality_rules());
    rules.extend(deny_all(AUDITED_DENIALS));
    SeccompPolicy {
        default_action: Action::Errno(EPERM),
        rules,
    }
}

/// `default` with every refusal (including the default action) turned into `log`.
fn audit_profile() -> SeccompPolicy {
    let base = default_profile();
    let relax = |a: Action| match a {
        Action::Allow => Action::Allow,
        _ => Action::Log,
    };
    SeccompPolicy {
        default_action: relax(base.default_action),
        rules: base
            .rules
            .into_iter()
            .map(|r| Rule {
                action: relax(r.action),
                ..r
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::validate;

    #[test]
    fn every_profile_is_valid() {
        for name in PROFILE_NAMES {
            let p = profile(name).unwrap();
            if let Err(errs) = validate(&p) {
                panic!("{name}: {errs:?}");
            }
        }
        assert!(profile("nope").is_none());
    }

    #[test]
    fn default_denies_what_the_issue_lists_and_audits_it() {
        let p = profile("default").unwrap();
        for name in [
            "mount",
            "unshare",
            "setns",
            "ptrace",
            "bpf",
            "keyctl",
            "kexec_load",
        ] {
            assert_eq!(p.evaluate(name, &[0; 6]), Action::AuditDeny, "{name}");
        }
        let newuser = [0x1000_0000 | 17, 0, 0, 0, 0, 0];
        assert_eq!(p.evaluate("clone", &newuser), Action::AuditDeny);
        assert_eq!(p.evaluate("clone", &[17, 0, 0, 0, 0, 0]), Action::Allow);
        assert_eq!(
            p.evaluate("personality", &[8, 0, 0, 0, 0, 0]),
            Action::Allow
        );
        assert_eq!(
            p.evaluate("personality", &[0x40000, 0, 0, 0, 0, 0]),
            Action::Errno(EPERM)
        );
        assert_eq!(p.evaluate("getpid", &[0; 6]), Action::Allow);
        assert_eq!(p.evaluate("sethostname", &[0; 6]), Action::AuditDeny);
    }

    #[test]
    fn strict_is_narrower_than_default() {
        let strict = profile("strict").unwrap();
        let default = profile("default").unwrap();
        assert_eq!(
            strict.evaluate("socket", &[40, 1, 0, 0, 0, 0]),
            Action::Errno(EPERM)
        );
        assert_eq!(
            strict.evaluate("socket", &[2, 1, 0, 0, 0, 0]),
            Action::Allow
        );
        assert_eq!(strict.evaluate("setuid", &[0; 6]), Action::Errno(EPERM));
        for rule in &strict.rules {
            let args = [0; 6];
            if strict.evaluate(&rule.syscall, &args) == Action::Allow {
                assert_eq!(default.evaluate(&rule.syscall, &args), Action::Allow);
            }
        }
    }

    #[test]
    fn audit_refuses_nothing() {
        let p = profile("audit").unwrap();
        assert_eq!(p.default_action, Action::Log);
        assert!(p
            .rules
            .iter()
            .all(|r| matches!(r.action, Action::Allow | Action::Log)));
        assert_eq!(p.evaluate("mount", &[0; 6]), Action::Log);
    }
}
