//! A writer for the `newc` cpio format, the one the kernel unpacks as an initramfs.
//!
//! Each entry is a 110-byte ASCII header (`070701` and thirteen 8-digit hex fields), the name
//! with its NUL, padding to 4 bytes, the data, padding to 4 bytes; the archive ends with an
//! entry named `TRAILER!!!`. Timestamps are 0 so the same inputs give the same bytes.

use std::io::{self, Write};

/// A name or size the format cannot carry.
#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    #[error("cpio entry name {0:?} is empty, absolute or contains NUL")]
    BadName(String),
    #[error("cpio entry {name} is {size} bytes; newc holds at most 4 GiB per file")]
    TooLarge { name: String, size: usize },
    #[error("write the cpio archive: {0}")]
    Write(#[from] io::Error),
}

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

/// Writes entries in the order given; parents must come before their children.
#[derive(Debug)]
pub struct CpioWriter<W: Write> {
    out: W,
    written: u64,
    next_ino: u32,
}

impl<W: Write> CpioWriter<W> {
    pub fn new(out: W) -> Self {
        Self {
            out,
            written: 0,
            next_ino: 1,
        }
    }

    pub fn dir(&mut self, name: &str, perm: u32) -> Result<(), CpioError> {
        self.entry(name, S_IFDIR | (perm & 0o7777), 2, (0, 0), &[])
    }

    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> Result<(), CpioError> {
        self.entry(name, S_IFREG | (perm & 0o7777), 1, (0, 0), data)
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> Result<(), CpioError> {
        self.entry(name, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes())
    }

    pub fn char_device(
        &mut self,
        name: &str,
        perm: u32,
        major: u32,
        minor: u32,
    ) -> Result<(), CpioError> {
        self.entry(name, S_IFCHR | (perm & 0o7777), 1, (major, minor), &[])
    }

    /// Writes the trailer and hands back the inner writer.
    pub fn finish(mut self) -> Result<W, CpioError> {
        self.raw_entry("TRAILER!!!", 0, 0, 1, (0, 0), &[])?;
        Ok(self.out)
    }

    fn entry(
        &mut self,
        name: &str,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> Result<(), CpioError> {
        if name.is_empty() || name.starts_with('/') || name.contains('\0') || name == "TRAILER!!!" {
            return Err(CpioError::BadName(name.to_string()));
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.raw_entry(name, ino, mode, nlink, rdev, data)
    }

    fn raw_entry(
        &mut self,
        name: &str,
        ino: u32,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> Result<(), CpioError> {
        let size = u32::try_from(data.len()).map_err(|_| CpioError::TooLarge {
            name: name.to_string(),
            size: data.len(),
        })?;
        let name_len =
            u32::try_from(name.len() + 1).map_err(|_| CpioError::BadName(name.into()))?;
        // ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor namesize check
        let fields = [
            ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev.0, rdev.1, name_len, 0,
        ];
        let mut header = String::with_capacity(110);
        header.push_str("070701");
        for field in fields {
            header.push_str(&format!("{field:08x}"));
        }
        self.put(header.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()?;
        self.put(data)?;
        self.pad()
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), CpioError> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> Result<(), CpioError> {
        let rem = usize::try_from(self.written % 4).unwrap_or(0);
        if rem != 0 {
            self.put(&[0; 4][..4 - rem])?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut w = CpioWriter::new(Vec::new());
        w.dir("dev", 0o755).unwrap();
        w.char_device("dev/console", 0o600, 5, 1).unwrap();
        w.file("init", 0o755, b"#!hello\n").unwrap();
        w.file("empty", 0o644, b"").unwrap();
        w.symlink("sbin", "init").unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn headers_have_the_newc_layout() {
        let bytes = sample();
        assert_eq!(&bytes[..6], b"070701");
        let field = |entry: &[u8], i: usize| {
            u32::from_str_radix(
                std::str::from_utf8(&entry[6 + 8 * i..14 + 8 * i]).unwrap(),
                16,
            )
            .unwrap()
        };
        assert_eq!(field(&bytes, 1), 0o040_755, "mode of dev");
        assert_eq!(field(&bytes, 11), 4, "namesize counts the NUL");
        assert_eq!(&bytes[110..114], b"dev\0");
        // Header and name end at 114: two NULs pad to 116, where the next header starts.
        assert_eq!(&bytes[114..122], b"\x00\x00070701");
        assert_eq!(field(&bytes[116..], 9), 5, "rdevmajor of console");
        assert_eq!(bytes.len() % 4, 0);
        assert!(bytes.windows(10).any(|w| w == b"TRAILER!!!"));
    }

    #[test]
    fn refuses_names_the_kernel_would_misread() {
        let mut w = CpioWriter::new(Vec::new());
        for name in ["", "/init", "a\0b", "TRAILER!!!"] {
            assert!(matches!(
                w.file(name, 0o644, b""),
                Err(CpioError::BadName(_))
            ));
        }
    }

    /// GNU cpio (installed by scripts/setup-host.sh) reads back exactly what was written.
    #[test]
    fn gnu_cpio_extracts_the_archive() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("a.cpio");
        std::fs::write(&archive, sample()).unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let status = std::process::Command::new("cpio")
            .args([
                "-i",
                "--quiet",
                "--no-absolute-filenames",
                "--nonmatching",
                "dev/console",
            ])
            .current_dir(&out)
            .stdin(std::fs::File::open(&archive).unwrap())
            .status()
            .expect("cpio is installed by scripts/setup-host.sh");
        assert!(status.success());
        assert_eq!(std::fs::read(out.join("init")).unwrap(), b"#!hello\n");
        assert_eq!(std::fs::read(out.join("empty")).unwrap(), b"");
        assert_eq!(
            std::fs::read_link(out.join("sbin")).unwrap().to_str(),
            Some("init")
        );
        let listing = std::process::Command::new("cpio")
            .args(["-t", "-v", "--quiet"])
            .stdin(std::fs::File::open(&archive).unwrap())
            .output()
            .unwrap();
        let listing = String::from_utf8(listing.stdout).unwrap();
        assert!(
            listing.lines().any(|l| l.starts_with("crw-------")
                && l.contains("5,")
                && l.ends_with("dev/console")),
            "{listing}"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(out.join("init"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
    }
}
