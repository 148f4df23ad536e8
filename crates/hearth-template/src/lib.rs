//! Templates: sandboxes that run the user's own environment, made from OCI images.
//!
//! `hearth template build NAME --from REF` takes an image from a registry ([`source`], with
//! `oci-client`), a local OCI layout or an archive, checks every document and blob against its
//! digest, and unpacks each layer hardened ([`unpack`]) into a content-addressed layer store
//! shared by all templates ([`store`]). An OCI sandbox stacks the layers as a read-only
//! overlay under a per-sandbox upper dir (see `hearth_sandbox::template_root`); a microVM boots
//! an ext4 made from the same layers ([`vm`]). The image's `Env`, `WorkingDir` and `User` are
//! kept; its `Entrypoint` and `Cmd` only recorded: PID 1 is always `hearth-guest`.

mod archive;
pub mod digest;
mod flatten;
pub mod hearthfile;
pub mod layer_tar;
pub mod model;
pub mod source;
pub mod store;
pub mod unpack;
mod user;
pub mod vm;

pub use digest::Digest;
pub use source::{Credentials, SourceError, SourceRef};
pub use store::{
    check_name, BuildReport, Progress, Template, TemplateError, TemplateLimits, TemplateStore,
};
pub use unpack::{LayerLimits, UnpackError, UnpackStats};
pub use user::{resolve_user, UserError};
