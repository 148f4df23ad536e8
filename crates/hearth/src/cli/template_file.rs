//! `hearth template build NAME --file Hearthfile`: the base image imported like `--from`, then
//! each step on top of it. A RUN step runs in a real hearth sandbox made from the layers so far
//! (no Docker daemon): when its command succeeds, the sandbox's overlay upper dir becomes the
//! step's new layer. A COPY step's layer is the context's files. Both go through the store's
//! hardened unpacker. A RUN's layer is cached under a key of everything before it (the base
//! image's digest, every step's text and COPY's content), so a rebuild reruns only what changed.

use std::path::{Path, PathBuf};

use hearth_proto::{ExecDefaults, ExecRequest};
use hearth_sandbox::guest_client::OutputChunk;
use hearth_sandbox::spec::SpecTemplate;
use hearth_sandbox::ErrorKind;
use hearth_template::hearthfile::{self, Instruction};
use hearth_template::layer_tar;
use hearth_template::store::{now_secs, TemplateLayer};
use hearth_template::{
    BuildReport, Credentials, Digest, Progress, SourceRef, Template, TemplateError, TemplateLimits,
    TemplateStore,
};
use tokio::sync::mpsc::UnboundedSender;

use super::output::errln;
use crate::exit::CliError;
use crate::request::{NetRequest, SandboxRequest};
use crate::sandboxes::SandboxManager;

/// The largest Hearthfile read.
const MAX_FILE: u64 = 1 << 20;

/// What a file build needs besides the store.
#[derive(Debug)]
pub struct FileBuild<'a> {
    pub name: &'a str,
    pub file: &'a Path,
    pub plain_http: bool,
    pub credentials: Option<Credentials>,
    pub limits: TemplateLimits,
    /// Destinations RUN steps may reach (`--allow`), as `hearth sandbox create --allow`.
    pub allow: Vec<String>,
}

fn cli(kind: ErrorKind, message: impl Into<String>) -> CliError {
    CliError::new(kind, message)
}

fn template_err(err: TemplateError) -> CliError {
    CliError::new(crate::classify::template_kind(&err), err.to_string())
}

/// Builds the template; progress of the base import goes to `progress`, step lines to stderr.
pub async fn build(
    manager: &SandboxManager,
    build: FileBuild<'_>,
    progress: &UnboundedSender<Progress>,
) -> anyhow::Result<BuildReport> {
    let text = read_hearthfile(build.file)?;
    let steps =
        hearthfile::parse(&text).map_err(|err| cli(ErrorKind::BadInput, err.to_string()))?;
    let context = build
        .file
        .canonicalize()
        .ok()
        .and_then(|f| f.parent().map(Path::to_owned))
        .ok_or_else(|| cli(ErrorKind::BadInput, "the Hearthfile has no directory"))?;
    let Some(Instruction::From(reference)) = steps.first() else {
        return Err(cli(ErrorKind::BadInput, "the first instruction must be FROM").into());
    };
    let source = base_source(reference, &context, build.plain_http)?;
    let store = &manager.templates;
    let _lock = store.begin().await.map_err(template_err)?;
    let mut report = store
        .import(
            build.name,
            &source,
            build.credentials.clone(),
            build.limits,
            progress,
        )
        .await
        .map_err(template_err)?;
    let template = &mut report.template;
    template.source = format!("hearthfile:{}", build.file.display());
    let mut key = Digest::of(format!("FROM {}", template.manifest_digest).as_bytes());
    let total = steps.len() - 1;
    for (index, step) in steps.iter().enumerate().skip(1) {
        errln!(
            "hearth template: step {index}/{total}: {}",
            step.canonical()
        )?;
        key = Digest::of(format!("{key}\n{}", step.canonical()).as_bytes());
        match step {
            Instruction::From(_) => {}
            Instruction::Env(pairs) => {
                for (name, value) in pairs {
                    template
                        .env
                        .retain(|kv| kv.split_once('=').map(|(k, _)| k) != Some(name));
                    template.env.push(format!("{name}={value}"));
                }
            }
            Instruction::Workdir(dir) => {
                let current = template
                    .working_dir
                    .clone()
                    .unwrap_or_else(|| "/".to_owned());
                template.working_dir = Some(Path::new(&current).join(dir).display().to_string());
            }
            Instruction::User(user) => {
                template.user = Some(user.clone());
                (template.uid, template.gid) = user_ids(store, template)?;
            }
            Instruction::Copy { sources, dest } => {
                let layer =
                    copy_step(store, template, &context, sources, dest, build.limits).await?;
                key = Digest::of(format!("{key}\n{}", layer.diff_id).as_bytes());
                template.layers.push(layer);
            }
            Instruction::Run(argv) => {
                let layer = match store.cached_step(&key) {
                    Some(layer) => {
                        errln!("hearth template: step {index}/{total}: cached")?;
                        layer
                    }
                    None => {
                        let layer = run_step(manager, template, argv, &build).await?;
                        store.remember_step(&key, &layer).map_err(template_err)?;
                        layer
                    }
                };
                template.layers.push(layer);
            }
        }
    }
    (template.uid, template.gid) = user_ids(store, template)?;
    template.size_bytes = template.layers.iter().map(|l| l.bytes).sum();
    if template.size_bytes > build.limits.template_bytes {
        return Err(template_err(TemplateError::TooLarge {
            limit: build.limits.template_bytes,
        })
        .into());
    }
    // What the steps made is this template's identity: its "manifest" is the last step's key.
    template.manifest_digest = key;
    template.config_digest = Digest::of(serde_json::to_string(&template.layers)?.as_bytes());
    template.created_at = now_secs();
    store.write_record(template).map_err(template_err)?;
    Ok(report)
}

fn read_hearthfile(file: &Path) -> Result<String, CliError> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(file)
        .and_then(|f| f.take(MAX_FILE + 1).read_to_string(&mut text))
        .map_err(|err| cli(ErrorKind::BadInput, format!("{}: {err}", file.display())))?;
    if text.len() as u64 > MAX_FILE {
        return Err(cli(
            ErrorKind::BadInput,
            format!("{} is over {MAX_FILE} bytes", file.display()),
        ));
    }
    Ok(text)
}

/// FROM's image; a relative local path is taken from the Hearthfile's directory.
fn base_source(reference: &str, context: &Path, plain_http: bool) -> Result<SourceRef, CliError> {
    let source = SourceRef::parse(reference, plain_http)
        .map_err(|err| template_err(TemplateError::Source(err)))?;
    let anchor = |path: PathBuf| {
        if path.is_relative() {
            context.join(path)
        } else {
            path
        }
    };
    Ok(match source {
        SourceRef::Layout { dir, tag } => SourceRef::Layout {
            dir: anchor(dir),
            tag,
        },
        SourceRef::Archive { file } => SourceRef::Archive { file: anchor(file) },
        registry => registry,
    })
}

fn layer_dirs(store: &TemplateStore, template: &Template) -> Vec<PathBuf> {
    template.diff_ids().map(|d| store.layer_dir(d)).collect()
}

fn user_ids(store: &TemplateStore, template: &Template) -> Result<(u32, u32), CliError> {
    match &template.user {
        Some(user) => hearth_template::resolve_user(user, &layer_dirs(store, template))
            .map_err(|err| template_err(err.into())),
        None => Ok((0, 0)),
    }
}

async fn copy_step(
    store: &TemplateStore,
    template: &Template,
    context: &Path,
    sources: &[String],
    dest: &str,
    limits: TemplateLimits,
) -> Result<TemplateLayer, CliError> {
    let (store, layers) = (store.clone(), layer_dirs(store, template));
    let (context, sources, dest) = (context.to_owned(), sources.to_vec(), dest.to_owned());
    let workdir = template
        .working_dir
        .clone()
        .unwrap_or_else(|| "/".to_owned());
    tokio::task::spawn_blocking(move || {
        let tar = store.tmp_file().map_err(template_err)?;
        let below = |rel: &Path| TemplateStore::dir_attrs(&layers, rel);
        layer_tar::copy_to_tar(&context, &sources, &dest, &workdir, &below, tar.as_file())
            .map_err(|err| cli(ErrorKind::BadInput, err.to_string()))?;
        store.commit_tar(tar.path(), limits).map_err(template_err)
    })
    .await
    .map_err(|err| cli(ErrorKind::Internal, err.to_string()))?
}

/// Runs `argv` in a sandbox of the template so far; its upper dir becomes the new layer. The
/// sandbox is removed whatever happens.
async fn run_step(
    manager: &SandboxManager,
    template: &Template,
    argv: &[String],
    build: &FileBuild<'_>,
) -> anyhow::Result<TemplateLayer> {
    let request = SandboxRequest {
        net: NetRequest {
            allow: build.allow.clone(),
            ..NetRequest::default()
        },
        ..SandboxRequest::default()
    };
    let mut spec = request
        .validate()
        .map_err(|err| cli(ErrorKind::BadInput, format!("--{}: {err}", err.field())))?;
    spec.template = Some(SpecTemplate {
        name: build.name.to_owned(),
        layers: layer_dirs(&manager.templates, template),
        exec_defaults: ExecDefaults {
            env: template
                .env
                .iter()
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            cwd: template.working_dir.clone(),
        },
        uid: template.uid,
        gid: template.gid,
        vm_rootfs: None,
    });
    let record = manager.create(&spec).await?;
    let outcome = run_and_commit(manager, &record, argv, build.limits).await;
    let removed = manager.remove(&spec.id, true).await;
    let layer = outcome?;
    removed?;
    Ok(layer)
}

async fn run_and_commit(
    manager: &SandboxManager,
    record: &crate::store::SandboxRecord,
    argv: &[String],
    limits: TemplateLimits,
) -> anyhow::Result<TemplateLayer> {
    let client = manager.guest(&record.id).await?;
    let request = ExecRequest {
        argv: argv.to_vec(),
        env: Default::default(),
        cwd: None,
        stdin: None,
        timeout_ms: None,
        stdin_open: false,
    };
    // The step's output is the build's log: straight to stderr.
    let status = client
        .exec(&request, |chunk| {
            if let OutputChunk::Stdout(data) | OutputChunk::Stderr(data) = chunk {
                let _ = super::output::write_bytes(super::output::Stream::Stderr, &data);
            }
        })
        .await?;
    if !status.success() {
        return Err(cli(
            ErrorKind::BadInput,
            format!(
                "RUN {} failed with exit code {}",
                argv.join(" "),
                status.shell_code()
            ),
        )
        .into());
    }
    let ids = record
        .host_ids
        .ok_or_else(|| cli(ErrorKind::Internal, "the build sandbox has no host ids"))?;
    let upper = manager.dirs.sandbox(&record.id).base().join("disk/upper");
    let store = manager.templates.clone();
    let layer = tokio::task::spawn_blocking(move || {
        let tar = store.tmp_file().map_err(template_err)?;
        layer_tar::upper_to_tar(&upper, ids.root(), tar.as_file())
            .map_err(|err| cli(ErrorKind::Internal, format!("{}: {err}", upper.display())))?;
        store.commit_tar(tar.path(), limits).map_err(template_err)
    })
    .await??;
    Ok(layer)
}
