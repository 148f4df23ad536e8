use std::net::Ipv4Addr;

use super::*;
use crate::backend::vm::{GuestNet, GuestTransport};

fn plan(accel: Accel) -> QemuPlan {
    QemuPlan {
        name: "hearth-sb1".into(),
        accel,
        memory_mib: 512,
        vcpus: 2,
        image: VmImagePaths {
            kernel: "/img/vmlinuz".into(),
            initrd: "/img/initramfs.cpio.gz".into(),
            rootfs: "/img/rootfs.ext4".into(),
        },
        cmdline: KernelCmdline {
            transport: GuestTransport::VirtioSerial {
                port_name: "org.hearth.guest.0".into(),
            },
            root: "/dev/vda".into(),
            net: Some(GuestNet {
                address: Ipv4Addr::new(10, 231, 0, 2),
                prefix: 30,
                gateway: Ipv4Addr::new(10, 231, 0, 1),
                dns: Ipv4Addr::new(10, 231, 0, 1),
            }),
            config: Some("/dev/vdb".into()),
            workspace_9p: true,
        },
        config_drive: Some("/run/sb1/vm/config.img".into()),
        nic: Some(Nic {
            tap: "tap0".into(),
            mac: [0x02, 0x68, 1, 2, 3, 0xab],
            fd: None,
        }),
        workspace: Some("/home/u/proj".into()),
        channel: Channel::VirtioSerial {
            socket: "/run/sb1/vm/guest-serial.sock".into(),
            port_name: "org.hearth.guest.0".into(),
        },
        qmp_socket: "/run/sb1/vm/qmp.sock".into(),
        console_log: "/run/sb1/vm/console.log".into(),
        qemu_sandbox: true,
        passed: None,
    }
}

fn strings(args: &[OsString]) -> Vec<String> {
    args.iter()
        .map(|a| a.to_str().unwrap().to_owned())
        .collect()
}

/// The value following each occurrence of `flag`.
fn values(args: &[String], flag: &str) -> Vec<String> {
    args.windows(2)
        .filter(|w| w[0] == flag)
        .map(|w| w[1].clone())
        .collect()
}

#[test]
fn tcg_plan_gives_the_whole_pc_command_line() {
    let args = strings(&build_argv(&plan(Accel::Tcg)));
    let expected = [
        "-name",
        "hearth-sb1,debug-threads=on",
        "-accel",
        "tcg,tb-size=128",
        "-machine",
        "pc",
        "-nodefaults",
        "-no-user-config",
        "-no-reboot",
        "-display",
        "none",
        "-m",
        "512M",
        "-smp",
        "2",
        "-kernel",
        "/img/vmlinuz",
        "-initrd",
        "/img/initramfs.cpio.gz",
        "-append",
        "console=ttyS0 panic=-1 reboot=t quiet hearth.transport=virtio-serial:org.hearth.guest.0 \
         hearth.root=/dev/vda hearth.net=10.231.0.2/30,10.231.0.1 hearth.dns=10.231.0.1 \
         hearth.config=/dev/vdb hearth.workspace=9p acpi=noirq",
        "-drive",
        "file=/img/rootfs.ext4,if=none,id=root,format=raw,readonly=on",
        "-device",
        "virtio-blk-pci,drive=root",
        "-drive",
        "file=/run/sb1/vm/config.img,if=none,id=config,format=raw,readonly=on",
        "-device",
        "virtio-blk-pci,drive=config",
        "-netdev",
        "tap,id=net0,ifname=tap0,script=no,downscript=no",
        "-device",
        "virtio-net-pci,netdev=net0,mac=02:68:01:02:03:ab,romfile=",
        "-fsdev",
        "local,id=workspace,security_model=mapped-xattr,path=/home/u/proj",
        "-device",
        "virtio-9p-pci,fsdev=workspace,mount_tag=workspace",
        "-chardev",
        "socket,id=guest,server=on,wait=off,path=/run/sb1/vm/guest-serial.sock",
        "-device",
        "virtio-serial-pci,id=vser0",
        "-device",
        "virtserialport,bus=vser0.0,chardev=guest,name=org.hearth.guest.0",
        "-qmp",
        "unix:/run/sb1/vm/qmp.sock,server=on,wait=off",
        "-chardev",
        "file,id=console,append=on,path=/run/sb1/vm/console.log",
        "-serial",
        "chardev:console",
        "-sandbox",
        "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
        "-msg",
        "timestamp=on",
    ];
    assert_eq!(args, expected);
    assert!(!args.iter().any(|a| a == "-daemonize" || a == "-pidfile"));
}

#[test]
fn kvm_plan_uses_microvm_mmio_devices_and_vsock() {
    let mut plan = plan(Accel::Kvm);
    plan.channel = Channel::Vsock { guest_cid: 77 };
    plan.nic = None;
    plan.workspace = None;
    plan.qemu_sandbox = false;
    let args = strings(&build_argv(&plan));
    assert_eq!(values(&args, "-accel"), ["kvm"]);
    assert_eq!(values(&args, "-machine"), ["microvm"]);
    assert_eq!(values(&args, "-cpu"), ["host"]);
    assert_eq!(
        values(&args, "-device"),
        [
            "virtio-blk-device,drive=root",
            "virtio-blk-device,drive=config",
            "vhost-vsock-device,guest-cid=77",
        ]
    );
    for absent in ["-netdev", "-fsdev", "-sandbox"] {
        assert!(values(&args, absent).is_empty(), "{absent}");
    }
    // Only the console: the guest channel is vsock here.
    assert_eq!(
        values(&args, "-chardev"),
        ["file,id=console,append=on,path=/run/sb1/vm/console.log"]
    );
}

#[test]
fn commas_in_paths_are_doubled() {
    let mut plan = plan(Accel::Tcg);
    plan.workspace = Some("/home/u/a,b".into());
    plan.image.rootfs = "/img/x,readonly=off".into();
    let args = strings(&build_argv(&plan));
    assert!(values(&args, "-fsdev")[0].ends_with("path=/home/u/a,,b"));
    assert_eq!(
        values(&args, "-drive")[0],
        "file=/img/x,,readonly=off,if=none,id=root,format=raw,readonly=on"
    );
}

#[test]
fn mac_and_cid_are_stable_and_well_formed() {
    let mac = mac_for("sb1");
    assert_eq!(mac, mac_for("sb1"));
    assert_ne!(mac, mac_for("sb2"));
    // Locally administered, unicast.
    assert_eq!(mac[0] & 0b11, 0b10);
    assert_eq!(
        format_mac([0x02, 0x68, 0, 0x0f, 0xa0, 0xff]),
        "02:68:00:0f:a0:ff"
    );
    let cid = cid_for("sb1");
    assert!((3..u32::MAX - 1).contains(&cid));
    assert_eq!(cid, cid_for("sb1"));
}
