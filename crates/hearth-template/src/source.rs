//! Where an image comes from — a registry, a local OCI image layout, or an archive (`docker
//! save` or an OCI archive) — and how each becomes one [`Plan`]: the manifest, the config and
//! the layers, every document's digest checked before it is believed.

use std::io::Read;
use std::path::{Path, PathBuf};

use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use tokio::io::AsyncWriteExt;

use crate::digest::{Digest, HashingReader};
use crate::model::{self, Compression, Descriptor, ImageConfig, Index, Manifest};

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
            FetcherKind::Registry { .. } => "Fetcher(registry)",
            FetcherKind::Layout { .. } => "Fetcher(layout)",
            FetcherKind::DockerArchive { .. } => "Fetcher(docker archive)",
        })
    }
}

enum FetcherKind {
    Registry {
        client: Box<Client>,
        reference: Reference,
        auth: RegistryAuth,
    },
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
            } => {
                // reqwest's rustls needs a process-wide provider; a second install is refused
                // and harmless.
                let _ = rustls::crypto::ring::default_provider().install_default();
                let reference = Reference::try_from(reference.as_str())
                    .map_err(|err| SourceError::BadReference(reference.clone(), err.to_string()))?;
                let protocol = if *plain_http {
                    ClientProtocol::HttpsExcept(vec![reference.registry().to_owned()])
                } else {
                    ClientProtocol::Https
                };
                let config = ClientConfig {
                    protocol,
                    // hearth picks the platform itself, to name the ones an image has.
                    platform_resolver: None,
                    connect_timeout: Some(std::time::Duration::from_secs(15)),
                    read_timeout: Some(std::time::Duration::from_secs(60)),
                    user_agent: concat!("hearth/", env!("CARGO_PKG_VERSION")),
                    ..ClientConfig::default()
                };
                let auth = match credentials {
                    Some(c) => RegistryAuth::Basic(c.username, c.password),
                    None => RegistryAuth::Anonymous,
                };
                FetcherKind::Registry {
                    client: Box::new(Client::new(config)),
                    reference,
                    auth,
                }
            }
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
            FetcherKind::Registry {
                client,
                reference,
                auth,
            } => resolve_registry(client, reference, auth).await,
            FetcherKind::Layout { dir, tag, .. } => resolve_layout(dir, tag.as_deref()),
            FetcherKind::DockerArchive { dir } => resolve_docker_archive(dir.path()),
        }
    }

    /// The layer's blob as a local file: a local source's own, or a registry's downloaded
    /// into `staging` (its digest and size checked as it arrives).
    pub async fn layer_file(
        &self,
        layer: &PlannedLayer,
        staging: &Path,
        limit: u64,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<(PathBuf, Option<tempfile::TempPath>), SourceError> {
        if let Some(path) = &layer.local {
            return Ok((path.clone(), None));
        }
        let FetcherKind::Registry {
            client, reference, ..
        } = &self.kind
        else {
            return Err(SourceError::Invalid(
                "a local layer without a file".to_owned(),
            ));
        };
        let Some(descriptor) = &layer.descriptor else {
            return Err(SourceError::Invalid(
                "a registry layer without a descriptor".to_owned(),
            ));
        };
        let what = format!("layer {}", descriptor.digest);
        if descriptor.size > limit {
            return Err(SourceError::TooLarge { what, limit });
        }
        let file = tempfile::Builder::new()
            .prefix(".blob-")
            .tempfile_in(staging)
            .map_err(|source| SourceError::Io {
                path: staging.to_owned(),
                source,
            })?;
        let (std_file, path) = file.into_parts();
        let mut out = tokio::fs::File::from_std(std_file);
        let oci_desc = oci_client::manifest::OciDescriptor {
            media_type: descriptor.media_type.clone(),
            digest: descriptor.digest.to_string(),
            size: i64::try_from(descriptor.size).unwrap_or(i64::MAX),
            ..Default::default()
        };
        let mut stream = client
            .pull_blob_stream(reference, &oci_desc)
            .await
            .map_err(registry_err(&what))?;
        let mut hasher = crate::digest::StreamHasher::default();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(stream_err(&what))?;
            hasher.update(&chunk);
            if hasher.len() > descriptor.size {
                return Err(SourceError::TooLarge {
                    what,
                    limit: descriptor.size,
                });
            }
            out.write_all(&chunk)
                .await
                .map_err(|source| SourceError::Io {
                    path: path.to_path_buf(),
                    source,
                })?;
            progress(hasher.len());
        }
        out.flush().await.map_err(|source| SourceError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let (actual, len) = hasher.finish();
        if actual != descriptor.digest || len != descriptor.size {
            return Err(SourceError::DigestMismatch {
                what,
                expected: descriptor.digest.clone(),
                actual,
            });
        }
        Ok((path.to_path_buf(), Some(path)))
    }
}

fn registry_err(
    what: &str,
) -> impl Fn(oci_client::errors::OciDistributionError) -> SourceError + '_ {
    move |err| SourceError::Registry {
        what: what.to_owned(),
        message: describe_registry_error(&err),
    }
}

fn stream_err(what: &str) -> impl Fn(std::io::Error) -> SourceError + '_ {
    move |err| SourceError::Registry {
        what: what.to_owned(),
        message: err.to_string(),
    }
}

fn describe_registry_error(err: &oci_client::errors::OciDistributionError) -> String {
    use oci_client::errors::OciDistributionError as E;
    match err {
        E::AuthenticationFailure(_) | E::UnauthorizedError { .. } => format!(
            "the registry refused the credentials ({err}); pass --username and the password on stdin with --password-stdin"
        ),
        other => other.to_string(),
    }
}

const MANIFEST_TYPES: [&str; 4] = [
    model::OCI_MANIFEST,
    model::DOCKER_MANIFEST,
    model::OCI_INDEX,
    model::DOCKER_LIST,
];

async fn resolve_registry(
    client: &Client,
    reference: &Reference,
    auth: &RegistryAuth,
) -> Result<Plan, SourceError> {
    let what = format!("manifest of {}", reference.whole());
    let (bytes, _) = client
        .pull_manifest_raw(reference, auth, &MANIFEST_TYPES)
        .await
        .map_err(registry_err(&what))?;
    check_len(&what, bytes.len())?;
    if let Some(pinned) = reference.digest() {
        let pinned = Digest::parse(pinned).map_err(|e| SourceError::Invalid(e.to_string()))?;
        check_digest(&what, &pinned, &bytes)?;
    }
    let (manifest_bytes, manifest_digest) = if model::is_index(&media_type_of(&bytes), &bytes) {
        let index: Index = parse_json(&what, &bytes)?;
        let chosen = choose_platform(&index, &what)?;
        let by_digest = Reference::with_digest(
            reference.registry().to_owned(),
            reference.repository().to_owned(),
            chosen.digest.to_string(),
        );
        let what = format!("manifest {} of {}", chosen.digest, reference.whole());
        let (bytes, _) = client
            .pull_manifest_raw(&by_digest, auth, &MANIFEST_TYPES)
            .await
            .map_err(registry_err(&what))?;
        check_len(&what, bytes.len())?;
        check_digest(&what, &chosen.digest, &bytes)?;
        (bytes.to_vec(), chosen.digest.clone())
    } else {
        let digest = Digest::of(&bytes);
        (bytes.to_vec(), digest)
    };
    let manifest: Manifest = parse_json("the image manifest", &manifest_bytes)?;
    let what = format!("config {}", manifest.config.digest);
    if manifest.config.size > model::MAX_DOCUMENT {
        return Err(SourceError::TooLarge {
            what,
            limit: model::MAX_DOCUMENT,
        });
    }
    let oci_desc = oci_client::manifest::OciDescriptor {
        media_type: manifest.config.media_type.clone(),
        digest: manifest.config.digest.to_string(),
        size: i64::try_from(manifest.config.size).unwrap_or(i64::MAX),
        ..Default::default()
    };
    let mut stream = client
        .pull_blob_stream(reference, &oci_desc)
        .await
        .map_err(registry_err(&what))?;
    let mut config_bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        config_bytes.extend_from_slice(&chunk.map_err(stream_err(&what))?);
        check_len(&what, config_bytes.len())?;
    }
    plan_from(manifest_digest, &manifest, &config_bytes, |_| None)
}

/// Media type named inside a manifest or index document (Docker's are always named).
fn media_type_of(bytes: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .and_then(|v| {
            v.get("mediaType")
                .and_then(|m| m.as_str())
                .map(str::to_owned)
        })
        .unwrap_or_default()
}

/// The linux/amd64 entry of an index, or an error naming the platforms it has.
fn choose_platform<'a>(index: &'a Index, what: &str) -> Result<&'a Descriptor, SourceError> {
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

fn resolve_layout(dir: &Path, tag: Option<&str>) -> Result<Plan, SourceError> {
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

fn resolve_docker_archive(dir: &Path) -> Result<Plan, SourceError> {
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

/// Checks the config and pairs the manifest's layers with its diff_ids.
fn plan_from(
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

fn check_config(config: &ImageConfig, layers: usize) -> Result<(), SourceError> {
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

fn check_len(what: &str, len: usize) -> Result<(), SourceError> {
    if len as u64 > model::MAX_DOCUMENT {
        return Err(SourceError::TooLarge {
            what: what.to_owned(),
            limit: model::MAX_DOCUMENT,
        });
    }
    Ok(())
}

fn check_digest(what: &str, expected: &Digest, bytes: &[u8]) -> Result<(), SourceError> {
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

fn parse_json<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, SourceError> {
    serde_json::from_slice(bytes).map_err(|source| SourceError::Json {
        what: what.to_owned(),
        source,
    })
}

/// Checks a blob file against its descriptor while reading it: the reader for an unpack.
pub fn checked_blob(
    file: std::fs::File,
    limit: u64,
) -> HashingReader<std::io::BufReader<std::fs::File>> {
    HashingReader::new(std::io::BufReader::with_capacity(1 << 20, file), limit)
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
