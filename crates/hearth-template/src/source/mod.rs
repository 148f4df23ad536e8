//! Where an image comes from — a registry, a local OCI image layout, or an archive (`docker
//! save` or an OCI archive) — and how each becomes one [`Plan`]: the manifest, the config and
//! the layers, every document's digest checked before it is believed.

mod local;
mod plan;
mod registry;

use std::path::{Path, PathBuf};

use oci_client::Reference;

use crate::digest::Digest;
use crate::model::{Compression, Descriptor, ImageConfig};

/// Where to take an image from, as the user named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceRef {
    /// `[registry/]repository[:tag][@digest]`.
    Registry {
        reference: String,
        /// Plain HTTP: only for a registry on loopback, and only when asked for.
        plain_http: bool,
    },
    /// An OCI image layout directory (`oci:DIR[:TAG]`, or a directory's path).
    Layout { dir: PathBuf, tag: Option<String> },
    /// A `docker save` or OCI archive tarball (`docker-archive:FILE`, `oci-archive:FILE`, or
    /// a file's path).
    Archive { file: PathBuf },
}

/// A user name and password for a registry (never printed: see the `Debug` impl).
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, <password>)", self.username)
    }
}

/// Why an image could not be found or believed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{0:?} is not an image reference: {1}")]
    BadReference(String, String),
    #[error(
        "plain HTTP is only for a registry on loopback (127.0.0.1, localhost, [::1]), not {0}"
    )]
    PlainHttpNotLoopback(String),
    #[error("{what}: {message}")]
    Registry { what: String, message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} is not valid JSON of its kind: {source}")]
    Json {
        what: String,
        source: serde_json::Error,
    },
    #[error("{what} is {actual}, not the {expected} it is named by")]
    DigestMismatch {
        what: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("{what} is larger than {limit} bytes")]
    TooLarge { what: String, limit: u64 },
    #[error("{0}")]
    Invalid(String),
}

impl SourceError {
    /// Whether the fault is the image's (refused content) rather than the way to it.
    pub fn is_refused_content(&self) -> bool {
        matches!(
            self,
            Self::DigestMismatch { .. }
                | Self::TooLarge { .. }
                | Self::Json { .. }
                | Self::Invalid(_)
        )
    }
}

impl SourceRef {
    /// Reads `--from`: `oci:DIR[:TAG]`, `oci-archive:FILE`, `docker-archive:FILE`,
    /// `docker://REF`, an existing path (a directory is a layout, a file an archive), or a
    /// registry reference.
    pub fn parse(text: &str, plain_http: bool) -> Result<Self, SourceError> {
        let local = |s: &str| {
            if plain_http {
                return Err(SourceError::BadReference(
                    text.to_owned(),
                    "--plain-http is for registries only".to_owned(),
                ));
            }
            Ok(PathBuf::from(s))
        };
        if let Some(rest) = text.strip_prefix("oci:") {
            let (dir, tag) = match rest.rsplit_once(':') {
                Some((dir, tag)) if !tag.contains('/') && !tag.is_empty() => {
                    (dir, Some(tag.to_owned()))
                }
                _ => (rest, None),
            };
            return Ok(Self::Layout {
                dir: local(dir)?,
                tag,
            });
        }
        if let Some(file) = text
            .strip_prefix("oci-archive:")
            .or_else(|| text.strip_prefix("docker-archive:"))
        {
            return Ok(Self::Archive { file: local(file)? });
        }
        let registry_ref = text.strip_prefix("docker://").unwrap_or(text);
        if registry_ref == text && (text.starts_with('/') || text.starts_with('.')) {
            let path = local(text)?;
            return if path.is_dir() {
                Ok(Self::Layout {
                    dir: path,
                    tag: None,
                })
            } else {
                Ok(Self::Archive { file: path })
            };
        }
        let reference = Reference::try_from(registry_ref)
            .map_err(|err| SourceError::BadReference(text.to_owned(), err.to_string()))?;
        if plain_http && !is_loopback(reference.registry()) {
            return Err(SourceError::PlainHttpNotLoopback(
                reference.registry().to_owned(),
            ));
        }
        Ok(Self::Registry {
            reference: reference.whole(),
            plain_http,
        })
    }

    /// How the source is shown and recorded.
    pub fn describe(&self) -> String {
        match self {
            Self::Registry { reference, .. } => reference.clone(),
            Self::Layout { dir, tag } => match tag {
                Some(tag) => format!("oci:{}:{tag}", dir.display()),
                None => format!("oci:{}", dir.display()),
            },
            Self::Archive { file } => format!("archive:{}", file.display()),
        }
    }
}

fn is_loopback(registry: &str) -> bool {
    let host = match registry.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => registry,
    };
    matches!(host, "localhost" | "[::1]")
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// One layer of a plan, bottom first.
#[derive(Debug, Clone)]
pub struct PlannedLayer {
    /// The digest of its uncompressed content: its name in the layer store.
    pub diff_id: Digest,
    /// The compressed blob's descriptor; `None` in a Docker archive, which names layers by
    /// path (their content is still checked against `diff_id`).
    pub descriptor: Option<Descriptor>,
    /// The blob's file, for local sources (a registry's are downloaded when needed).
    pub local: Option<PathBuf>,
    /// `None`: sniffed from the blob's first bytes.
    pub compression: Option<Compression>,
}

/// An image resolved to its parts, every document checked against its digest.
#[derive(Debug, Clone)]
pub struct Plan {
    pub manifest_digest: Digest,
    pub config_digest: Digest,
    pub config: ImageConfig,
    pub layers: Vec<PlannedLayer>,
}

/// Reads images from a source; holds what the source needs while layers are fetched.
pub struct Fetcher {
    kind: FetcherKind,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match &self.kind {
            FetcherKind::Registry(_) => "Fetcher(registry)",
            FetcherKind::Layout { .. } => "Fetcher(layout)",
            FetcherKind::DockerArchive { .. } => "Fetcher(docker archive)",
        })
    }
}

enum FetcherKind {
    Registry(Box<registry::Registry>),
    Layout {
        dir: PathBuf,
        tag: Option<String>,
        /// An archive's extraction, removed with the fetcher.
        _extracted: Option<tempfile::TempDir>,
    },
    DockerArchive {
        dir: tempfile::TempDir,
    },
}

impl Fetcher {
    /// Opens `source`; an archive is first extracted (files only) into `staging`.
    pub fn open(
        source: &SourceRef,
        credentials: Option<Credentials>,
        staging: &Path,
        archive_limit: u64,
    ) -> Result<Self, SourceError> {
        let kind = match source {
            SourceRef::Registry {
                reference,
                plain_http,
            } => FetcherKind::Registry(Box::new(registry::Registry::new(
                reference,
                *plain_http,
                credentials,
            )?)),
            SourceRef::Layout { dir, tag } => FetcherKind::Layout {
                dir: dir.clone(),
                tag: tag.clone(),
                _extracted: None,
            },
            SourceRef::Archive { file } => {
                let dir = tempfile::Builder::new()
                    .prefix(".archive-")
                    .tempdir_in(staging)
                    .map_err(|source| SourceError::Io {
                        path: staging.to_owned(),
                        source,
                    })?;
                crate::archive::extract(file, dir.path(), archive_limit)?;
                if dir.path().join("index.json").is_file() {
                    FetcherKind::Layout {
                        dir: dir.path().to_owned(),
                        tag: None,
                        _extracted: Some(dir),
                    }
                } else if dir.path().join("manifest.json").is_file() {
                    FetcherKind::DockerArchive { dir }
                } else {
                    return Err(SourceError::Invalid(format!(
                        "{} is neither an OCI archive (no index.json) nor a docker save archive (no manifest.json)",
                        file.display()
                    )));
                }
            }
        };
        Ok(Self { kind })
    }

    /// Finds the image's manifest (for linux/amd64) and config.
    pub async fn resolve(&self) -> Result<Plan, SourceError> {
        match &self.kind {
            FetcherKind::Registry(registry) => registry.resolve().await,
            FetcherKind::Layout { dir, tag, .. } => local::resolve_layout(dir, tag.as_deref()),
            FetcherKind::DockerArchive { dir } => local::resolve_docker_archive(dir.path()),
        }
    }

    /// The layer's blob as a local file: a local source's own, or a registry's downloaded
    /// into `staging` (its digest and size checked as it arrives; the download is removed
    /// when the returned `TempPath` is dropped).
    pub async fn layer_file(
        &self,
        layer: &PlannedLayer,
        staging: &Path,
        limit: u64,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<(PathBuf, Option<tempfile::TempPath>), SourceError> {
        match (&layer.local, &layer.descriptor, &self.kind) {
            (Some(path), _, _) => Ok((path.clone(), None)),
            (None, Some(descriptor), FetcherKind::Registry(registry)) => {
                let download = registry
                    .download(descriptor, staging, limit, progress)
                    .await?;
                Ok((download.to_path_buf(), Some(download)))
            }
            _ => Err(SourceError::Invalid(
                "a layer with neither a local file nor a registry descriptor".to_owned(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse_by_prefix_path_or_reference() {
        assert_eq!(
            SourceRef::parse("oci:/x/layout:v1", false).unwrap(),
            SourceRef::Layout {
                dir: "/x/layout".into(),
                tag: Some("v1".into())
            }
        );
        assert_eq!(
            SourceRef::parse("docker-archive:/x/a.tar", false).unwrap(),
            SourceRef::Archive {
                file: "/x/a.tar".into()
            }
        );
        assert!(matches!(
            SourceRef::parse("127.0.0.1:5000/base:1", true).unwrap(),
            SourceRef::Registry {
                plain_http: true,
                ..
            }
        ));
        assert!(matches!(
            SourceRef::parse("example.com/base:1", true),
            Err(SourceError::PlainHttpNotLoopback(_))
        ));
        assert!(SourceRef::parse("Bad Ref!", false).is_err());
    }
}
