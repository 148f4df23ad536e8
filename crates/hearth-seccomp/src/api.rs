//! The entry point the CLI and the backends use to get a policy.

use std::path::{Path, PathBuf};

use crate::harden::HardenError;
use crate::policy::{PolicyError, SeccompPolicy};
use crate::profiles::profile;
use crate::validate::{validate, ValidationErrors};

/// Why a policy could not be loaded; names the profile or file.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("{path}: {source}")]
    Invalid {
        path: PathBuf,
        source: ValidationErrors,
    },
    #[error("{name}: {source}")]
    Harden { name: String, source: HardenError },
}

/// A built-in profile by name, or else a policy file (`.toml`/`.json`), validated.
///
/// A name wins over a file of the same name in the working directory; write `./default.toml`
/// to mean the file.
pub fn load_policy(name_or_path: &str) -> Result<SeccompPolicy, LoadError> {
    if let Some(p) = profile(name_or_path) {
        return Ok(p);
    }
    let path = Path::new(name_or_path);
    let policy = SeccompPolicy::from_path(path)?;
    validate(&policy).map_err(|source| LoadError::Invalid {
        path: path.to_owned(),
        source,
    })?;
    Ok(policy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_files_load() {
        assert!(load_policy("strict").is_ok());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(
            &path,
            "default_action = \"allow\"\n[[rules]]\nsyscall = \"mount\"\naction = \"audit_deny\"\n",
        )
        .unwrap();
        let p = load_policy(path.to_str().unwrap()).unwrap();
        assert_eq!(p.rules.len(), 1);
        std::fs::write(
            &path,
            "default_action = \"allow\"\n[[rules]]\nsyscall = \"mountt\"\naction = \"log\"\n",
        )
        .unwrap();
        let err = load_policy(path.to_str().unwrap()).unwrap_err().to_string();
        assert!(
            err.contains("p.toml") && err.contains("rule 0 (mountt)"),
            "{err}"
        );
    }
}
