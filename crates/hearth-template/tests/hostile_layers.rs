//! Hostile layers against the real unpacker: each attack is either refused with its own error
//! or neutralised, and nothing lands outside the layer's directory. Needs root (whiteouts are
//! device nodes, ownership is kept, the opaque mark is a trusted xattr).

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use hearth_template::unpack::{is_opaque, unpack_layer};
use hearth_template::{Digest, LayerLimits, UnpackError, UnpackStats};

const LIMITS: LayerLimits = LayerLimits {
    bytes: 64 << 20,
    entries: 10_000,
};

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!(
                "SKIP: unpacking layers keeps ownership and makes whiteout devices; run as root"
            );
            return;
        }
    };
}

/// A tar entry whose name is written raw (the tar crate's own setters refuse `..`).
fn raw_entry(
    builder: &mut tar::Builder<Vec<u8>>,
    name: &str,
    kind: tar::EntryType,
    link: Option<&str>,
    data: &[u8],
    mode: u32,
) {
    let mut header = tar::Header::new_gnu();
    {
        let old = header.as_old_mut();
        old.name.fill(0);
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(link) = link {
            old.linkname.fill(0);
            old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
    }
    header.set_entry_type(kind);
    header.set_size(data.len() as u64);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(1_700_000_000);
    header.set_cksum();
    builder.append(&header, data).unwrap();
}

fn file(b: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]) {
    raw_entry(b, name, tar::EntryType::Regular, None, data, 0o644);
}

fn finish(b: tar::Builder<Vec<u8>>) -> Vec<u8> {
    b.into_inner().unwrap()
}

fn unpack(tar: &[u8], dest: &Path) -> Result<UnpackStats, UnpackError> {
    unpack_with(tar, dest, LIMITS)
}

fn unpack_with(tar: &[u8], dest: &Path, limits: LayerLimits) -> Result<UnpackStats, UnpackError> {
    unpack_layer(tar, dest, &Digest::of(tar), limits, &mut |_| {})
}

/// A layer dir and, beside it, a dir standing for "outside" that must stay empty.
fn dirs() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let layer = tmp.path().join("layer");
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&layer).unwrap();
    std::fs::create_dir(&outside).unwrap();
    (tmp, layer, outside)
}

#[test]
fn an_ordinary_layer_unpacks_with_overlay_whiteouts() {
    require_root!();
    let (_tmp, layer, _) = dirs();
    let mut b = tar::Builder::new(Vec::new());
    raw_entry(&mut b, "usr/", tar::EntryType::Directory, None, b"", 0o755);
    file(&mut b, "usr/bin/tool", b"#!/bin/sh\necho image\n");
    raw_entry(
        &mut b,
        "usr/bin/alias",
        tar::EntryType::Symlink,
        Some("tool"),
        b"",
        0o777,
    );
    raw_entry(
        &mut b,
        "usr/bin/hard",
        tar::EntryType::Link,
        Some("usr/bin/tool"),
        b"",
        0o644,
    );
    file(&mut b, "etc/.wh.gone", b"");
    raw_entry(
        &mut b,
        "opt/fresh/",
        tar::EntryType::Directory,
        None,
        b"",
        0o755,
    );
    file(&mut b, "opt/fresh/.wh..wh..opq", b"");
    let stats = unpack(&finish(b), &layer).unwrap();
    assert_eq!(
        std::fs::read(layer.join("usr/bin/tool")).unwrap(),
        b"#!/bin/sh\necho image\n"
    );
    assert_eq!(
        std::fs::read_link(layer.join("usr/bin/alias")).unwrap(),
        Path::new("tool")
    );
    assert_eq!(
        std::fs::metadata(layer.join("usr/bin/hard")).unwrap().ino(),
        std::fs::metadata(layer.join("usr/bin/tool")).unwrap().ino()
    );
    let whiteout = std::fs::symlink_metadata(layer.join("etc/gone")).unwrap();
    assert!(whiteout.file_type().is_char_device() && whiteout.rdev() == 0);
    assert!(is_opaque(&layer.join("opt/fresh")));
    assert_eq!(stats.whiteouts, 2);
}

#[test]
fn dot_dot_paths_are_refused() {
    require_root!();
    let (_tmp, layer, outside) = dirs();
    let mut b = tar::Builder::new(Vec::new());
    file(&mut b, "../outside/pwned", b"x");
    let err = unpack(&finish(b), &layer).unwrap_err();
    assert!(matches!(err, UnpackError::DotDot { .. }), "{err}");
    assert!(std::fs::read_dir(&outside).unwrap().next().is_none());
}

#[test]
fn absolute_paths_land_inside_the_layer() {
    require_root!();
    let (_tmp, layer, _) = dirs();
    let mut b = tar::Builder::new(Vec::new());
    file(&mut b, "/etc/hearth-test-abs", b"inside");
    let stats = unpack(&finish(b), &layer).unwrap();
    assert_eq!(stats.absolute_paths, 1);
    assert_eq!(
        std::fs::read(layer.join("etc/hearth-test-abs")).unwrap(),
        b"inside"
    );
    assert!(!Path::new("/etc/hearth-test-abs").exists());
}

#[test]
fn writing_through_a_planted_symlink_is_refused() {
    require_root!();
    let (_tmp, layer, outside) = dirs();
    for target in [outside.to_str().unwrap(), "../outside"] {
        let mut b = tar::Builder::new(Vec::new());
        raw_entry(
            &mut b,
            "escape",
            tar::EntryType::Symlink,
            Some(target),
            b"",
            0o777,
        );
        file(&mut b, "escape/pwned", b"x");
        let err = unpack(&finish(b), &layer).unwrap_err();
        assert!(
            matches!(err, UnpackError::ThroughLink { .. }),
            "{target}: {err}"
        );
        assert!(std::fs::read_dir(&outside).unwrap().next().is_none());
        std::fs::remove_file(layer.join("escape")).unwrap();
    }
}

#[test]
fn a_symlink_pointing_anywhere_is_kept_as_data() {
    require_root!();
    let (_tmp, layer, _) = dirs();
    let mut b = tar::Builder::new(Vec::new());
    raw_entry(
        &mut b,
        "root-link",
        tar::EntryType::Symlink,
        Some("/"),
        b"",
        0o777,
    );
    raw_entry(
        &mut b,
        "up",
        tar::EntryType::Symlink,
        Some("../../../.."),
        b"",
        0o777,
    );
    unpack(&finish(b), &layer).unwrap();
    assert_eq!(
        std::fs::read_link(layer.join("root-link")).unwrap(),
        Path::new("/")
    );
    assert_eq!(
        std::fs::read_link(layer.join("up")).unwrap(),
        Path::new("../../../..")
    );
}

#[test]
fn hardlinks_out_of_the_layer_are_refused() {
    require_root!();
    let (_tmp, layer, outside) = dirs();
    std::fs::write(outside.join("secret"), b"host").unwrap();
    for target in ["../outside/secret", "/etc/passwd", "missing-in-layer"] {
        let mut b = tar::Builder::new(Vec::new());
        raw_entry(
            &mut b,
            "stolen",
            tar::EntryType::Link,
            Some(target),
            b"",
            0o644,
        );
        let err = unpack(&finish(b), &layer).unwrap_err();
        assert!(
            matches!(err, UnpackError::BadHardlink { .. }),
            "{target}: {err}"
        );
        assert!(!layer.join("stolen").exists());
    }
    // Through a symlink planted in the layer: the link is not followed to the host.
    let mut b = tar::Builder::new(Vec::new());
    raw_entry(
        &mut b,
        "hop",
        tar::EntryType::Symlink,
        Some(outside.to_str().unwrap()),
        b"",
        0o777,
    );
    raw_entry(
        &mut b,
        "stolen",
        tar::EntryType::Link,
        Some("hop/secret"),
        b"",
        0o644,
    );
    let err = unpack(&finish(b), &layer).unwrap_err();
    assert!(matches!(err, UnpackError::BadHardlink { .. }), "{err}");
    assert_eq!(
        std::fs::metadata(outside.join("secret")).unwrap().nlink(),
        1
    );
}

#[test]
fn devices_are_dropped_and_setid_bits_cleared() {
    require_root!();
    let (_tmp, layer, _) = dirs();
    let mut b = tar::Builder::new(Vec::new());
    raw_entry(&mut b, "dev/sda", tar::EntryType::Block, None, b"", 0o666);
    raw_entry(&mut b, "dev/mem", tar::EntryType::Char, None, b"", 0o666);
    raw_entry(
        &mut b,
        "usr/bin/su",
        tar::EntryType::Regular,
        None,
        b"suid",
        0o4755,
    );
    raw_entry(
        &mut b,
        "usr/bin/sg",
        tar::EntryType::Regular,
        None,
        b"sgid",
        0o2755,
    );
    let stats = unpack(&finish(b), &layer).unwrap();
    assert_eq!(stats.devices_dropped, 2);
    assert!(!layer.join("dev/sda").exists() && !layer.join("dev/mem").exists());
    assert_eq!(stats.setid_cleared, 2);
    for name in ["usr/bin/su", "usr/bin/sg"] {
        let mode = std::fs::metadata(layer.join(name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o755, "{name}");
    }
}

#[test]
fn ids_beyond_the_sandbox_map_become_nobody() {
    require_root!();
    let (_tmp, layer, _) = dirs();
    let mut b = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_path("owned").unwrap();
    header.set_size(1);
    header.set_mode(0o644);
    header.set_uid(1_000_000);
    header.set_gid(1000);
    header.set_cksum();
    b.append(&header, &b"x"[..]).unwrap();
    let stats = unpack(&finish(b), &layer).unwrap();
    assert_eq!(stats.ids_clamped, 1);
    let meta = std::fs::metadata(layer.join("owned")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (65_534, 1000));
}

#[test]
fn files_over_the_limit_and_sparse_giants_are_refused() {
    require_root!();
    let (tmp, layer, _) = dirs();
    let small = LayerLimits {
        bytes: 1 << 20,
        entries: 100,
    };
    let mut b = tar::Builder::new(Vec::new());
    file(&mut b, "big", &vec![7u8; 2 << 20]);
    let err = unpack_with(&finish(b), &layer, small).unwrap_err();
    assert!(matches!(err, UnpackError::TooLarge { .. }), "{err}");

    // A 1 GiB sparse file archived by GNU tar as sparse: a few KiB of tar, 1 GiB unpacked.
    let sparse = tmp.path().join("sparse");
    std::fs::File::create(&sparse)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    let archive = tmp.path().join("sparse.tar");
    let status = std::process::Command::new("tar")
        .arg("--sparse")
        .arg("-cf")
        .arg(&archive)
        .arg("-C")
        .arg(tmp.path())
        .arg("sparse")
        .status()
        .expect("GNU tar");
    assert!(status.success());
    let bytes = std::fs::read(&archive).unwrap();
    assert!(bytes.len() < 1 << 20, "the archive itself is small");
    let layer2 = tmp.path().join("layer2");
    std::fs::create_dir(&layer2).unwrap();
    let err = unpack_with(&bytes, &layer2, small).unwrap_err();
    assert!(matches!(err, UnpackError::TooLarge { .. }), "{err}");
}

#[test]
fn a_tar_bomb_of_entries_is_refused() {
    require_root!();
    let (_tmp, layer, _) = dirs();
    let mut b = tar::Builder::new(Vec::new());
    for i in 0..200 {
        file(&mut b, &format!("f{i}"), b"");
    }
    let limits = LayerLimits {
        bytes: 1 << 20,
        entries: 100,
    };
    let err = unpack_with(&finish(b), &layer, limits).unwrap_err();
    assert!(
        matches!(err, UnpackError::TooManyEntries { limit: 100 }),
        "{err}"
    );
}

#[test]
fn content_that_is_not_the_diff_id_is_refused() {
    require_root!();
    let (_tmp, layer, _) = dirs();
    let mut b = tar::Builder::new(Vec::new());
    file(&mut b, "a", b"a");
    let tar = finish(b);
    let err =
        unpack_layer(&tar[..], &layer, &Digest::of(b"other"), LIMITS, &mut |_| {}).unwrap_err();
    assert!(matches!(err, UnpackError::DiffIdMismatch { .. }), "{err}");
}

#[test]
fn a_stream_that_is_not_tar_is_refused() {
    require_root!();
    let (_tmp, layer, _) = dirs();
    // Its digest is right (the helper digests what it feeds): only the tar reader can refuse.
    let garbage = [0xABu8; 4096];
    let err = unpack(&garbage, &layer).unwrap_err();
    assert!(matches!(err, UnpackError::Tar(_)), "{err}");
    assert!(std::fs::read_dir(&layer).unwrap().next().is_none());
}
