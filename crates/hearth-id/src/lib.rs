//! `SandboxId`: the one validated name of a sandbox, and every name derived from it.
//!
//! Ids come from users (`--id`), from task ids and from hearth's own generator. They are checked
//! once, here, and code past this boundary only ever sees a `SandboxId`. Every host object a
//! sandbox owns (directory, network namespace, veth, nft table, cgroup, runtime container) is
//! named by [`SandboxId::names`], so cleanup and reconciliation can find them all again.

use std::fmt;
use std::str::FromStr;

use rand::Rng;
use serde::{Deserialize, Serialize};

/// Longest accepted id, in bytes (all ids are ASCII).
pub const MAX_ID_LEN: usize = 64;

/// Prefix of every host object hearth names; reconciliation looks for it.
pub const OBJECT_PREFIX: &str = "hearth-";

/// Prefix of hearth's network links. Interface names are limited to 15 bytes (IFNAMSIZ - 1), so
/// links carry a short prefix and a hash of the id instead of the id itself.
pub const LINK_PREFIX: &str = "hth";

/// Why a string is not a valid sandbox id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("sandbox id is empty")]
    Empty,
    #[error("sandbox id is {len} characters long; at most {MAX_ID_LEN} are allowed")]
    TooLong { len: usize },
    #[error("sandbox id must not start with '-'")]
    LeadingDash,
    #[error("sandbox id has {found:?} at position {position}; only a-z, 0-9 and '-' are allowed")]
    BadChar { found: char, position: usize },
}

/// A validated sandbox id: ASCII `[a-z0-9-]`, 1 to 64 characters, not starting with `-`.
///
/// Such an id cannot contain `/`, `.` or NUL, so it is always a single, plain path component.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SandboxId(String);

impl SandboxId {
    /// Checks `raw` and wraps it. The error names the first offending character and its
    /// (0-based, character) position.
    pub fn parse(raw: &str) -> Result<Self, IdError> {
        if raw.is_empty() {
            return Err(IdError::Empty);
        }
        for (position, found) in raw.chars().enumerate() {
            let allowed = found.is_ascii_lowercase() || found.is_ascii_digit() || found == '-';
            if !allowed {
                return Err(IdError::BadChar { found, position });
            }
        }
        // Every char is ASCII now, so the byte length is the character count.
        if raw.len() > MAX_ID_LEN {
            return Err(IdError::TooLong { len: raw.len() });
        }
        if raw.starts_with('-') {
            return Err(IdError::LeadingDash);
        }
        Ok(Self(raw.to_owned()))
    }

    /// A fresh random id such as `sb-k3x9q2m7w1ab` (60 bits of randomness).
    pub fn generate() -> Self {
        Self(random_name("sb"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The names of every host object this sandbox owns. This is the only place they are made.
    pub fn names(&self) -> SandboxNames {
        let hash = fnv1a_64(self.0.as_bytes());
        // 11 hex digits (44 bits) keep link names at 15 bytes with a 4-byte prefix.
        let short = format!("{:011x}", hash & 0x0fff_ffff_ffff);
        SandboxNames {
            dir: self.0.clone(),
            container: format!("{OBJECT_PREFIX}{}", self.0),
            netns: format!("{OBJECT_PREFIX}{}", self.0),
            // nft identifiers may not contain '-' unquoted; ids never contain '_', so this
            // substitution is one-to-one.
            nft_table: format!("hearth_{}", self.0.replace('-', "_")),
            cgroup: format!("/hearth/{}", self.0),
            veth_host: format!("{LINK_PREFIX}v{short}"),
            veth_peer: format!("{LINK_PREFIX}p{short}"),
            tap: format!("{LINK_PREFIX}t{short}"),
        }
    }
}

/// `PREFIX-` and 12 random lowercase letters and digits (60 bits): a name valid as an id.
pub fn random_name(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let suffix: String = (0..12)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect();
    format!("{prefix}-{suffix}")
}

impl fmt::Display for SandboxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for SandboxId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for SandboxId {
    type Error = IdError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<SandboxId> for String {
    fn from(id: SandboxId) -> Self {
        id.0
    }
}

/// Names of the host objects owned by one sandbox, all derived from its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxNames {
    /// Directory name under the runtime root's `sandboxes/`.
    pub dir: String,
    /// Container id given to the OCI runtime.
    pub container: String,
    /// Network namespace name (under `/run/netns`).
    pub netns: String,
    /// nftables table name.
    pub nft_table: String,
    /// cgroup path given to the OCI runtime (`linux.cgroupsPath`).
    pub cgroup: String,
    /// Host side of the sandbox's veth pair.
    pub veth_host: String,
    /// Sandbox side of the veth pair before it is moved into the namespace and renamed `eth0`.
    pub veth_peer: String,
    /// Tap device of a microVM sandbox.
    pub tap: String,
}

/// FNV-1a: a tiny hash that is stable across Rust releases, unlike `DefaultHasher`, so link names
/// survive an upgrade of hearth and reconciliation still recognises them.
fn fnv1a_64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::path::{Component, Path};

    #[test]
    fn rejects_bad_ids_naming_the_character() {
        let cases: &[(&str, IdError)] = &[
            ("", IdError::Empty),
            (
                "../etc",
                IdError::BadChar {
                    found: '.',
                    position: 0,
                },
            ),
            (
                "a/b",
                IdError::BadChar {
                    found: '/',
                    position: 1,
                },
            ),
            (
                "has space",
                IdError::BadChar {
                    found: ' ',
                    position: 3,
                },
            ),
            (
                "Upper",
                IdError::BadChar {
                    found: 'U',
                    position: 0,
                },
            ),
            (
                "caf\u{e9}",
                IdError::BadChar {
                    found: '\u{e9}',
                    position: 3,
                },
            ),
            (
                "a_b",
                IdError::BadChar {
                    found: '_',
                    position: 1,
                },
            ),
            (
                "nul\0",
                IdError::BadChar {
                    found: '\0',
                    position: 3,
                },
            ),
            ("-lead", IdError::LeadingDash),
        ];
        for (raw, want) in cases {
            assert_eq!(SandboxId::parse(raw).unwrap_err(), *want, "input {raw:?}");
        }
        let long = "a".repeat(65);
        assert_eq!(
            SandboxId::parse(&long).unwrap_err(),
            IdError::TooLong { len: 65 }
        );
        assert!(SandboxId::parse(&"a".repeat(64)).is_ok());
    }

    #[test]
    fn error_message_names_character_and_position() {
        let msg = SandboxId::parse("ab/c").unwrap_err().to_string();
        assert!(msg.contains("'/'") && msg.contains("position 2"), "{msg}");
    }

    #[test]
    fn generated_ids_are_valid_and_distinct() {
        let a = SandboxId::generate();
        let b = SandboxId::generate();
        assert_eq!(SandboxId::parse(a.as_str()).unwrap(), a);
        assert_ne!(a, b);
    }

    #[test]
    fn serde_validates() {
        assert!(serde_json::from_str::<SandboxId>("\"../x\"").is_err());
        let id: SandboxId = serde_json::from_str("\"ok-1\"").unwrap();
        assert_eq!(id.as_str(), "ok-1");
    }

    proptest! {
        /// Whatever a user types, an accepted id stays inside the runtime root.
        #[test]
        fn accepted_ids_stay_inside_root(raw in "\\PC{0,80}") {
            if let Ok(id) = SandboxId::parse(&raw) {
                let root = Path::new("/run/hearth/sandboxes");
                let joined = root.join(&id.names().dir);
                prop_assert!(joined.starts_with(root));
                let extra: Vec<_> = joined.strip_prefix(root).unwrap().components().collect();
                prop_assert_eq!(extra.len(), 1);
                prop_assert!(matches!(extra[0], Component::Normal(_)));
            }
        }

        /// Ids from the id alphabet: every derived name is valid for its kind of object.
        #[test]
        fn derived_names_fit_their_objects(raw in "[a-z0-9][a-z0-9-]{0,63}") {
            let id = SandboxId::parse(&raw).unwrap();
            let names = id.names();
            for link in [&names.veth_host, &names.veth_peer, &names.tap] {
                prop_assert!(link.len() <= 15, "{} too long", link);
                prop_assert!(link.starts_with(LINK_PREFIX));
            }
            prop_assert!(!names.netns.contains('/'));
            prop_assert!(names.container.starts_with(OBJECT_PREFIX));
            prop_assert!(names.nft_table.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
            prop_assert_eq!(names.cgroup.matches('/').count(), 2);
        }

        /// Distinct ids never share a table, namespace or directory name.
        #[test]
        fn derived_names_are_injective(a in "[a-z0-9][a-z0-9-]{0,20}", b in "[a-z0-9][a-z0-9-]{0,20}") {
            prop_assume!(a != b);
            let (na, nb) = (SandboxId::parse(&a).unwrap().names(), SandboxId::parse(&b).unwrap().names());
            prop_assert_ne!(na.nft_table, nb.nft_table);
            prop_assert_ne!(na.netns, nb.netns);
            prop_assert_ne!(na.dir, nb.dir);
        }
    }
}
