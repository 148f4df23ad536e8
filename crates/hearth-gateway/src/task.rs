//! Task identity at the gateway: the validated [`TaskId`] and the per-task bearer
//! [`GatewayToken`] a sandbox presents instead of the real API key.

use std::fmt;

use rand::RngCore;
use serde::Serialize;
use subtle::ConstantTimeEq;

/// Longest accepted task id, in bytes.
pub const MAX_TASK_ID_LEN: usize = 128;

/// Prefix of every gateway token, so a leaked one is recognisable in a scan.
pub const TOKEN_PREFIX: &str = "hgt_";

/// Secret bytes in a token: 256 bits.
const TOKEN_BYTES: usize = 32;

/// Why a string is not a valid task id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskIdError {
    #[error("task id is empty")]
    Empty,
    #[error("task id is {len} bytes long; at most {MAX_TASK_ID_LEN} are allowed")]
    TooLong { len: usize },
    #[error("task id has {found:?} at position {position}; only ASCII letters, digits, '-', '_' and '.' are allowed")]
    BadChar { found: char, position: usize },
}

/// A validated task id: 1 to 128 ASCII letters, digits, `-`, `_` or `.`. The host's own task ids
/// (UUIDs, sandbox-style ids) all fit, and the id is safe to put in logs and JSON as is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(into = "String")]
pub struct TaskId(String);

impl TaskId {
    /// Checks `raw` and wraps it; the error names the first offending character.
    pub fn parse(raw: &str) -> Result<Self, TaskIdError> {
        if raw.is_empty() {
            return Err(TaskIdError::Empty);
        }
        for (position, found) in raw.chars().enumerate() {
            if !(found.is_ascii_alphanumeric() || matches!(found, '-' | '_' | '.')) {
                return Err(TaskIdError::BadChar { found, position });
            }
        }
        if raw.len() > MAX_TASK_ID_LEN {
            return Err(TaskIdError::TooLong { len: raw.len() });
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<TaskId> for String {
    fn from(id: TaskId) -> Self {
        id.0
    }
}

/// A per-task bearer token: 256 random bits, shown as `hgt_` and 64 hex digits.
///
/// It is the only credential a sandbox holds. `Debug` never shows it; [`GatewayToken::expose`]
/// is the one way to get the text, for handing it to the sandbox.
#[derive(Clone, PartialEq, Eq)]
pub struct GatewayToken([u8; TOKEN_BYTES]);

impl GatewayToken {
    /// A fresh token from the thread-local CSPRNG (ChaCha, seeded from the OS).
    pub fn generate() -> Self {
        let mut bytes = [0u8; TOKEN_BYTES];
        rand::rng().fill_bytes(&mut bytes);
        Self(bytes)
    }

    /// The bearer text to give the sandbox (`Authorization: Bearer <this>`).
    pub fn expose(&self) -> String {
        let mut text = String::with_capacity(TOKEN_PREFIX.len() + 2 * TOKEN_BYTES);
        text.push_str(TOKEN_PREFIX);
        for byte in self.0 {
            text.push(hex_digit(byte >> 4));
            text.push(hex_digit(byte & 0x0f));
        }
        text
    }

    /// Decodes presented bearer text; `None` for anything that is not a well-formed token. Only
    /// the shape is checked here: matching is [`GatewayToken::matches`], in constant time.
    pub(crate) fn decode(text: &str) -> Option<[u8; TOKEN_BYTES]> {
        let hex = text.strip_prefix(TOKEN_PREFIX)?.as_bytes();
        if hex.len() != 2 * TOKEN_BYTES {
            return None;
        }
        let mut bytes = [0u8; TOKEN_BYTES];
        for (byte, pair) in bytes.iter_mut().zip(hex.chunks_exact(2)) {
            *byte = (hex_value(pair[0])? << 4) | hex_value(pair[1])?;
        }
        Some(bytes)
    }

    /// Constant-time comparison, so response timing tells a caller nothing about how much of a
    /// guessed token was right.
    pub(crate) fn matches(&self, presented: &[u8; TOKEN_BYTES]) -> bool {
        self.0.ct_eq(presented).into()
    }
}

impl fmt::Debug for GatewayToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("GatewayToken(<redacted>)")
    }
}

fn hex_digit(nibble: u8) -> char {
    char::from(b"0123456789abcdef"[usize::from(nibble & 0x0f)])
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids_are_validated() {
        assert_eq!(TaskId::parse("task-1_a.b").unwrap().as_str(), "task-1_a.b");
        assert_eq!(TaskId::parse(""), Err(TaskIdError::Empty));
        assert_eq!(
            TaskId::parse("a b"),
            Err(TaskIdError::BadChar {
                found: ' ',
                position: 1
            })
        );
        let long = "a".repeat(MAX_TASK_ID_LEN + 1);
        assert_eq!(TaskId::parse(&long), Err(TaskIdError::TooLong { len: 129 }));
    }

    #[test]
    fn tokens_round_trip_and_are_distinct() {
        let token = GatewayToken::generate();
        let text = token.expose();
        assert!(text.starts_with(TOKEN_PREFIX));
        assert_eq!(text.len(), TOKEN_PREFIX.len() + 64);
        let decoded = GatewayToken::decode(&text).unwrap();
        assert!(token.matches(&decoded));
        assert!(!GatewayToken::generate().matches(&decoded));
        assert_ne!(GatewayToken::generate(), GatewayToken::generate());
    }

    #[test]
    fn malformed_tokens_do_not_decode() {
        let text = GatewayToken::generate().expose();
        assert!(GatewayToken::decode(&text[1..]).is_none());
        assert!(GatewayToken::decode(&text[..text.len() - 1]).is_none());
        assert!(GatewayToken::decode(&text.to_uppercase()).is_none());
        assert!(GatewayToken::decode("").is_none());
    }

    #[test]
    fn debug_hides_the_token() {
        let token = GatewayToken::generate();
        let shown = format!("{token:?}");
        assert!(!shown.contains(&token.expose()[TOKEN_PREFIX.len()..]));
        assert!(shown.contains("redacted"));
    }
}
