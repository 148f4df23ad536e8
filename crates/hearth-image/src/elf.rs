//! Just enough ELF64 reading for the image build: is a binary static, and what a kernel
//! module's `.modinfo` section says (Debian's kernel package ships no `modules.dep`, and depmod
//! may not be installed, so the dependencies come from the modules themselves).

/// A file that is not the little-endian ELF64 the build expects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ElfError {
    #[error("not a little-endian ELF64 file")]
    NotElf64,
    #[error("ELF {0} table lies outside the file")]
    OutOfBounds(&'static str),
}

const PT_INTERP: u32 = 3;

fn u16_at(data: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(data.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(data: &[u8], at: usize) -> Option<usize> {
    let value = u64::from_le_bytes(data.get(at..at + 8)?.try_into().ok()?);
    usize::try_from(value).ok()
}

fn check_header(data: &[u8]) -> Result<(), ElfError> {
    // Magic, ELFCLASS64, ELFDATA2LSB.
    if data.len() < 64 || &data[..4] != b"\x7fELF" || data[4] != 2 || data[5] != 1 {
        return Err(ElfError::NotElf64);
    }
    Ok(())
}

/// True when the executable asks for no dynamic loader (static or static-pie).
pub fn is_static_executable(data: &[u8]) -> Result<bool, ElfError> {
    check_header(data)?;
    let bad = || ElfError::OutOfBounds("program header");
    let phoff = u64_at(data, 0x20).ok_or_else(bad)?;
    let entsize = usize::from(u16_at(data, 0x36).ok_or_else(bad)?);
    let count = usize::from(u16_at(data, 0x38).ok_or_else(bad)?);
    for i in 0..count {
        let at = phoff
            .checked_add(i.checked_mul(entsize).ok_or_else(bad)?)
            .ok_or_else(bad)?;
        if u32_at(data, at).ok_or_else(bad)? == PT_INTERP {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The bytes of the section called `name`, if the file has one.
pub fn section<'a>(data: &'a [u8], name: &str) -> Result<Option<&'a [u8]>, ElfError> {
    check_header(data)?;
    let bad = || ElfError::OutOfBounds("section header");
    let shoff = u64_at(data, 0x28).ok_or_else(bad)?;
    let entsize = usize::from(u16_at(data, 0x3A).ok_or_else(bad)?);
    let count = usize::from(u16_at(data, 0x3C).ok_or_else(bad)?);
    let strndx = usize::from(u16_at(data, 0x3E).ok_or_else(bad)?);
    let header = |i: usize| -> Result<(usize, usize, usize), ElfError> {
        let at = shoff
            .checked_add(i.checked_mul(entsize).ok_or_else(bad)?)
            .ok_or_else(bad)?;
        let name = usize::try_from(u32_at(data, at).ok_or_else(bad)?).map_err(|_| bad())?;
        let offset = u64_at(data, at + 24).ok_or_else(bad)?;
        let size = u64_at(data, at + 32).ok_or_else(bad)?;
        Ok((name, offset, size))
    };
    let bytes = |offset: usize, size: usize| {
        offset
            .checked_add(size)
            .and_then(|end| data.get(offset..end))
            .ok_or(ElfError::OutOfBounds("section"))
    };
    if strndx >= count {
        return Err(bad());
    }
    let (_, str_off, str_size) = header(strndx)?;
    let names = bytes(str_off, str_size)?;
    for i in 0..count {
        let (name_at, offset, size) = header(i)?;
        let Some(rest) = names.get(name_at..) else {
            continue;
        };
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        if &rest[..end] == name.as_bytes() {
            return bytes(offset, size).map(Some);
        }
    }
    Ok(None)
}

/// The value of `key` in a kernel module's `.modinfo` (NUL-separated `key=value` strings).
pub fn modinfo(data: &[u8], key: &str) -> Result<Option<String>, ElfError> {
    let Some(info) = section(data, ".modinfo")? else {
        return Ok(None);
    };
    Ok(info
        .split(|&b| b == 0)
        .filter_map(|entry| entry.strip_prefix(key.as_bytes())?.strip_prefix(b"="))
        .map(|value| String::from_utf8_lossy(value).into_owned())
        .next())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_test_binary_is_dynamic_and_has_a_text_section() {
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        // cargo test binaries link glibc dynamically unless crt-static was asked for.
        let expected = !cfg!(target_feature = "crt-static");
        assert_eq!(is_static_executable(&exe).unwrap(), !expected);
        assert!(section(&exe, ".text")
            .unwrap()
            .is_some_and(|s| !s.is_empty()));
        assert_eq!(section(&exe, ".modinfo").unwrap(), None);
    }

    #[test]
    fn garbage_and_truncated_files_are_errors_not_panics() {
        assert_eq!(
            is_static_executable(b"#!/bin/sh\n"),
            Err(ElfError::NotElf64)
        );
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        for cut in [64, 200, 4096] {
            // Headers point past the end: an error, never an out-of-range slice.
            let _ = section(&exe[..cut], ".text");
            let _ = is_static_executable(&exe[..cut]);
        }
    }
}
