//! The checks every source's documents pass before hearth believes them: digests, sizes, the
//! platform, and the pairing of a manifest's layers with its config's diff_ids.

use std::path::PathBuf;

use super::{Plan, PlannedLayer, SourceError};
use crate::digest::Digest;
use crate::model::{self, Compression, Descriptor, ImageConfig, Index, Manifest};

/// The linux/amd64 entry of an index, or an error naming the platforms it has.
pub(super) fn choose_platform<'a>(
    index: &'a Index,
    what: &str,
) -> Result<&'a Descriptor, SourceError> {
    index
        .manifests
        .iter()
        .find(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.os == model::OS && p.architecture == model::ARCH)
        })
        .ok_or_else(|| {
            let have: Vec<String> = index
                .manifests
                .iter()
                .filter_map(|d| d.platform.as_ref().map(model::Platform::label))
                .collect();
            SourceError::Invalid(format!(
                "{what} has no {}/{} image (it has: {})",
                model::OS,
                model::ARCH,
                if have.is_empty() {
                    "none named".to_owned()
                } else {
                    have.join(", ")
                }
            ))
        })
}

/// Checks the config and pairs the manifest's layers with its diff_ids.
pub(super) fn plan_from(
    manifest_digest: Digest,
    manifest: &Manifest,
    config_bytes: &[u8],
    local: impl Fn(&Descriptor) -> Option<PathBuf>,
) -> Result<Plan, SourceError> {
    let what = format!("config {}", manifest.config.digest);
    check_digest(&what, &manifest.config.digest, config_bytes)?;
    if !manifest.config.media_type.is_empty()
        && !model::is_image_config(&manifest.config.media_type)
    {
        return Err(SourceError::Invalid(format!(
            "the manifest's config is a {:?}, not a container image's",
            manifest.config.media_type
        )));
    }
    let config: ImageConfig = parse_json(&what, config_bytes)?;
    check_config(&config, manifest.layers.len())?;
    let layers = manifest
        .layers
        .iter()
        .zip(&config.rootfs.diff_ids)
        .enumerate()
        .map(|(i, (descriptor, diff_id))| {
            let compression =
                Compression::of_media_type(&descriptor.media_type).ok_or_else(|| {
                    SourceError::Invalid(format!(
                        "layer {} has media type {:?}, not a container image layer's",
                        i + 1,
                        descriptor.media_type
                    ))
                })?;
            Ok(PlannedLayer {
                diff_id: diff_id.clone(),
                descriptor: Some(descriptor.clone()),
                local: local(descriptor),
                compression: Some(compression),
            })
        })
        .collect::<Result<_, SourceError>>()?;
    Ok(Plan {
        manifest_digest,
        config_digest: manifest.config.digest.clone(),
        config,
        layers,
    })
}

pub(super) fn check_config(config: &ImageConfig, layers: usize) -> Result<(), SourceError> {
    if config.os != model::OS || config.architecture != model::ARCH {
        return Err(SourceError::Invalid(format!(
            "the image is for {}/{}; hearth runs {}/{} images only",
            config.os,
            config.architecture,
            model::OS,
            model::ARCH
        )));
    }
    if config.rootfs.diff_ids.len() != layers {
        return Err(SourceError::Invalid(format!(
            "the manifest has {layers} layers but the config names {}",
            config.rootfs.diff_ids.len()
        )));
    }
    if layers > model::MAX_LAYERS {
        return Err(SourceError::Invalid(format!(
            "the image has {layers} layers; hearth takes at most {}",
            model::MAX_LAYERS
        )));
    }
    Ok(())
}

pub(super) fn check_len(what: &str, len: usize) -> Result<(), SourceError> {
    if len as u64 > model::MAX_DOCUMENT {
        return Err(SourceError::TooLarge {
            what: what.to_owned(),
            limit: model::MAX_DOCUMENT,
        });
    }
    Ok(())
}

pub(super) fn check_digest(what: &str, expected: &Digest, bytes: &[u8]) -> Result<(), SourceError> {
    let actual = Digest::of(bytes);
    if &actual != expected {
        return Err(SourceError::DigestMismatch {
            what: what.to_owned(),
            expected: expected.clone(),
            actual,
        });
    }
    Ok(())
}

pub(super) fn parse_json<T: serde::de::DeserializeOwned>(
    what: &str,
    bytes: &[u8],
) -> Result<T, SourceError> {
    serde_json::from_slice(bytes).map_err(|source| SourceError::Json {
        what: what.to_owned(),
        source,
    })
}
