//! What a Hearthfile build needs of the store: committing a layer tar hearth made, the RUN
//! step cache, and a directory's attributes as the layers below show it.

use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use super::{dir_bytes, io_err, TemplateError, TemplateLayer, TemplateLimits, TemplateStore};
use crate::digest::Digest;
use crate::source::PlannedLayer;

impl TemplateStore {
    /// Turns a layer tar made by hearth (a Hearthfile step) into a store layer: its digest is
    /// its diff_id, and it goes through the same hardened unpacker as a pulled layer.
    pub fn commit_tar(
        &self,
        tar: &Path,
        limits: TemplateLimits,
    ) -> Result<TemplateLayer, TemplateError> {
        let opened = fs::File::open(tar).map_err(io_err("open", tar))?;
        let (diff_id, _) = crate::digest::HashingReader::new(io::BufReader::new(opened), u64::MAX)
            .finish()
            .map_err(io_err("read", tar))?;
        let dir = self.layer_dir(&diff_id);
        if dir.is_dir() {
            return Ok(TemplateLayer {
                bytes: dir_bytes(&dir),
                diff_id,
            });
        }
        let layer = PlannedLayer {
            diff_id: diff_id.clone(),
            descriptor: None,
            local: Some(tar.to_owned()),
            compression: Some(crate::model::Compression::None),
        };
        let (sender, _) = tokio::sync::mpsc::unbounded_channel();
        let stats = self.unpack_into_store(&layer, tar, 1, limits, &sender)?;
        Ok(TemplateLayer {
            diff_id,
            bytes: stats.bytes,
        })
    }

    /// A new temporary file in the store's `tmp/` (for a layer tar in the making).
    pub fn tmp_file(&self) -> Result<tempfile::NamedTempFile, TemplateError> {
        tempfile::Builder::new()
            .prefix(".tar-")
            .tempfile_in(self.tmp())
            .map_err(io_err("create in", &self.tmp()))
    }

    /// The layer a Hearthfile step with cache key `key` made before, if the store still has it.
    pub fn cached_step(&self, key: &Digest) -> Option<TemplateLayer> {
        let text = fs::read_to_string(self.dir.join("steps").join(key.hex())).ok()?;
        let layer: TemplateLayer = serde_json::from_str(&text).ok()?;
        self.layer_dir(&layer.diff_id).is_dir().then_some(layer)
    }

    /// Remembers the layer step `key` made.
    pub fn remember_step(&self, key: &Digest, layer: &TemplateLayer) -> Result<(), TemplateError> {
        let dir = self.dir.join("steps");
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io_err("create", &dir))?;
        let path = dir.join(key.hex());
        fs::write(&path, serde_json::to_vec(layer).unwrap_or_default())
            .map_err(io_err("write", &path))
    }

    /// Attributes (mode, uid, gid) of directory `rel` as `layers` (bottom first) show it.
    pub fn dir_attrs(layers: &[PathBuf], rel: &Path) -> Option<crate::layer_tar::DirAttrs> {
        use std::os::unix::fs::MetadataExt;
        for layer in layers.iter().rev() {
            match fs::symlink_metadata(layer.join(rel)) {
                Ok(meta) if meta.is_dir() => {
                    return Some((meta.mode() & 0o7777, meta.uid(), meta.gid()))
                }
                Ok(_) => return None,
                Err(_) => {}
            }
        }
        None
    }
}
