//! `hearth run "PROMPT"`: one agent task in a fresh sandbox, with live progress.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use hearth_sandbox::net::{AllowRule, NetMode, NetPolicy};
use hearth_sandbox::spec::ResourceLimits;
use serde_json::{json, Value};

use crate::config::Settings;
use crate::exit::{CliError, BAD_INPUT};
use crate::store::{TaskId, TaskRecord, TaskStatus};
use crate::tasks::model::ModelBackend;
use crate::tasks::recorder::StoreRecorder;
use crate::tasks::runner::{Progress, TaskRequest, TaskRunner};

/// Exit codes of `hearth run` beyond the common ones (see exit.rs).
const TASK_FAILED: u8 = 20;
const TASK_TIMED_OUT: u8 = 21;
const TASK_CANCELLED: u8 = 22;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// What the agent should do.
    prompt: String,
    /// Host directory the agent works in (mounted at /workspace); changes stay there and a
    /// diff is printed. Default: a new private directory under the state dir.
    #[arg(long, value_name = "DIR")]
    workspace: Option<PathBuf>,
    /// Model name sent to the upstream.
    #[arg(long, default_value = "gpt-4o-mini")]
    model: String,
    /// Model calls the agent may make.
    #[arg(long, default_value_t = 30)]
    max_steps: u32,
    /// Token budget for the whole task, enforced by the gateway.
    #[arg(long, default_value_t = 200_000)]
    max_tokens: u64,
    /// Wall-clock limit in seconds.
    #[arg(long, default_value_t = 600.0)]
    timeout: f64,
    /// A destination the sandbox may reach besides the gateway: CIDR[:port] or domain[:port].
    #[arg(long = "allow", value_name = "DEST")]
    allow: Vec<String>,
    /// Print progress and the result as JSON lines.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: RunArgs, settings: &Settings) -> anyhow::Result<u8> {
    let request = build_request(&args)?;
    let manager = settings.manager().await?;
    manager.reconcile().await?;
    let (recorder, writer) = StoreRecorder::start(manager.store.clone());
    let recorder = Arc::new(recorder);
    let model = ModelBackend::from_env(Arc::clone(&recorder)).await?;
    let id = TaskId::generate();
    let spec = json!({"workspace": request.workspace, "max_steps": request.max_steps, "max_tokens": request.max_tokens, "timeout_s": request.timeout.as_secs_f64(), "net": request.net});
    manager
        .store
        .insert_task(&id, &request.prompt, &request.model, &spec)
        .await?;
    let mut printer = Printer::new(args.json);
    printer.line(
        &json!({"type": "task", "id": id, "model": model.description}),
        &format!("task {id}: {}", model.description),
    );

    let (cancel_tx, cancel_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            let _ = cancel_tx.send(true);
        }
    });
    let runner = TaskRunner {
        manager: &manager,
        model: &model,
        tasks_dir: settings.state_dir.join("tasks"),
    };
    let record = runner
        .run(
            &id,
            &request,
            |progress| printer.progress(&progress),
            cancel_rx,
        )
        .await?;
    recorder.close();
    let _ = writer.await;
    printer.finish(&record);
    Ok(match record.status {
        TaskStatus::Succeeded => 0,
        TaskStatus::TimedOut => TASK_TIMED_OUT,
        TaskStatus::Cancelled => TASK_CANCELLED,
        _ => TASK_FAILED,
    })
}

fn build_request(args: &RunArgs) -> Result<TaskRequest, CliError> {
    let bad = |message: String| CliError::new(BAD_INPUT, message);
    if args.prompt.trim().is_empty() {
        return Err(bad("the prompt is empty".into()));
    }
    if !(args.timeout.is_finite() && args.timeout > 0.0) {
        return Err(bad(format!(
            "--timeout {} must be a positive number of seconds",
            args.timeout
        )));
    }
    if args.max_steps == 0 || args.max_tokens == 0 {
        return Err(bad("--max-steps and --max-tokens must be at least 1".into()));
    }
    let workspace = match &args.workspace {
        Some(dir) => Some(
            dir.canonicalize()
                .map_err(|err| bad(format!("workspace {}: {err}", dir.display())))?,
        ),
        None => None,
    };
    let mut net = NetPolicy::new(if args.allow.is_empty() {
        NetMode::Gateway
    } else {
        NetMode::Allowlist
    });
    net.allow = args
        .allow
        .iter()
        .map(|raw| AllowRule::parse(raw))
        .collect::<Result<_, _>>()
        .map_err(|err| bad(err.to_string()))?;
    let policy = hearth_seccomp::load_policy("default").map_err(|err| bad(err.to_string()))?;
    let seccomp = hearth_seccomp::render_oci(&policy, None).map_err(|err| bad(err.to_string()))?;
    Ok(TaskRequest {
        prompt: args.prompt.clone(),
        model: args.model.clone(),
        workspace,
        max_steps: args.max_steps,
        max_tokens: args.max_tokens,
        timeout: Duration::from_secs_f64(args.timeout),
        net,
        limits: ResourceLimits::default(),
        seccomp,
    })
}

/// Progress on stderr for people (a line per step), or JSON lines on stdout for scripts.
#[derive(Debug)]
struct Printer {
    json: bool,
    terminal: bool,
}

impl Printer {
    fn new(json: bool) -> Self {
        Self {
            json,
            terminal: std::io::stderr().is_terminal(),
        }
    }

    fn line(&mut self, value: &Value, text: &str) {
        if self.json {
            println!("{value}");
        } else {
            eprintln!("{}{text}", if self.terminal { "\u{25b8} " } else { "" });
        }
    }

    fn progress(&mut self, progress: &Progress) {
        match progress {
            Progress::Started { sandbox, workspace } => {
                self.line(
                    &json!({"type": "started", "sandbox": sandbox, "workspace": workspace}),
                    &format!("sandbox {sandbox} up; workspace {}", workspace.display()),
                );
            }
            Progress::Agent(event) => {
                if self.json {
                    println!("{}", json!({"type": "agent", "event": event}));
                    return;
                }
                let step = event["step"].as_i64().unwrap_or(0);
                match event["type"].as_str() {
                    Some("model_call") => {
                        let tokens = event["tokens_total"].as_i64().unwrap_or(0);
                        self.line(
                            event,
                            &format!("step {step}: model answered ({tokens} tokens so far)"),
                        );
                    }
                    Some("tool_call") => {
                        let args: String = event["arguments"]
                            .as_str()
                            .unwrap_or("")
                            .chars()
                            .take(80)
                            .collect();
                        self.line(
                            event,
                            &format!(
                                "step {step}: {} {args}",
                                event["name"].as_str().unwrap_or("?")
                            ),
                        );
                    }
                    Some("error") => self.line(
                        event,
                        &format!(
                            "step {step}: error: {}",
                            event["reason"].as_str().unwrap_or("?")
                        ),
                    ),
                    _ => {}
                }
            }
        }
    }

    fn finish(&mut self, record: &TaskRecord) {
        if self.json {
            println!("{}", json!({"type": "result", "task": record}));
            return;
        }
        eprintln!(
            "task {} {} ({} prompt + {} completion tokens)",
            record.id, record.status, record.prompt_tokens, record.completion_tokens
        );
        if let Some(reason) = &record.reason {
            eprintln!("reason: {reason}");
        }
        if let Some(diff) = record.diff.as_deref().filter(|d| !d.is_empty()) {
            println!("{diff}");
        }
        if let Some(answer) = &record.answer {
            println!("{answer}");
        }
    }
}
