use super::*;
use std::os::unix::fs::PermissionsExt;

const UID: u32 = 64_123;
const GID: u32 = 64_124;

fn config(base: &Path, cgroup_root: &Path) -> JailerConfig {
    JailerConfig {
        jailer: "/usr/local/bin/jailer".into(),
        firecracker: "/usr/local/bin/firecracker".into(),
        uid: UID,
        gid: GID,
        chroot_base: base.to_owned(),
        cgroups: JailCgroups::V2,
        cgroup_root: cgroup_root.to_owned(),
    }
}

fn id(raw: &str) -> SandboxId {
    SandboxId::parse(raw).unwrap()
}

#[test]
fn jailer_ids_follow_the_jailers_rule() {
    assert!(JailerId::parse("Sb-1-abc").is_ok());
    assert!(JailerId::parse(&"a".repeat(64)).is_ok());
    for bad in ["", "a_b", "a.b", "a/b", "é", &"a".repeat(65)] {
        assert!(JailerId::parse(bad).is_err(), "{bad:?}");
    }
    // Every sandbox id is one.
    let longest = id(&"z9-".repeat(21));
    assert!(JailerId::parse(JailerId::from_sandbox(&longest).as_str()).is_ok());
}

#[test]
fn argv_is_the_jailers_and_firecrackers_flags_in_order() {
    let cfg = config(Path::new("/run/hearth/jail"), Path::new("/sys/fs/cgroup"));
    let jail = cfg.jail(&id("sb-1"));
    assert_eq!(jail.dir, Path::new("/run/hearth/jail/firecracker/sb-1"));
    assert_eq!(
        jail.root,
        Path::new("/run/hearth/jail/firecracker/sb-1/root")
    );
    let argv = cfg.argv(
        &jail,
        Path::new("/run/netns/hearth-sb-1"),
        Cpus(0.5),
        Some(Path::new("/seccomp.bpf")),
    );
    let argv: Vec<&str> = argv.iter().map(|a| a.to_str().unwrap()).collect();
    assert_eq!(
        argv,
        [
            "--id",
            "sb-1",
            "--exec-file",
            "/usr/local/bin/firecracker",
            "--uid",
            "64123",
            "--gid",
            "64124",
            "--chroot-base-dir",
            "/run/hearth/jail",
            "--netns",
            "/run/netns/hearth-sb-1",
            "--cgroup-version",
            "2",
            "--cgroup",
            "cpu.max=50000 100000",
            "--",
            "--api-sock",
            "/api.sock",
            "--seccomp-filter",
            "/seccomp.bpf",
        ]
    );
    assert!(!argv.contains(&"--daemonize") && !argv.contains(&"--new-pid-ns"));

    let v1 = JailerConfig {
        cgroups: JailCgroups::V1,
        ..cfg.clone()
    };
    let argv = v1.argv(&jail, Path::new("/n"), Cpus(2.0), None);
    let argv: Vec<&str> = argv.iter().map(|a| a.to_str().unwrap()).collect();
    let tail = &argv[argv.iter().position(|a| *a == "--cgroup-version").unwrap()..];
    assert_eq!(
        tail,
        [
            "--cgroup-version",
            "1",
            "--cgroup",
            "cpu.cfs_period_us=100000",
            "--cgroup",
            "cpu.cfs_quota_us=200000",
            "--",
            "--api-sock",
            "/api.sock"
        ]
    );
}

#[test]
fn exec_name_must_contain_firecracker() {
    let mut cfg = config(Path::new("/j"), Path::new("/c"));
    assert!(cfg.validate().is_ok());
    cfg.firecracker = "/usr/bin/vmm".into();
    assert!(matches!(cfg.validate(), Err(JailerError::ExecName { .. })));
}

#[test]
fn cgroup_version_follows_cgroup_controllers() {
    let tmp = tempfile::tempdir().unwrap();
    assert_eq!(JailCgroups::detect_at(tmp.path()), JailCgroups::V1);
    fs::write(tmp.path().join("cgroup.controllers"), "cpu memory pids\n").unwrap();
    assert_eq!(JailCgroups::detect_at(tmp.path()), JailCgroups::V2);
    // This host: whatever it is, detection must agree with the file.
    let host = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    assert_eq!(JailCgroups::detect() == JailCgroups::V2, host);
}

fn write_mode(path: &Path, bytes: &[u8], mode: u32) {
    fs::write(path, bytes).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn image_is_linked_when_readable_and_copied_and_chowned_otherwise() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("images");
    fs::create_dir(&images).unwrap();
    let kernel = images.join("vmlinuz");
    let rootfs = images.join("rootfs.ext4");
    write_mode(&kernel, b"kernel", 0o644);
    write_mode(&rootfs, b"rootfs", 0o600); // root's only: the VMM's uid can't read it
    let cfg = config(&tmp.path().join("jail"), &tmp.path().join("cg"));
    let jail = cfg.jail(&id("place"));
    cfg.create_root(&jail).unwrap();
    let root_meta = fs::metadata(&jail.root).unwrap();
    assert_eq!((root_meta.uid(), root_meta.gid()), (UID, GID));
    assert_eq!(root_meta.mode() & 0o777, 0o700);

    let image = VmImagePaths {
        kernel: kernel.clone(),
        initrd: kernel.clone(),
        rootfs: rootfs.clone(),
    };
    let inside = cfg.place_image(&jail, &image).unwrap();
    assert_eq!(inside.kernel, Path::new("/vmlinux"));
    assert_eq!(inside.rootfs, Path::new("/rootfs.ext4"));
    assert_eq!(inside.initrd, Path::new("/initrd.img"));

    let linked = fs::metadata(jail.root.join("vmlinux")).unwrap();
    assert_eq!(linked.ino(), fs::metadata(&kernel).unwrap().ino());
    assert_eq!(linked.uid(), 0, "a hard link must not be chowned");
    let copied = fs::metadata(jail.root.join("rootfs.ext4")).unwrap();
    assert_ne!(copied.ino(), fs::metadata(&rootfs).unwrap().ino());
    assert_eq!((copied.uid(), copied.gid()), (UID, GID));
    assert_eq!(fs::read(jail.root.join("rootfs.ext4")).unwrap(), b"rootfs");
    assert_eq!(fs::metadata(&rootfs).unwrap().uid(), 0);
}

#[test]
fn image_on_another_filesystem_is_copied() {
    // /dev/shm is a tmpfs; the jail is on the tempdir's filesystem.
    let shm = Path::new("/dev/shm");
    let tmp = tempfile::tempdir().unwrap();
    let same_fs = fs::metadata(shm).unwrap().dev() == fs::metadata(tmp.path()).unwrap().dev();
    assert!(
        !same_fs,
        "test needs /dev/shm and the tempdir on different filesystems"
    );
    let src = tempfile::Builder::new().tempdir_in(shm).unwrap();
    let kernel = src.path().join("vmlinuz");
    write_mode(&kernel, b"k", 0o644);
    let initrd = src.path().join("initrd");
    write_mode(&initrd, b"i", 0o644);
    let cfg = config(&tmp.path().join("jail"), &tmp.path().join("cg"));
    let jail = cfg.jail(&id("xdev"));
    cfg.create_root(&jail).unwrap();
    let image = VmImagePaths {
        kernel: kernel.clone(),
        initrd,
        rootfs: kernel.clone(),
    };
    let inside = cfg.place_image(&jail, &image).unwrap();
    assert_eq!(inside.initrd, Path::new("/initrd.img"));
    let copy = fs::metadata(jail.root.join("vmlinux")).unwrap();
    assert_eq!((copy.uid(), copy.gid()), (UID, GID));
    assert_eq!(fs::read(jail.root.join("initrd.img")).unwrap(), b"i");
}

#[test]
fn cleanup_removes_jail_and_cgroup_and_tolerates_their_absence() {
    let tmp = tempfile::tempdir().unwrap();
    let cgroup_root = tmp.path().join("cg");
    let cfg = config(&tmp.path().join("jail"), &cgroup_root);
    let sandbox = id("gone");
    let jail = cfg.jail(&sandbox);
    cfg.create_root(&jail).unwrap();
    fs::write(jail.root.join("api.sock"), b"").unwrap();
    fs::create_dir_all(jail.root.join("dev/net")).unwrap();
    let cgroup = cgroup_root.join("firecracker/gone");
    fs::create_dir_all(&cgroup).unwrap();
    let other = cfg.jail(&id("stays"));
    cfg.create_root(&other).unwrap();
    assert_eq!(cfg.list(), ["gone", "stays"]);

    cfg.cleanup(&sandbox).unwrap();
    assert!(!jail.dir.exists());
    assert!(!cgroup.exists());
    assert!(other.root.exists(), "another sandbox's jail must stay");
    assert_eq!(cfg.list(), ["stays"]);
    cfg.cleanup(&sandbox).unwrap(); // idempotent
}

#[test]
fn cleanup_reports_a_busy_cgroup_and_still_removes_the_jail() {
    let tmp = tempfile::tempdir().unwrap();
    let cgroup_root = tmp.path().join("cg");
    let cfg = config(&tmp.path().join("jail"), &cgroup_root);
    let sandbox = id("busy");
    let jail = cfg.jail(&sandbox);
    cfg.create_root(&jail).unwrap();
    // A non-empty directory stands in for a cgroup that still has processes (rmdir fails).
    fs::create_dir_all(cgroup_root.join("firecracker/busy/child")).unwrap();
    let errors = cfg.cleanup(&sandbox).unwrap_err();
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].to_string().contains("firecracker/busy"),
        "{}",
        errors[0]
    );
    assert!(!jail.dir.exists());
}
