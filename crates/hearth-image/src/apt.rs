//! Debian packages through the host's own apt: resolve a package set to exact versions,
//! download the `.deb` files, unpack them with `dpkg-deb -x`. No chroot, no maintainer scripts.
//!
//! Resolution asks `apt-get --simulate install` against an empty dpkg status file, so apt
//! computes the full dependency closure as if installing into an empty system, from the host's
//! package lists (`apt-get update` refreshes them; the image hash follows the versions).

use std::path::{Path, PathBuf};
use std::process::Command;

/// A failed apt or dpkg-deb step.
#[derive(Debug, thiserror::Error)]
pub enum AptError {
    #[error("run {program}: {source}")]
    Spawn {
        program: &'static str,
        source: std::io::Error,
    },
    #[error("{program} {what} failed ({status}): {stderr}")]
    Failed {
        program: &'static str,
        what: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("apt resolved no package named {0}; run `apt-get update`?")]
    Missing(String),
    #[error("apt-get download left no .deb for {name}={version} in {dir}")]
    NoDeb {
        name: String,
        version: String,
        dir: PathBuf,
    },
}

/// One package at one exact version.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Package {
    pub name: String,
    pub version: String,
}

impl std::fmt::Display for Package {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", self.name, self.version)
    }
}

fn run(program: &'static str, what: &str, cmd: &mut Command) -> Result<String, AptError> {
    let out = cmd
        .env("LC_ALL", "C")
        .output()
        .map_err(|source| AptError::Spawn { program, source })?;
    if !out.status.success() {
        return Err(AptError::Failed {
            program,
            what: what.to_string(),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The closure of `roots` (no Recommends), sorted by name. `scratch` holds the empty status file.
pub fn resolve(roots: &[&str], scratch: &Path) -> Result<Vec<Package>, AptError> {
    let status = scratch.join("dpkg-status");
    std::fs::write(&status, b"").map_err(|source| AptError::Io {
        path: status.clone(),
        source,
    })?;
    let mut cmd = Command::new("apt-get");
    cmd.arg("--simulate")
        .arg("--no-install-recommends")
        .arg(format!("-oDir::State::status={}", status.display()))
        .arg("-oDebug::NoLocking=1")
        .arg("-oAPT::Get::Show-Versions=0")
        .arg("install")
        .args(roots);
    let out = run("apt-get", "--simulate install", &mut cmd)?;
    let mut packages = parse_simulation(&out);
    packages.sort();
    for root in roots {
        if !packages.iter().any(|p| p.name == *root) {
            return Err(AptError::Missing((*root).to_string()));
        }
    }
    Ok(packages)
}

/// `Inst NAME (VERSION ARCHIVE [ARCH])` lines of `apt-get --simulate`.
fn parse_simulation(out: &str) -> Vec<Package> {
    out.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("Inst ")?;
            let (name, rest) = rest.split_once(' ')?;
            let version = rest.strip_prefix('(')?.split_whitespace().next()?;
            Some(Package {
                name: name.to_string(),
                version: version.to_string(),
            })
        })
        .collect()
}

/// The start of the file name `apt-get download` gives a package, up to the architecture
/// (`:` of an epoch becomes `%3a`).
pub fn deb_file_name(pkg: &Package) -> String {
    format!("{}_{}_", pkg.name, pkg.version.replace(':', "%3a"))
}

/// Ensures every package's `.deb` is in `cache`, downloading the missing ones into `scratch`
/// first so the cache never holds a partial file. Returns the paths in `packages`' order.
pub fn download(
    packages: &[Package],
    cache: &Path,
    scratch: &Path,
) -> Result<Vec<PathBuf>, AptError> {
    let missing: Vec<&Package> = packages
        .iter()
        .filter(|p| find_deb(cache, p).is_none())
        .collect();
    if !missing.is_empty() {
        let mut cmd = Command::new("apt-get");
        cmd.arg("download")
            .args(missing.iter().map(|p| p.to_string()))
            .current_dir(scratch);
        run("apt-get", "download", &mut cmd)?;
        for pkg in &missing {
            let from = find_deb(scratch, pkg).ok_or_else(|| AptError::NoDeb {
                name: pkg.name.clone(),
                version: pkg.version.clone(),
                dir: scratch.to_path_buf(),
            })?;
            let to = cache.join(from.file_name().unwrap_or_default());
            std::fs::rename(&from, &to).map_err(|source| AptError::Io { path: to, source })?;
        }
    }
    packages
        .iter()
        .map(|p| {
            find_deb(cache, p).ok_or_else(|| AptError::NoDeb {
                name: p.name.clone(),
                version: p.version.clone(),
                dir: cache.to_path_buf(),
            })
        })
        .collect()
}

/// `NAME_VERSION_ARCH.deb` in `dir`, whatever the architecture (`amd64` or `all`).
fn find_deb(dir: &Path, pkg: &Package) -> Option<PathBuf> {
    let prefix = deb_file_name(pkg);
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|name| {
            name.strip_prefix(&prefix)
                .is_some_and(|arch| arch.ends_with(".deb") && !arch.contains('_'))
        })
        .map(|name| dir.join(name))
}

/// Unpacks a package's files (not its scripts) into `dest`.
pub fn extract(deb: &Path, dest: &Path) -> Result<(), AptError> {
    let mut cmd = Command::new("dpkg-deb");
    cmd.arg("-x").arg(deb).arg(dest);
    run("dpkg-deb", &format!("-x {}", deb.display()), &mut cmd).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simulation_lines_become_exact_versions() {
        let out = "Reading package lists...\n\
            Inst libc6 (2.36-9+deb12u14 Debian:12.15/oldstable [amd64]) []\n\
            Inst libgmp10 (2:6.2.1+dfsg1-1.1 Debian:12.15/oldstable [amd64])\n\
            Conf libc6 (2.36-9+deb12u14 Debian:12.15/oldstable [amd64])\n\
            Inst media-types (10.0.0 Debian:12.15/oldstable [all])\n";
        let pkgs = parse_simulation(out);
        let names: Vec<String> = pkgs.iter().map(ToString::to_string).collect();
        assert_eq!(
            names,
            [
                "libc6=2.36-9+deb12u14",
                "libgmp10=2:6.2.1+dfsg1-1.1",
                "media-types=10.0.0"
            ]
        );
        assert_eq!(deb_file_name(&pkgs[1]), "libgmp10_2%3a6.2.1+dfsg1-1.1_");
    }

    #[test]
    fn finds_a_deb_of_any_architecture_but_not_a_longer_name() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["media-types_10.0.0_all.deb", "libc6_2.36_amd64.deb.partial"] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        let pkg = |name: &str, version: &str| Package {
            name: name.into(),
            version: version.into(),
        };
        assert!(find_deb(dir.path(), &pkg("media-types", "10.0.0")).is_some());
        assert!(find_deb(dir.path(), &pkg("libc6", "2.36")).is_none());
        assert!(find_deb(dir.path(), &pkg("media", "types_10.0.0")).is_none());
    }
}
