use super::*;

const BASE: &str = "\
#
# Automatically generated file; DO NOT EDIT.
#
CONFIG_LOCALVERSION=\"\"
CONFIG_VIRTIO_MMIO=y
# CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES is not set
CONFIG_EXT4_FS=m
CONFIG_PCI=y
";

fn source(version: &str) -> Package {
    Package {
        name: SOURCE_PACKAGE.to_owned(),
        version: version.to_owned(),
    }
}

#[test]
fn merge_replaces_every_line_about_our_options_and_keeps_the_rest() {
    let options = [
        ("CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES", "y"),
        ("CONFIG_EXT4_FS", "y"),
        ("CONFIG_VSOCKETS", "y"),
    ];
    let merged = merge_config(BASE, &options);
    // Unset and modular lines of ours are gone; each of ours appears exactly once, as ours.
    assert!(!merged.contains("# CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES is not set"));
    assert!(!merged.contains("CONFIG_EXT4_FS=m"));
    for (key, value) in options {
        let line = format!("{key}={value}");
        assert_eq!(merged.lines().filter(|l| *l == line).count(), 1, "{line}");
        assert_eq!(
            merged.lines().filter(|l| symbol_of(l) == Some(key)).count(),
            1,
            "{key}"
        );
    }
    // Everything else is untouched, comments included.
    for line in [
        "CONFIG_PCI=y",
        "CONFIG_VIRTIO_MMIO=y",
        "CONFIG_LOCALVERSION=\"\"",
        "#",
    ] {
        assert!(merged.lines().any(|l| l == line), "{line}");
    }
    // Merging again changes nothing (make olddefconfig's output can be fed back).
    assert_eq!(
        merge_config(&merged, &options)
            .lines()
            .filter(|l| l.starts_with("CONFIG_"))
            .count(),
        merged.lines().filter(|l| l.starts_with("CONFIG_")).count()
    );
}

#[test]
fn symbols_are_read_from_set_and_unset_lines_only() {
    assert_eq!(symbol_of("CONFIG_A=y"), Some("CONFIG_A"));
    assert_eq!(symbol_of("# CONFIG_B is not set"), Some("CONFIG_B"));
    assert_eq!(symbol_of("# Automatically generated file"), None);
    assert_eq!(symbol_of("#"), None);
    assert_eq!(symbol_of(""), None);
}

#[test]
fn dropped_options_are_those_olddefconfig_did_not_keep() {
    let settled = "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=m\n";
    let options = [
        ("CONFIG_A", "y"),
        ("CONFIG_B", "y"),
        ("CONFIG_C", "y"),
        ("CONFIG_D", "y"),
    ];
    assert_eq!(
        dropped_options(settled, &options),
        ["CONFIG_B", "CONFIG_C", "CONFIG_D"]
    );
    assert!(dropped_options("CONFIG_A=y\n", &options[..1]).is_empty());
}

#[test]
fn the_cache_key_follows_every_input() {
    let base = BASE.as_bytes();
    let key = cache_key(&source("6.1.192-3"), base, HEARTH_OPTIONS);
    assert_eq!(key.len(), 64);
    assert!(key.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(key, cache_key(&source("6.1.192-3"), base, HEARTH_OPTIONS));
    assert_ne!(key, cache_key(&source("6.1.193-1"), base, HEARTH_OPTIONS));
    let mut edited = base.to_vec();
    edited.extend_from_slice(b"CONFIG_X=y\n");
    assert_ne!(
        key,
        cache_key(&source("6.1.192-3"), &edited, HEARTH_OPTIONS)
    );
    assert_ne!(
        key,
        cache_key(&source("6.1.192-3"), base, &HEARTH_OPTIONS[1..])
    );
}

#[test]
fn hearth_options_survive_on_firecrackers_own_config() {
    // Firecracker's recommended config, read where the project keeps it (never copied in):
    // every option hearth needs either is already there or is merged in once.
    let path = hearth_sandbox::backend::firecracker::find_shared_file(
        FIRECRACKER_CONFIG_NAME,
        &[env!("CARGO_MANIFEST_DIR").into()],
    )
    .expect("Firecracker's kernel config under shared/firecracker");
    let base = read_base_config(&path).unwrap();
    let merged = merge_config(&String::from_utf8_lossy(&base), HEARTH_OPTIONS);
    assert!(dropped_options(&merged, HEARTH_OPTIONS).is_empty());
    // The reason hearth builds its own: Firecracker's CI config leaves cmdline devices off.
    assert!(
        String::from_utf8_lossy(&base).contains("# CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES is not set")
    );
    assert!(merged.contains("\nCONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y\n"));
}

#[test]
fn a_bad_base_config_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope.config");
    let err = read_base_config(&missing).unwrap_err();
    assert!(
        err.is_host_problem() && err.to_string().contains("--config"),
        "{err}"
    );
    let junk = tmp.path().join("junk.config");
    std::fs::write(&junk, "hello\n").unwrap();
    assert!(matches!(
        read_base_config(&junk),
        Err(KernelError::NotAConfig { .. })
    ));
}

#[test]
fn missing_tools_name_their_packages() {
    let err = check_tools(BUILD_TOOLS, |tool| {
        tool != "flex" && !tool.contains("libelf")
    })
    .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("apt-get install flex libelf-dev"), "{text}");
    assert!(err.is_host_problem());
    assert!(check_tools(BUILD_TOOLS, |_| true).is_ok());
}

#[test]
fn the_current_kernel_is_found_or_explained() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let err = current_kernel(dir).unwrap_err();
    assert!(
        err.to_string()
            .contains("hearth image kernel --firecracker"),
        "{err}"
    );
    let key = "a".repeat(64);
    std::fs::write(dir.join(CURRENT_FILE), &key).unwrap();
    assert!(matches!(
        current_kernel(dir),
        Err(KernelError::Damaged { .. })
    ));
    std::fs::create_dir(dir.join(&key)).unwrap();
    std::fs::write(dir.join(&key).join(VMLINUX_FILE), b"elf").unwrap();
    assert_eq!(
        current_kernel(dir).unwrap(),
        dir.join(&key).join(VMLINUX_FILE)
    );
    std::fs::write(dir.join(CURRENT_FILE), "../../etc").unwrap();
    assert!(matches!(
        current_kernel(dir),
        Err(KernelError::Damaged { .. })
    ));
}
