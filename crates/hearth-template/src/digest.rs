//! Content digests (`sha256:<64 hex>`): parsed once at the boundary, and a reader that hashes
//! what passes through it, so every blob and every layer's content is checked as it streams.

use std::fmt;
use std::io::{self, Read};

use sha2::{Digest as _, Sha256};

/// A SHA-256 content digest. Other algorithms are refused: every registry and builder writes
/// SHA-256, and a digest hearth cannot check is no digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    hex: String,
}

/// Why a digest string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a sha256 digest (sha256: and 64 lowercase hex digits)")]
pub struct BadDigest(pub String);

impl Digest {
    pub fn parse(text: &str) -> Result<Self, BadDigest> {
        let hex = text
            .strip_prefix("sha256:")
            .filter(|hex| is_hex64(hex))
            .ok_or_else(|| BadDigest(text.to_owned()))?;
        Ok(Self {
            hex: hex.to_owned(),
        })
    }

    /// A digest from its 64 hex digits alone (a layer directory's name, say).
    pub fn from_hex(hex: &str) -> Result<Self, BadDigest> {
        if is_hex64(hex) {
            Ok(Self {
                hex: hex.to_owned(),
            })
        } else {
            Err(BadDigest(hex.to_owned()))
        }
    }

    pub fn of(bytes: &[u8]) -> Self {
        Self {
            hex: hex(&Sha256::digest(bytes)),
        }
    }

    /// The 64 hex digits, safe as a file name.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The first 12 hex digits, for people.
    pub fn short(&self) -> &str {
        &self.hex[..12]
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

fn is_hex64(text: &str) -> bool {
    text.len() == 64
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn hex(bytes: &[u8]) -> String {
    use fmt::Write as _;
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// A reader that hashes everything read through it and refuses to yield more than `limit`
/// bytes (a decompression bomb ends in an error, not a full disk).
#[derive(Debug)]
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    read: u64,
    limit: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R, limit: u64) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            read: 0,
            limit,
        }
    }

    /// Bytes read so far.
    pub fn bytes_read(&self) -> u64 {
        self.read
    }

    /// Reads what is left (a tar's padding after its end marker counts for the digest) and
    /// returns the digest of everything.
    pub fn finish(mut self) -> io::Result<(Digest, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((
            Digest {
                hex: hex(&self.hasher.finalize()),
            },
            self.read,
        ))
    }
}

/// Hashes chunks as they arrive (a download), counting their bytes.
#[derive(Default)]
pub struct StreamHasher {
    hasher: Sha256,
    len: u64,
}

impl fmt::Debug for StreamHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StreamHasher({} bytes)", self.len)
    }
}

impl StreamHasher {
    pub fn update(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
        self.len += bytes.len() as u64;
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn finish(self) -> (Digest, u64) {
        (
            Digest {
                hex: hex(&self.hasher.finalize()),
            },
            self.len,
        )
    }
}

/// The error a [`HashingReader`] returns past its limit (recognised by [`is_over_limit`]).
const OVER_LIMIT: &str = "stream exceeds its size limit";

/// Whether an I/O error is a [`HashingReader`]'s limit.
pub fn is_over_limit(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::FileTooLarge && err.to_string() == OVER_LIMIT
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.read += n as u64;
        if self.read > self.limit {
            return Err(io::Error::new(io::ErrorKind::FileTooLarge, OVER_LIMIT));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_lowercase_sha256() {
        let hex = "a".repeat(64);
        assert_eq!(Digest::parse(&format!("sha256:{hex}")).unwrap().hex(), hex);
        for bad in [
            format!("sha512:{hex}"),
            format!("sha256:{}", "A".repeat(64)),
            format!("sha256:{}", "a".repeat(63)),
            format!("sha256:{}/..", "a".repeat(61)),
            hex.clone(),
        ] {
            assert!(Digest::parse(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hashing_reader_digests_and_stops_at_its_limit() {
        let (digest, n) = HashingReader::new(&b"hello"[..], 5).finish().unwrap();
        assert_eq!(digest, Digest::of(b"hello"));
        assert_eq!(n, 5);
        let err = HashingReader::new(&b"hello!"[..], 5).finish().unwrap_err();
        assert!(is_over_limit(&err), "{err}");
    }
}
