//! Images on this host: an OCI image layout directory, or an archive already extracted into
//! hearth's staging dir (an OCI archive is a layout; `docker save` has its own `manifest.json`).
//! Every document is read with a size limit and checked against its digest.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::plan::{check_config, check_digest, check_len, choose_platform, parse_json, plan_from};
use super::{Plan, PlannedLayer, SourceError};
use crate::digest::Digest;
use crate::model::{self, Descriptor, ImageConfig, Index, Manifest};

pub(super) fn resolve_layout(dir: &Path, tag: Option<&str>) -> Result<Plan, SourceError> {
    let index_path = dir.join("index.json");
    let bytes = read_limited(&index_path, model::MAX_DOCUMENT)?;
    let index: Index = parse_json(&index_path.display().to_string(), &bytes)?;
    let candidates: Vec<&Descriptor> = index
        .manifests
        .iter()
        .filter(|d| {
            tag.is_none_or(|tag| {
                d.annotations.get(model::REF_NAME).map(String::as_str) == Some(tag)
            })
        })
        .collect();
    let entry = match candidates.as_slice() {
        [] => {
            return Err(SourceError::Invalid(match tag {
                Some(tag) => format!("{} has no image tagged {tag:?}", dir.display()),
                None => format!("{} holds no image", dir.display()),
            }))
        }
        [one] => *one,
        many => {
            // Several: a multi-platform set picks linux/amd64; otherwise the user must choose.
            let fake = Index {
                manifests: many.iter().map(|d| (*d).clone()).collect(),
            };
            if many.iter().all(|d| d.platform.is_some()) {
                return layout_manifest(dir, choose_platform(&fake, &dir.display().to_string())?);
            }
            return Err(SourceError::Invalid(format!(
                "{} holds {} images; name one as oci:DIR:TAG",
                dir.display(),
                many.len()
            )));
        }
    };
    layout_manifest(dir, entry)
}

/// The image a layout's index entry names (following one nested index).
fn layout_manifest(dir: &Path, entry: &Descriptor) -> Result<Plan, SourceError> {
    let what = format!("manifest {}", entry.digest);
    let bytes = read_blob(dir, &entry.digest, model::MAX_DOCUMENT, &what)?;
    if model::is_index(&entry.media_type, &bytes) {
        let nested: Index = parse_json(&what, &bytes)?;
        let chosen = choose_platform(&nested, &what)?;
        let what = format!("manifest {}", chosen.digest);
        let bytes = read_blob(dir, &chosen.digest, model::MAX_DOCUMENT, &what)?;
        let manifest: Manifest = parse_json(&what, &bytes)?;
        return layout_plan(dir, chosen.digest.clone(), &manifest);
    }
    let manifest: Manifest = parse_json(&what, &bytes)?;
    layout_plan(dir, entry.digest.clone(), &manifest)
}

fn layout_plan(dir: &Path, digest: Digest, manifest: &Manifest) -> Result<Plan, SourceError> {
    let what = format!("config {}", manifest.config.digest);
    let config = read_blob(dir, &manifest.config.digest, model::MAX_DOCUMENT, &what)?;
    plan_from(digest, manifest, &config, |d| {
        Some(blob_path(dir, &d.digest))
    })
}

pub(super) fn resolve_docker_archive(dir: &Path) -> Result<Plan, SourceError> {
    let path = dir.join("manifest.json");
    let bytes = read_limited(&path, model::MAX_DOCUMENT)?;
    let entries: Vec<model::DockerArchiveEntry> =
        parse_json("the archive's manifest.json", &bytes)?;
    let entry = match entries.as_slice() {
        [one] => one,
        [] => {
            return Err(SourceError::Invalid(
                "the archive holds no image".to_owned(),
            ))
        }
        many => {
            return Err(SourceError::Invalid(format!(
                "the archive holds {} images; save one image per archive",
                many.len()
            )))
        }
    };
    let config_path = archive_member(dir, &entry.config)?;
    let config_bytes = read_limited(&config_path, model::MAX_DOCUMENT)?;
    let config: ImageConfig = parse_json("the image config", &config_bytes)?;
    check_config(&config, entry.layers.len())?;
    let layers = entry
        .layers
        .iter()
        .zip(&config.rootfs.diff_ids)
        .map(|(member, diff_id)| {
            Ok(PlannedLayer {
                diff_id: diff_id.clone(),
                descriptor: None,
                local: Some(archive_member(dir, member)?),
                compression: None,
            })
        })
        .collect::<Result<_, SourceError>>()?;
    Ok(Plan {
        manifest_digest: Digest::of(&bytes),
        config_digest: Digest::of(&config_bytes),
        config,
        layers,
    })
}

/// A file named inside an extracted archive: relative, no `..`, a regular file.
fn archive_member(dir: &Path, name: &str) -> Result<PathBuf, SourceError> {
    let bad = || {
        SourceError::Invalid(format!(
            "the archive names {name:?}, which is not a file in it"
        ))
    };
    let rel = Path::new(name);
    if rel.is_absolute()
        || rel
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(bad());
    }
    let path = dir.join(rel);
    match std::fs::symlink_metadata(&path) {
        Ok(meta) if meta.is_file() => Ok(path),
        _ => Err(bad()),
    }
}

fn blob_path(dir: &Path, digest: &Digest) -> PathBuf {
    dir.join("blobs/sha256").join(digest.hex())
}

/// A layout's blob, its digest checked.
fn read_blob(dir: &Path, digest: &Digest, limit: u64, what: &str) -> Result<Vec<u8>, SourceError> {
    let bytes = read_limited(&blob_path(dir, digest), limit)?;
    check_digest(what, digest, &bytes)?;
    Ok(bytes)
}

fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>, SourceError> {
    let file = std::fs::File::open(path).map_err(|source| SourceError::Io {
        path: path.to_owned(),
        source,
    })?;
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| SourceError::Io {
            path: path.to_owned(),
            source,
        })?;
    check_len(&path.display().to_string(), bytes.len())?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_members_stay_inside() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.json"), b"{}").unwrap();
        assert!(archive_member(dir.path(), "a.json").is_ok());
        for bad in ["../a.json", "/etc/passwd", "missing", "."] {
            assert!(archive_member(dir.path(), bad).is_err(), "{bad}");
        }
    }
}
