//! Images from a registry, through `oci-client` (the Distribution API, its token and basic
//! auth): the manifest (an index picks linux/amd64), the config, and layer blobs downloaded into
//! hearth's staging dir, each checked against its digest as it arrives.

use std::path::Path;

use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol, SizedStream};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use tokio::io::AsyncWriteExt;

use super::plan::{check_digest, check_len, choose_platform, parse_json, plan_from};
use super::{Credentials, Plan, SourceError};
use crate::digest::{Digest, StreamHasher};
use crate::model::{self, Descriptor, Index, Manifest};

/// A registry and the image reference to pull from it.
pub(super) struct Registry {
    client: Client,
    reference: Reference,
    auth: RegistryAuth,
}

impl Registry {
    pub(super) fn new(
        reference: &str,
        plain_http: bool,
        credentials: Option<Credentials>,
    ) -> Result<Self, SourceError> {
        // reqwest's rustls needs a process-wide provider; a second install is refused and
        // harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let reference = Reference::try_from(reference)
            .map_err(|err| SourceError::BadReference(reference.to_owned(), err.to_string()))?;
        let protocol = if plain_http {
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
        Ok(Self {
            client: Client::new(config),
            reference,
            auth,
        })
    }

    /// The image's manifest (for linux/amd64) and config.
    pub(super) async fn resolve(&self) -> Result<Plan, SourceError> {
        let reference = &self.reference;
        let what = format!("manifest of {}", reference.whole());
        let bytes = self.manifest(reference, &what).await?;
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
            let bytes = self.manifest(&by_digest, &what).await?;
            check_digest(&what, &chosen.digest, &bytes)?;
            (bytes, chosen.digest.clone())
        } else {
            let digest = Digest::of(&bytes);
            (bytes, digest)
        };
        let manifest: Manifest = parse_json("the image manifest", &manifest_bytes)?;
        let what = format!("config {}", manifest.config.digest);
        if manifest.config.size > model::MAX_DOCUMENT {
            return Err(SourceError::TooLarge {
                what,
                limit: model::MAX_DOCUMENT,
            });
        }
        let mut stream = self.blob(&manifest.config, &what).await?;
        let mut config_bytes = Vec::new();
        while let Some(chunk) = stream.next().await {
            config_bytes.extend_from_slice(&chunk.map_err(stream_err(&what))?);
            check_len(&what, config_bytes.len())?;
        }
        plan_from(manifest_digest, &manifest, &config_bytes, |_| None)
    }

    async fn manifest(&self, reference: &Reference, what: &str) -> Result<Vec<u8>, SourceError> {
        let (bytes, _) = self
            .client
            .pull_manifest_raw(reference, &self.auth, &MANIFEST_TYPES)
            .await
            .map_err(registry_err(what))?;
        check_len(what, bytes.len())?;
        Ok(bytes.to_vec())
    }

    /// The bytes of blob `descriptor`, as a stream (checked by the caller).
    async fn blob(&self, descriptor: &Descriptor, what: &str) -> Result<SizedStream, SourceError> {
        let oci_desc = oci_client::manifest::OciDescriptor {
            media_type: descriptor.media_type.clone(),
            digest: descriptor.digest.to_string(),
            size: i64::try_from(descriptor.size).unwrap_or(i64::MAX),
            ..Default::default()
        };
        self.client
            .pull_blob_stream(&self.reference, &oci_desc)
            .await
            .map_err(registry_err(what))
    }

    /// Downloads layer blob `descriptor` into a new file in `staging`, checking its size and
    /// digest as it arrives; the file goes when the returned path is dropped.
    pub(super) async fn download(
        &self,
        descriptor: &Descriptor,
        staging: &Path,
        limit: u64,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<tempfile::TempPath, SourceError> {
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
        let write_err = |source| SourceError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut out = tokio::fs::File::from_std(std_file);
        let mut stream = self.blob(descriptor, &what).await?;
        let mut hasher = StreamHasher::default();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(stream_err(&what))?;
            hasher.update(&chunk);
            if hasher.len() > descriptor.size {
                return Err(SourceError::TooLarge {
                    what,
                    limit: descriptor.size,
                });
            }
            out.write_all(&chunk).await.map_err(write_err)?;
            progress(hasher.len());
        }
        out.flush().await.map_err(write_err)?;
        let (actual, len) = hasher.finish();
        if actual != descriptor.digest || len != descriptor.size {
            return Err(SourceError::DigestMismatch {
                what,
                expected: descriptor.digest.clone(),
                actual,
            });
        }
        Ok(path)
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
