//! The initramfs: a static `hearth-guest` as `/init` plus the kernel modules it loads, and the
//! trivial baseline initramfs (`/init` only) that boot benchmarks compare against.

use std::io::Write;
use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;
use flate2::Compression;

use super::cpio::{CpioError, CpioWriter};
use super::modules::Module;

/// Where the guest reads its module load order: one absolute path per line.
pub const MODULES_LIST: &str = "hearth/modules";

/// The initramfs could not be written.
#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    #[error("read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("initramfs {path}: {source}")]
    Cpio { path: PathBuf, source: CpioError },
}

/// What goes into the initramfs.
#[derive(Debug)]
pub struct InitramfsSpec<'a> {
    /// The static `hearth-guest`, installed as `/init`.
    pub init: &'a [u8],
    /// `lib/modules/<release>` of the unpacked kernel package.
    pub modules_dir: &'a Path,
    pub kernel_release: &'a str,
    /// Load order; empty for the baseline.
    pub modules: &'a [Module],
}

/// Writes the gzip'd newc archive to `out` (created 0600).
pub fn write(spec: &InitramfsSpec<'_>, out: &Path) -> Result<(), InitramfsError> {
    let cpio_err = |source| InitramfsError::Cpio {
        path: out.to_path_buf(),
        source,
    };
    let file = super::create_private(out).map_err(|source| InitramfsError::Write {
        path: out.to_path_buf(),
        source,
    })?;
    let gz = GzEncoder::new(std::io::BufWriter::new(file), Compression::default());
    let mut cpio = CpioWriter::new(gz);
    for dir in ["dev", "proc", "sys", "newroot"] {
        cpio.dir(dir, 0o755).map_err(cpio_err)?;
    }
    // The kernel opens /dev/console for init's stdin, stdout and stderr before devtmpfs exists.
    cpio.char_device("dev/console", 0o600, 5, 1)
        .map_err(cpio_err)?;
    cpio.file("init", 0o755, spec.init).map_err(cpio_err)?;
    if !spec.modules.is_empty() {
        write_modules(&mut cpio, spec, out)?;
    }
    let gz = cpio.finish().map_err(cpio_err)?;
    let buffered = gz.finish().map_err(|source| InitramfsError::Write {
        path: out.to_path_buf(),
        source,
    })?;
    let file = buffered.into_inner().map_err(|e| InitramfsError::Write {
        path: out.to_path_buf(),
        source: e.into_error(),
    })?;
    file.sync_all().map_err(|source| InitramfsError::Write {
        path: out.to_path_buf(),
        source,
    })
}

fn write_modules<W: Write>(
    cpio: &mut CpioWriter<W>,
    spec: &InitramfsSpec<'_>,
    out: &Path,
) -> Result<(), InitramfsError> {
    let cpio_err = |source| InitramfsError::Cpio {
        path: out.to_path_buf(),
        source,
    };
    let base = format!("lib/modules/{}", spec.kernel_release);
    let mut made = std::collections::BTreeSet::new();
    let mut list = String::new();
    for dir in ["lib", "lib/modules", base.as_str(), "hearth"] {
        cpio.dir(dir, 0o755).map_err(cpio_err)?;
        made.insert(PathBuf::from(dir));
    }
    for module in spec.modules {
        let target = Path::new(&base).join(&module.rel_path);
        // Parents first, as the kernel's unpacker needs them.
        let mut parents: Vec<&Path> = target.ancestors().skip(1).collect();
        parents.reverse();
        for parent in parents {
            if !parent.as_os_str().is_empty() && made.insert(parent.to_path_buf()) {
                cpio.dir(&parent.to_string_lossy(), 0o755)
                    .map_err(cpio_err)?;
            }
        }
        let source = spec.modules_dir.join(&module.rel_path);
        let data = std::fs::read(&source).map_err(|err| InitramfsError::Read {
            path: source.clone(),
            source: err,
        })?;
        cpio.file(&target.to_string_lossy(), 0o644, &data)
            .map_err(cpio_err)?;
        list.push('/');
        list.push_str(&target.to_string_lossy());
        list.push('\n');
    }
    cpio.file(MODULES_LIST, 0o644, list.as_bytes())
        .map_err(cpio_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_and_their_load_order_are_in_the_archive() {
        let dir = tempfile::tempdir().unwrap();
        let mods = dir.path().join("mods");
        std::fs::create_dir_all(mods.join("kernel/drivers/virtio")).unwrap();
        std::fs::write(mods.join("kernel/drivers/virtio/virtio.ko"), b"ko-bytes").unwrap();
        let modules = [Module {
            name: "virtio".into(),
            rel_path: "kernel/drivers/virtio/virtio.ko".into(),
        }];
        let out = dir.path().join("initrd.gz");
        write(
            &InitramfsSpec {
                init: b"\x7fELF-init",
                modules_dir: &mods,
                kernel_release: "6.1.0-test",
                modules: &modules,
            },
            &out,
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&out).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let gz = std::fs::File::open(&out).unwrap();
        let mut cpio = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(gz), &mut cpio).unwrap();
        let unpacked = dir.path().join("x");
        std::fs::create_dir(&unpacked).unwrap();
        let mut child = std::process::Command::new("cpio")
            .args(["-i", "-d", "--quiet", "--nonmatching", "dev/console"])
            .current_dir(&unpacked)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&cpio).unwrap();
        assert!(child.wait().unwrap().success());
        assert_eq!(
            std::fs::read(unpacked.join("init")).unwrap(),
            b"\x7fELF-init"
        );
        let ko = unpacked.join("lib/modules/6.1.0-test/kernel/drivers/virtio/virtio.ko");
        assert_eq!(std::fs::read(ko).unwrap(), b"ko-bytes");
        assert_eq!(
            std::fs::read_to_string(unpacked.join(MODULES_LIST)).unwrap(),
            "/lib/modules/6.1.0-test/kernel/drivers/virtio/virtio.ko\n"
        );
    }
}
