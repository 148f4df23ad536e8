//! `hearth template build|ls|show|rm`: templates made from OCI images, under
//! `<state dir>/templates` (see the `hearth-template` crate).

use std::collections::HashSet;
use std::io::{IsTerminal, Read};
use std::path::PathBuf;

use clap::Subcommand;
use hearth_sandbox::spec::MemoryBytes;
use hearth_template::{
    Credentials, Digest, Progress, SourceRef, Template, TemplateError, TemplateLimits,
    TemplateStore,
};

use super::output::{self, errln, outln};
use crate::config::Settings;
use crate::exit::CliError;

#[derive(Debug, Subcommand)]
pub enum TemplateCommand {
    /// Make template NAME from an OCI image: pulled from a registry, or imported from a local
    /// OCI layout directory or a `docker save`/OCI archive. Every blob's digest is checked and
    /// each layer is unpacked hardened into a layer store shared by all templates; layers the
    /// store has are not fetched again. A template of the same name is replaced.
    Build {
        /// Template name: 1-63 of a-z, 0-9, '.', '_', '-'.
        name: String,
        /// The image: `registry/repo:tag[@sha256:...]` (or `docker://...`), `oci:DIR[:TAG]`,
        /// `oci-archive:FILE`, `docker-archive:FILE`, or a directory or archive's path.
        #[arg(
            long,
            value_name = "REF",
            required_unless_present = "file",
            conflicts_with = "file"
        )]
        from: Option<String>,
        /// Build from a Hearthfile instead (FROM, RUN, COPY, ENV, WORKDIR, USER; see the
        /// README): each RUN runs in a hearth sandbox of the layers so far, and its changes
        /// become a layer, cached by the step and everything before it.
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
        /// A destination RUN steps may reach (repeatable), as `sandbox create --allow`; by
        /// default they reach nothing but hearth's resolver.
        #[arg(long = "allow", value_name = "DEST", requires = "file")]
        allow: Vec<String>,
        /// Talk plain HTTP to the registry (only for one on loopback).
        #[arg(long)]
        plain_http: bool,
        /// Registry user name (basic auth, or the credentials for a token service).
        #[arg(long, value_name = "USER", requires = "password_stdin")]
        username: Option<String>,
        /// Read the registry password from stdin (never from the command line).
        #[arg(long, requires = "username")]
        password_stdin: bool,
        /// Largest layer accepted (its files' bytes, sparse files at full size).
        #[arg(long, value_name = "SIZE", default_value = "8G")]
        max_layer_size: MemoryBytes,
        /// Largest template accepted (all its layers' files).
        #[arg(long, value_name = "SIZE", default_value = "16G")]
        max_size: MemoryBytes,
        /// Progress as JSON lines on stderr and the result as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// List templates.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Show one template: its source, digests, layers, env, working dir and user.
    Show {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Remove templates and the layers no other template or sandbox uses; refused while a
    /// sandbox uses the template.
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

fn cli_error(err: TemplateError) -> CliError {
    CliError::new(crate::classify::template_kind(&err), err.to_string())
}

pub async fn run(command: TemplateCommand, settings: &Settings) -> anyhow::Result<u8> {
    let templates = TemplateStore::new(&settings.state_dir);
    match command {
        TemplateCommand::Build {
            name,
            from,
            file,
            allow,
            plain_http,
            username,
            password_stdin,
            max_layer_size,
            max_size,
            json,
        } => {
            hearth_template::check_name(&name).map_err(cli_error)?;
            let source = from
                .as_deref()
                .map(|from| SourceRef::parse(from, plain_http))
                .transpose()
                .map_err(|err| cli_error(TemplateError::Source(err)))?;
            let credentials = match (username, password_stdin) {
                (Some(username), true) => Some(Credentials {
                    username,
                    password: read_password()?,
                }),
                _ => None,
            };
            require_root()?;
            let limits = TemplateLimits {
                layer_bytes: max_layer_size.0,
                template_bytes: max_size.0,
                ..TemplateLimits::default()
            };
            let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
            let printer = tokio::spawn(print_progress(receiver, json));
            let started = std::time::Instant::now();
            let report = match (&source, &file) {
                (Some(source), _) => {
                    let result = templates
                        .build(&name, source, credentials, limits, sender)
                        .await;
                    let _ = printer.await;
                    result.map_err(cli_error)?
                }
                (None, Some(file)) => {
                    let manager = settings.manager().await?;
                    manager.reconcile().await?;
                    let build = super::template_file::FileBuild {
                        name: &name,
                        file,
                        plain_http,
                        credentials,
                        limits,
                        allow,
                    };
                    let result = super::template_file::build(&manager, build, &sender).await;
                    drop(sender);
                    let _ = printer.await;
                    result?
                }
                (None, None) => {
                    return Err(CliError::new(
                        hearth_sandbox::ErrorKind::BadInput,
                        "give the image with --from REF or a Hearthfile with --file FILE",
                    )
                    .into())
                }
            };
            let seconds = started.elapsed().as_secs_f64();
            if json {
                output::print_json(&report)?;
            } else {
                let t = &report.template;
                let n = &report.neutralised;
                outln!(
                    "{} {} layers ({} cached), {} in {:.1} s",
                    t.name,
                    t.layers.len(),
                    report.layers_cached,
                    human(t.size_bytes),
                    seconds
                )?;
                if n.devices_dropped + n.setid_cleared + n.absolute_paths + n.ids_clamped > 0 {
                    errln!(
                        "hearth template: neutralised {} device nodes (dropped), {} set-id bits (cleared), {} absolute paths (made relative), {} ids beyond the sandbox's map (made nobody)",
                        n.devices_dropped, n.setid_cleared, n.absolute_paths, n.ids_clamped
                    )?;
                }
            }
        }
        TemplateCommand::Ls { json } => {
            let list = templates.list().map_err(cli_error)?;
            if json {
                output::print_json(&list)?;
            } else {
                outln!(
                    "{:<24} {:>9} {:>6}  {:<12}  SOURCE",
                    "NAME",
                    "SIZE",
                    "LAYERS",
                    "IMAGE"
                )?;
                for t in &list {
                    outln!(
                        "{:<24} {:>9} {:>6}  {:<12}  {}",
                        t.name,
                        human(t.size_bytes),
                        t.layers.len(),
                        t.manifest_digest.short(),
                        super::escape::field(&t.source)
                    )?;
                }
            }
        }
        TemplateCommand::Show { name, json } => {
            let template = templates.get(&name).map_err(cli_error)?;
            if json {
                output::print_json(&template)?;
            } else {
                show(&template)?;
            }
        }
        TemplateCommand::Rm { names } => {
            require_root()?;
            let store = settings.store().await?;
            let records = store.list_sandboxes().await?;
            let mut failed = None;
            for name in &names {
                let users: Vec<String> = records
                    .iter()
                    .filter(|r| r.spec.template.as_ref().is_some_and(|t| &t.name == name))
                    .map(|r| r.spec.id.to_string())
                    .collect();
                let result = if users.is_empty() {
                    let in_use = layers_in_use(&records);
                    templates.remove(name, &in_use)
                } else {
                    Err(TemplateError::InUse {
                        name: name.clone(),
                        sandboxes: users.join(", "),
                    })
                };
                match result {
                    Ok(freed) => outln!("{name} removed ({} freed)", human(freed))?,
                    Err(err) => {
                        let err = cli_error(err);
                        errln!("hearth: {err}")?;
                        failed = Some(crate::exit::code(err.kind));
                    }
                }
            }
            if let Some(code) = failed {
                return Ok(code);
            }
        }
    }
    Ok(0)
}

/// The layers live sandboxes have mounted (named in their records), kept by any removal.
fn layers_in_use(records: &[crate::store::SandboxRecord]) -> HashSet<Digest> {
    records
        .iter()
        .filter_map(|r| r.spec.template.as_ref())
        .flat_map(|t| t.layers.iter())
        .filter_map(|dir| dir.file_name()?.to_str().map(str::to_owned))
        .filter_map(|hex| Digest::from_hex(&hex).ok())
        .collect()
}

fn show(t: &Template) -> Result<(), output::OutputError> {
    outln!("name:        {}", t.name)?;
    outln!("source:      {}", super::escape::field(&t.source))?;
    outln!("manifest:    {}", t.manifest_digest)?;
    outln!("config:      {}", t.config_digest)?;
    outln!("size:        {}", human(t.size_bytes))?;
    let user = t.user.as_deref().unwrap_or("(root)");
    outln!(
        "user:        {} ({}:{})",
        super::escape::field(user),
        t.uid,
        t.gid
    )?;
    outln!(
        "workdir:     {}",
        super::escape::field(t.working_dir.as_deref().unwrap_or("/"))
    )?;
    for env in &t.env {
        outln!("env:         {}", super::escape::field(env))?;
    }
    if !t.entrypoint.is_empty() || !t.cmd.is_empty() {
        outln!(
            "entrypoint:  {} (recorded, not run)",
            super::escape::field(&[t.entrypoint.clone(), t.cmd.clone()].concat().join(" "))
        )?;
    }
    for (i, layer) in t.layers.iter().enumerate() {
        outln!(
            "layer {:>3}:   {} {}",
            i + 1,
            layer.diff_id,
            human(layer.bytes)
        )?;
    }
    Ok(())
}

/// Progress on stderr: one line rewritten in place on a terminal, a line per step when piped,
/// JSON lines with `--json`.
async fn print_progress(mut receiver: tokio::sync::mpsc::UnboundedReceiver<Progress>, json: bool) {
    let terminal = std::io::stderr().is_terminal() && !json;
    let mut total = 0;
    while let Some(step) = receiver.recv().await {
        if json {
            if let Ok(line) = serde_json::to_string(&step) {
                let _ = errln!("{line}");
            }
            continue;
        }
        let line = match &step {
            Progress::Resolved {
                manifest,
                layers,
                cached,
            } => {
                total = *layers;
                format!("image {manifest}: {layers} layers, {cached} already in the store")
            }
            Progress::Layer {
                index,
                diff_id,
                size,
                ..
            } => format!(
                "layer {index}/{total} {}{}",
                diff_id.short(),
                size.map(|s| format!(" ({})", human(s))).unwrap_or_default()
            ),
            Progress::Downloaded { index, bytes } => {
                if !terminal {
                    continue;
                }
                format!("layer {index}/{total}: downloaded {}", human(*bytes))
            }
            Progress::Unpacked { index, bytes } => {
                if !terminal {
                    continue;
                }
                format!("layer {index}/{total}: unpacked {}", human(*bytes))
            }
            Progress::LayerDone {
                index,
                cached,
                stats,
            } => match (cached, stats) {
                (true, _) => format!("layer {index}/{total}: cached"),
                (false, Some(s)) => format!(
                    "layer {index}/{total}: {} entries, {}",
                    s.entries,
                    human(s.bytes)
                ),
                (false, None) => format!("layer {index}/{total}: done"),
            },
        };
        if terminal {
            let _ = output::write_text(output::Stream::Stderr, &format!("\r\x1b[2K{line}"));
        } else {
            let _ = errln!("hearth template: {line}");
        }
    }
    if terminal {
        let _ = output::write_text(output::Stream::Stderr, "\r\x1b[2K");
    }
}

fn read_password() -> Result<String, CliError> {
    let mut password = String::new();
    std::io::stdin()
        .take(64 * 1024)
        .read_to_string(&mut password)
        .map_err(|err| {
            CliError::new(
                hearth_sandbox::ErrorKind::BadInput,
                format!("--password-stdin: {err}"),
            )
        })?;
    Ok(password.trim_end_matches(['\n', '\r']).to_owned())
}

fn require_root() -> Result<(), CliError> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(CliError::new(
            hearth_sandbox::ErrorKind::HostLacks,
            "templates keep their files' owners and overlay whiteouts: run as root",
        ))
    }
}

/// Bytes for people: `1.5G`, `320M`, `12K`.
fn human(bytes: u64) -> String {
    #[allow(clippy::cast_precision_loss)] // display only
    let b = bytes as f64;
    match bytes {
        0..1024 => format!("{bytes}B"),
        1024..1_048_576 => format!("{:.0}K", b / 1024.0),
        1_048_576..1_073_741_824 => format!("{:.1}M", b / 1_048_576.0),
        _ => format!("{:.1}G", b / 1_073_741_824.0),
    }
}
