//! The raw seccomp BPF file that `hearth-guest serve --seccomp-bpf PATH` reads: the host
//! compiles a policy (`hearth_seccomp::render_bpf`), writes it in this format, and the guest
//! installs the programs in every process it starts. (`hearth seccomp render --target bpf
//! --output FILE` writes one.)
//!
//! Layout, all integers little-endian:
//!
//! ```text
//! magic     8 bytes   "HRTHBPF1"
//! programs  u32       how many programs follow (1..=16)
//! then per program:
//!   len     u32       instructions (1..=4096, the kernel's BPF_MAXINSNS)
//!   insns   len * 8   struct sock_filter: u16 code, u8 jt, u8 jf, u32 k
//! ```
//!
//! Programs are installed in file order; the kernel runs all of them on every call and takes
//! the most severe answer.

/// The first bytes of every file.
pub const MAGIC: &[u8; 8] = b"HRTHBPF1";
/// The most programs a file may hold.
pub const MAX_PROGRAMS: usize = 16;
/// The kernel's `BPF_MAXINSNS`.
pub const MAX_INSTRUCTIONS: usize = 4096;
const INSN_BYTES: usize = 8;

/// One `struct sock_filter`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Instruction {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

/// A malformed file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BpfFileError {
    #[error("not a hearth BPF file (bad magic)")]
    Magic,
    #[error("file ends early: {0}")]
    Truncated(&'static str),
    #[error("{0} programs; a file holds 1 to {MAX_PROGRAMS}")]
    ProgramCount(usize),
    #[error("program {index} has {len} instructions; 1 to {MAX_INSTRUCTIONS} allowed")]
    ProgramLength { index: usize, len: usize },
    #[error("a program's raw bytes are {0} long, not a multiple of 8")]
    RawLength(usize),
    #[error("{0} bytes after the last program")]
    Trailing(usize),
}

/// Encodes programs given as raw `struct sock_filter` arrays (what `BpfFilters::to_raw` gives).
pub fn encode(programs: &[Vec<u8>]) -> Result<Vec<u8>, BpfFileError> {
    if programs.is_empty() || programs.len() > MAX_PROGRAMS {
        return Err(BpfFileError::ProgramCount(programs.len()));
    }
    let mut out = Vec::with_capacity(12 + programs.iter().map(|p| p.len() + 4).sum::<usize>());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&count(programs.len()).to_le_bytes());
    for (index, raw) in programs.iter().enumerate() {
        if raw.len() % INSN_BYTES != 0 {
            return Err(BpfFileError::RawLength(raw.len()));
        }
        let len = raw.len() / INSN_BYTES;
        if len == 0 || len > MAX_INSTRUCTIONS {
            return Err(BpfFileError::ProgramLength { index, len });
        }
        out.extend_from_slice(&count(len).to_le_bytes());
        out.extend_from_slice(raw);
    }
    Ok(out)
}

/// Lengths are bounded by the checks above, far below `u32::MAX`.
fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Decodes and checks a file.
pub fn decode(bytes: &[u8]) -> Result<Vec<Vec<Instruction>>, BpfFileError> {
    let mut rest = bytes
        .strip_prefix(MAGIC.as_slice())
        .ok_or(BpfFileError::Magic)?;
    let programs = take_u32(&mut rest, "program count")?;
    if programs == 0 || programs > MAX_PROGRAMS {
        return Err(BpfFileError::ProgramCount(programs));
    }
    let mut out = Vec::with_capacity(programs);
    for index in 0..programs {
        let len = take_u32(&mut rest, "program length")?;
        if len == 0 || len > MAX_INSTRUCTIONS {
            return Err(BpfFileError::ProgramLength { index, len });
        }
        if rest.len() < len * INSN_BYTES {
            return Err(BpfFileError::Truncated("instructions"));
        }
        let (insns, tail) = rest.split_at(len * INSN_BYTES);
        rest = tail;
        out.push(insns.chunks_exact(INSN_BYTES).map(instruction).collect());
    }
    if !rest.is_empty() {
        return Err(BpfFileError::Trailing(rest.len()));
    }
    Ok(out)
}

fn take_u32(rest: &mut &[u8], what: &'static str) -> Result<usize, BpfFileError> {
    let (head, tail) = rest
        .split_first_chunk::<4>()
        .ok_or(BpfFileError::Truncated(what))?;
    *rest = tail;
    Ok(usize::try_from(u32::from_le_bytes(*head)).unwrap_or(usize::MAX))
}

fn instruction(raw: &[u8]) -> Instruction {
    Instruction {
        code: u16::from_le_bytes([raw[0], raw[1]]),
        jt: raw[2],
        jf: raw[3],
        k: u32::from_le_bytes([raw[4], raw[5], raw[6], raw[7]]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_damage() {
        // ret ALLOW; ld [0]; ret ERRNO|1
        let one = vec![0x06, 0, 0, 0, 0, 0, 0xff, 0x7f];
        let two = [
            vec![0x20, 0, 1, 2, 0, 0, 0, 0],
            vec![0x06, 0, 0, 0, 1, 0, 5, 0],
        ]
        .concat();
        let file = encode(&[one, two]).unwrap();
        let programs = decode(&file).unwrap();
        assert_eq!(programs.len(), 2);
        assert_eq!(programs[0][0].k, 0x7fff_0000);
        assert_eq!(
            programs[1][0],
            Instruction {
                code: 0x20,
                jt: 1,
                jf: 2,
                k: 0
            }
        );
        assert_eq!(decode(b"nonsense"), Err(BpfFileError::Magic));
        assert!(matches!(
            decode(&file[..file.len() - 1]),
            Err(BpfFileError::Truncated(_))
        ));
        let mut long = file.clone();
        long.push(0);
        assert_eq!(decode(&long), Err(BpfFileError::Trailing(1)));
        assert!(encode(&[]).is_err());
        assert!(encode(&[vec![0; 7]]).is_err());
    }
}
