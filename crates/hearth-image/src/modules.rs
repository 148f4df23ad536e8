//! Which kernel modules the initramfs carries, and in which order `hearth-guest` loads them.
//!
//! A wanted module is skipped when the kernel has it built in (`modules.builtin`), included with
//! its dependencies (from each module's `.modinfo` `depends=`) when it is modular, and an error
//! when the kernel has neither, unless it is optional (9p: Debian's cloud kernel lacks it).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::elf::{self, ElfError};

/// Modules `hearth-guest` needs as init: the disk, console port, network, vsock, the rootfs.
pub const REQUIRED: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "virtio_console",
    "virtio_net",
    "vmw_vsock_virtio_transport",
    "ext4",
];

/// Modules used when present: the 9p workspace (`hearth.workspace=9p`), and ext4's crc32c
/// driver, a soft dependency that `.modinfo` `depends=` does not list (Debian's generic kernel
/// builds it as a module; without it ext4 refuses to mount).
pub const OPTIONAL: &[&str] = &["9pnet_virtio", "9p", "crc32c_generic"];

/// A module tree that cannot provide what the guest needs.
#[derive(Debug, thiserror::Error)]
pub enum ModulesError {
    #[error("read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("kernel module {path}: {source}")]
    Elf { path: PathBuf, source: ElfError },
    #[error("the kernel has no module {name} (neither built in nor under {dir})")]
    Missing { name: String, dir: PathBuf },
    #[error("kernel module dependencies form a cycle through {0}")]
    Cycle(String),
}

/// One module to load: its name and its path relative to `lib/modules/<release>/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    pub name: String,
    pub rel_path: PathBuf,
}

/// Module names use `_` where file names may use `-`.
fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

fn module_name(path: &Path) -> Option<String> {
    let file = path.file_name()?.to_str()?;
    Some(normalize(file.strip_suffix(".ko")?))
}

/// Every `.ko` under `dir/kernel`, by module name.
fn index(dir: &Path) -> Result<BTreeMap<String, PathBuf>, ModulesError> {
    let mut found = BTreeMap::new();
    let mut stack = vec![PathBuf::from("kernel")];
    while let Some(rel) = stack.pop() {
        let abs = dir.join(&rel);
        let read = std::fs::read_dir(&abs).map_err(|source| ModulesError::Read {
            path: abs.clone(),
            source,
        })?;
        for entry in read {
            let entry = entry.map_err(|source| ModulesError::Read {
                path: abs.clone(),
                source,
            })?;
            let child = rel.join(entry.file_name());
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(child);
            } else if let Some(name) = module_name(&child) {
                found.insert(name, child);
            }
        }
    }
    Ok(found)
}

fn builtin(dir: &Path) -> Result<BTreeSet<String>, ModulesError> {
    let path = dir.join("modules.builtin");
    let text = std::fs::read_to_string(&path).map_err(|source| ModulesError::Read {
        path: path.clone(),
        source,
    })?;
    Ok(text
        .lines()
        .filter_map(|line| module_name(Path::new(line.trim())))
        .collect())
}

fn depends(dir: &Path, rel: &Path) -> Result<Vec<String>, ModulesError> {
    let path = dir.join(rel);
    let data = std::fs::read(&path).map_err(|source| ModulesError::Read {
        path: path.clone(),
        source,
    })?;
    let deps = elf::modinfo(&data, "depends").map_err(|source| ModulesError::Elf {
        path: path.clone(),
        source,
    })?;
    Ok(deps
        .unwrap_or_default()
        .split(',')
        .filter(|d| !d.is_empty())
        .map(normalize)
        .collect())
}

/// The modules to load from `dir` (`lib/modules/<release>`), dependencies first.
pub fn select(
    dir: &Path,
    required: &[&str],
    optional: &[&str],
) -> Result<Vec<Module>, ModulesError> {
    let modular = index(dir)?;
    let builtin = builtin(dir)?;
    let mut order = Vec::new();
    let mut done = BTreeSet::new();
    let wanted = required
        .iter()
        .map(|n| (n, true))
        .chain(optional.iter().map(|n| (n, false)));
    for (name, required) in wanted {
        let name = normalize(name);
        if builtin.contains(&name) || (!required && !modular.contains_key(&name)) {
            continue;
        }
        visit(
            dir,
            &name,
            &modular,
            &builtin,
            &mut done,
            &mut Vec::new(),
            &mut order,
        )?;
    }
    Ok(order)
}

/// Depth-first: a module lands in `order` after everything it depends on.
fn visit(
    dir: &Path,
    name: &str,
    modular: &BTreeMap<String, PathBuf>,
    builtin: &BTreeSet<String>,
    done: &mut BTreeSet<String>,
    path: &mut Vec<String>,
    order: &mut Vec<Module>,
) -> Result<(), ModulesError> {
    if done.contains(name) || builtin.contains(name) {
        return Ok(());
    }
    if path.iter().any(|p| p == name) {
        return Err(ModulesError::Cycle(name.to_string()));
    }
    let rel = modular.get(name).ok_or_else(|| ModulesError::Missing {
        name: name.to_string(),
        dir: dir.to_path_buf(),
    })?;
    path.push(name.to_string());
    for dep in depends(dir, rel)? {
        visit(dir, &dep, modular, builtin, done, path, order)?;
    }
    path.pop();
    done.insert(name.to_string());
    order.push(Module {
        name: name.to_string(),
        rel_path: rel.clone(),
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 relocatable with one `.modinfo` section, enough for `elf::modinfo`.
    pub(crate) fn fake_module(depends: &str) -> Vec<u8> {
        let modinfo = format!("license=GPL\0depends={depends}\0name=x\0").into_bytes();
        let names = b"\0.modinfo\0.shstrtab\0".to_vec();
        let data_off = 64usize;
        let names_off = data_off + modinfo.len();
        let sh_off = names_off + names.len();
        let mut out = vec![0u8; 64];
        out[..6].copy_from_slice(b"\x7fELF\x02\x01");
        out[0x28..0x30].copy_from_slice(&(sh_off as u64).to_le_bytes());
        out[0x3A..0x3C].copy_from_slice(&64u16.to_le_bytes());
        out[0x3C..0x3E].copy_from_slice(&3u16.to_le_bytes());
        out[0x3E..0x40].copy_from_slice(&2u16.to_le_bytes());
        out.extend_from_slice(&modinfo);
        out.extend_from_slice(&names);
        let section = |name: u32, off: usize, size: usize| {
            let mut h = vec![0u8; 64];
            h[..4].copy_from_slice(&name.to_le_bytes());
            h[24..32].copy_from_slice(&(off as u64).to_le_bytes());
            h[32..40].copy_from_slice(&(size as u64).to_le_bytes());
            h
        };
        out.extend(section(0, 0, 0));
        out.extend(section(1, data_off, modinfo.len()));
        out.extend(section(10, names_off, names.len()));
        out
    }

    fn tree(modules: &[(&str, &str)], builtin: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, deps) in modules {
            let path = dir.path().join("kernel").join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, fake_module(deps)).unwrap();
        }
        let builtin: String = builtin.iter().map(|b| format!("kernel/{b}\n")).collect();
        std::fs::write(dir.path().join("modules.builtin"), builtin).unwrap();
        dir
    }

    #[test]
    fn dependencies_come_first_and_builtins_are_skipped() {
        let dir = tree(
            &[
                ("drivers/virtio/virtio.ko", ""),
                ("drivers/virtio/virtio_ring.ko", ""),
                ("drivers/virtio/virtio_pci.ko", "virtio_ring,virtio"),
                ("drivers/block/virtio_blk.ko", "virtio,virtio_ring"),
                ("net/net-failover.ko", ""),
                (
                    "drivers/net/virtio_net.ko",
                    "virtio_ring,virtio,net_failover",
                ),
            ],
            &["fs/ext4/ext4.ko"],
        );
        let names = |mods: Vec<Module>| mods.into_iter().map(|m| m.name).collect::<Vec<_>>();
        let order = select(dir.path(), &["virtio_pci", "virtio_net", "ext4"], &["9p"]).unwrap();
        assert_eq!(
            names(order.clone()),
            [
                "virtio_ring",
                "virtio",
                "virtio_pci",
                "net_failover",
                "virtio_net"
            ]
        );
        assert_eq!(order[3].rel_path, Path::new("kernel/net/net-failover.ko"));
        let err = select(dir.path(), &["9p"], &[]).unwrap_err();
        assert!(
            matches!(err, ModulesError::Missing { ref name, .. } if name == "9p"),
            "{err}"
        );
    }

    #[test]
    fn a_dependency_cycle_is_an_error() {
        let dir = tree(&[("a.ko", "b"), ("b.ko", "a")], &[]);
        assert!(matches!(
            select(dir.path(), &["a"], &[]),
            Err(ModulesError::Cycle(_))
        ));
    }
}
