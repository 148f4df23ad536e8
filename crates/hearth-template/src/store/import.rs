//! Building a template from an image: the store's lock, the fetch of the layers it lacks and
//! their hardened unpacking into the layer store.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use tokio::sync::mpsc::UnboundedSender;

use super::{
    check_name, dir_bytes, io_err, not_found_ok, now_secs, BuildReport, Progress, StoreLock,
    Template, TemplateError, TemplateLayer, TemplateLimits, TemplateStore,
};
use crate::digest::Digest;
use crate::source::{Credentials, Fetcher, PlannedLayer, SourceError, SourceRef};
use crate::unpack::{LayerLimits, UnpackStats};
use crate::user::resolve_user;

impl TemplateStore {
    /// Pulls or imports `source` as template `name` (replacing one of that name), unpacking
    /// only the layers the store lacks. Progress goes to `progress`.
    pub async fn build(
        &self,
        name: &str,
        source: &SourceRef,
        credentials: Option<Credentials>,
        limits: TemplateLimits,
        progress: UnboundedSender<Progress>,
    ) -> Result<BuildReport, TemplateError> {
        check_name(name)?;
        let _lock = self.begin().await?;
        let report = self
            .import(name, source, credentials, limits, &progress)
            .await?;
        self.write_record(&report.template)?;
        self.clear_tmp()?;
        Ok(report)
    }

    /// Takes the store's exclusive lock for a build and clears what a crashed or failed build
    /// left in `tmp/`.
    pub async fn begin(&self) -> Result<StoreLock, TemplateError> {
        let store = self.clone();
        let lock = tokio::task::spawn_blocking(move || store.lock(true)).await??;
        self.clear_tmp()?;
        Ok(lock)
    }

    pub(super) fn clear_tmp(&self) -> Result<(), TemplateError> {
        let tmp = self.tmp();
        fs::remove_dir_all(&tmp)
            .or_else(not_found_ok)
            .map_err(io_err("clear", &tmp))?;
        self.ensure_dirs()
    }

    /// Fetches and unpacks `source`'s layers the store lacks, and returns the template it makes
    /// (not recorded yet). Call with [`Self::begin`]'s lock held.
    pub async fn import(
        &self,
        name: &str,
        source: &SourceRef,
        credentials: Option<Credentials>,
        limits: TemplateLimits,
        progress: &UnboundedSender<Progress>,
    ) -> Result<BuildReport, TemplateError> {
        let tmp = self.tmp();
        let fetcher = {
            let (source, tmp) = (source.clone(), tmp.clone());
            tokio::task::spawn_blocking(move || {
                Fetcher::open(&source, credentials, &tmp, limits.template_bytes)
            })
            .await??
        };
        let plan = fetcher.resolve().await?;
        let total = plan.layers.len();
        let cached = plan
            .layers
            .iter()
            .filter(|l| self.layer_dir(&l.diff_id).is_dir())
            .count();
        let _ = progress.send(Progress::Resolved {
            manifest: plan.manifest_digest.clone(),
            layers: total,
            cached,
        });
        // Sizes of layers the store has, from the templates that recorded them (no walk).
        let known: std::collections::HashMap<Digest, u64> = self
            .list()?
            .into_iter()
            .flat_map(|t| t.layers)
            .map(|l| (l.diff_id, l.bytes))
            .collect();
        let mut layers = Vec::with_capacity(total);
        let mut size: u64 = 0;
        let mut report_stats = UnpackStats::default();
        let (mut unpacked, mut bytes_unpacked) = (0, 0);
        for (i, layer) in plan.layers.iter().enumerate() {
            let index = i + 1;
            let _ = progress.send(Progress::Layer {
                index,
                total,
                diff_id: layer.diff_id.clone(),
                size: layer.descriptor.as_ref().map(|d| d.size),
            });
            let dir = self.layer_dir(&layer.diff_id);
            let bytes = if dir.is_dir() {
                let _ = progress.send(Progress::LayerDone {
                    index,
                    cached: true,
                    stats: None,
                });
                known
                    .get(&layer.diff_id)
                    .copied()
                    .unwrap_or_else(|| dir_bytes(&dir))
            } else {
                let stats = self
                    .fetch_and_unpack(&fetcher, layer, index, limits, progress)
                    .await?;
                unpacked += 1;
                bytes_unpacked += stats.bytes;
                add_stats(&mut report_stats, &stats);
                let bytes = stats.bytes;
                let _ = progress.send(Progress::LayerDone {
                    index,
                    cached: false,
                    stats: Some(stats),
                });
                bytes
            };
            size = size.saturating_add(bytes);
            if size > limits.template_bytes {
                return Err(TemplateError::TooLarge {
                    limit: limits.template_bytes,
                });
            }
            layers.push(TemplateLayer {
                diff_id: layer.diff_id.clone(),
                bytes,
            });
        }
        let dirs: Vec<PathBuf> = layers.iter().map(|l| self.layer_dir(&l.diff_id)).collect();
        let run = &plan.config.config;
        let user = (!run.user.is_empty()).then(|| run.user.clone());
        let (uid, gid) = match &user {
            Some(user) => resolve_user(user, &dirs)?,
            None => (0, 0),
        };
        let template = Template {
            name: name.to_owned(),
            source: source.describe(),
            manifest_digest: plan.manifest_digest.clone(),
            config_digest: plan.config_digest.clone(),
            layers,
            env: run.env.clone(),
            working_dir: (!run.working_dir.is_empty()).then(|| run.working_dir.clone()),
            user,
            uid,
            gid,
            labels: run.labels.clone(),
            entrypoint: run.entrypoint.clone(),
            cmd: run.cmd.clone(),
            size_bytes: size,
            created_at: now_secs(),
        };
        Ok(BuildReport {
            template,
            layers_cached: cached,
            layers_unpacked: unpacked,
            bytes_unpacked,
            neutralised: report_stats,
        })
    }

    async fn fetch_and_unpack(
        &self,
        fetcher: &Fetcher,
        layer: &PlannedLayer,
        index: usize,
        limits: TemplateLimits,
        progress: &UnboundedSender<Progress>,
    ) -> Result<UnpackStats, TemplateError> {
        let tmp = self.tmp();
        let mut last_report = 0u64;
        let (file, _download) = fetcher
            .layer_file(layer, &tmp, limits.layer_bytes, &mut |bytes| {
                if bytes - last_report >= 4 << 20 {
                    last_report = bytes;
                    let _ = progress.send(Progress::Downloaded { index, bytes });
                }
            })
            .await?;
        let (layer, store, progress) = (layer.clone(), self.clone(), progress.clone());
        tokio::task::spawn_blocking(move || {
            store.unpack_into_store(&layer, &file, index, limits, &progress)
        })
        .await?
    }

    /// Checks a blob file against its descriptor, decompresses it and unpacks it into a
    /// temporary directory, renamed into the store only when complete.
    pub(super) fn unpack_into_store(
        &self,
        layer: &PlannedLayer,
        file: &Path,
        index: usize,
        limits: TemplateLimits,
        progress: &UnboundedSender<Progress>,
    ) -> Result<UnpackStats, TemplateError> {
        let layer_err = |source| TemplateError::Layer {
            index,
            diff_id: layer.diff_id.clone(),
            source,
        };
        if let Some(descriptor) = &layer.descriptor {
            // Checked before a byte of it is decompressed (a registry's was checked as it
            // arrived; a layout's file is read here for the first time).
            let opened = fs::File::open(file).map_err(io_err("open", file))?;
            let (actual, len) = crate::digest::HashingReader::new(
                io::BufReader::with_capacity(1 << 20, opened),
                limits.layer_bytes,
            )
            .finish()
            .map_err(|err| {
                if crate::digest::is_over_limit(&err) {
                    TemplateError::TooLarge {
                        limit: limits.layer_bytes,
                    }
                } else {
                    io_err("read", file)(err)
                }
            })?;
            if actual != descriptor.digest || len != descriptor.size {
                return Err(SourceError::DigestMismatch {
                    what: format!("layer {index}'s blob"),
                    expected: descriptor.digest.clone(),
                    actual,
                }
                .into());
            }
        }
        let opened = fs::File::open(file).map_err(io_err("open", file))?;
        let mut reader = io::BufReader::with_capacity(1 << 20, opened);
        let compression = match layer.compression {
            Some(c) => c,
            None => {
                let head = io::BufRead::fill_buf(&mut reader).map_err(io_err("read", file))?;
                crate::model::Compression::sniff(head)
            }
        };
        let tar: Box<dyn io::Read> = match compression {
            crate::model::Compression::None => Box::new(reader),
            crate::model::Compression::Gzip => {
                Box::new(flate2::bufread::MultiGzDecoder::new(reader))
            }
            crate::model::Compression::Zstd => Box::new(
                zstd::stream::read::Decoder::with_buffer(reader).map_err(io_err("read", file))?,
            ),
        };
        let dest = tempfile::Builder::new()
            .prefix(".layer-")
            .tempdir_in(self.tmp())
            .map_err(io_err("create in", &self.tmp()))?;
        let layer_limits = LayerLimits {
            bytes: limits.layer_bytes,
            entries: limits.layer_entries,
        };
        let mut last = 0u64;
        let stats = crate::unpack::unpack_layer(
            tar,
            dest.path(),
            &layer.diff_id,
            layer_limits,
            &mut |bytes| {
                if bytes - last >= 8 << 20 {
                    last = bytes;
                    let _ = progress.send(Progress::Unpacked { index, bytes });
                }
            },
        )
        .map_err(layer_err)?;
        // The layer's root dir as overlay expects: readable by the sandbox's ids.
        let root = dest.path();
        fs::set_permissions(root, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .map_err(io_err("chmod", root))?;
        let final_dir = self.layer_dir(&layer.diff_id);
        let kept = dest.keep();
        if let Err(err) = fs::rename(&kept, &final_dir) {
            let _ = fs::remove_dir_all(&kept);
            // Another build of the same layer won the race: its copy is as good as ours.
            if !final_dir.is_dir() {
                return Err(io_err("rename into", &final_dir)(err));
            }
        }
        Ok(stats)
    }
}

fn add_stats(sum: &mut UnpackStats, more: &UnpackStats) {
    sum.entries += more.entries;
    sum.bytes += more.bytes;
    sum.devices_dropped += more.devices_dropped;
    sum.setid_cleared += more.setid_cleared;
    sum.absolute_paths += more.absolute_paths;
    sum.ids_clamped += more.ids_clamped;
    sum.whiteouts += more.whiteouts;
}
