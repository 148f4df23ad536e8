//! `hearth run "PROMPT"`: one agent task in a fresh sandbox, with live progress.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use serde_json::{json, Value};

use super::escape::field;
use super::output::{self, errln, outln, OutputError};
use super::spinner::Spinner;
use crate::config::Settings;
use crate::exit::{CliError, ErrorKind};
use crate::store::{TaskId, TaskRecord, TaskStatus};
use crate::tasks::model::ModelBackend;
use crate::tasks::params;
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
    #[arg(long, default_value = params::DEFAULT_MODEL)]
    model: String,
    /// Model calls the agent may make.
    #[arg(long, default_value_t = params::DEFAULT_MAX_STEPS)]
    max_steps: u32,
    /// Token budget for the whole task, enforced by the gateway.
    #[arg(long, default_value_t = params::DEFAULT_MAX_TOKENS)]
    max_tokens: u64,
    /// Wall-clock limit in seconds (at most a day).
    #[arg(long, default_value_t = params::DEFAULT_TIMEOUT_S)]
    timeout: f64,
    /// A destination the sandbox may reach besides the gateway: CIDR[:port] or domain[:port].
    #[arg(long = "allow", value_name = "DEST")]
    allow: Vec<String>,
    /// Run in a sandbox made from this template (`hearth template ls`); it needs python3.
    #[arg(long, value_name = "NAME")]
    template: Option<String>,
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
    let spec = params::stored_spec(&request);
    manager
        .store
        .insert_task(&id, &request.prompt, &request.model, &spec)
        .await?;
    let (cancel_tx, cancel_rx) = tokio::sync::watch::channel(false);
    let mut printer = Printer::new(args.json, cancel_tx.clone());
    printer.line(
        &json!({"type": "task", "id": id, "model": model.description}),
        &format!("task {id}: {}", field(&model.description)),
    );
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
    printer.finish(&record)?;
    Ok(match record.status {
        TaskStatus::Succeeded => 0,
        TaskStatus::TimedOut => TASK_TIMED_OUT,
        TaskStatus::Cancelled => TASK_CANCELLED,
        _ => TASK_FAILED,
    })
}

/// The same validation as `POST /v1/tasks` (see [`params::TaskParams`]), with the flag named in
/// the error. A relative `--workspace` is taken from the current directory.
fn build_request(args: &RunArgs) -> Result<TaskRequest, CliError> {
    let workspace = match &args.workspace {
        Some(dir) if dir.is_relative() => Some(
            std::env::current_dir()
                .map_err(|err| {
                    CliError::new(ErrorKind::BadInput, format!("current directory: {err}"))
                })?
                .join(dir),
        ),
        other => other.clone(),
    };
    let params = params::TaskParams {
        prompt: args.prompt.clone(),
        model: args.model.clone(),
        max_steps: args.max_steps,
        max_tokens: args.max_tokens,
        timeout_s: args.timeout,
        workspace,
        allow: args.allow.clone(),
        template: args.template.clone(),
    };
    params.validate().map_err(|err| {
        let flag = match err.field {
            "prompt" => "PROMPT".to_owned(),
            "timeout_s" => "--timeout".to_owned(),
            field => format!("--{}", field.replace('_', "-")),
        };
        CliError::new(ErrorKind::BadInput, format!("{flag}: {}", err.problem))
    })
}

/// Progress on stderr for people (a line per step, under a spinner on a terminal), or JSON
/// lines on stdout for scripts. Tool arguments, reasons and process names are the model's or
/// the workload's: escaped with [`field`] into single lines.
///
/// When the progress can't be written (its reader went away: `hearth run --json | head`), the
/// printer stops printing and cancels the task, as Ctrl-C would: nobody is left to see the
/// result, the shell waits for the whole pipeline, and every further step costs tokens. The
/// runner still removes the sandbox, and the task is kept, cancelled, in the store.
#[derive(Debug)]
struct Printer {
    json: bool,
    spinner: Option<Spinner>,
    cancel: tokio::sync::watch::Sender<bool>,
    /// The first failed write; nothing is printed after it.
    failed: Option<OutputError>,
}

impl Printer {
    fn new(json: bool, cancel: tokio::sync::watch::Sender<bool>) -> Self {
        let spinner = (!json && std::io::stderr().is_terminal())
            .then(|| Spinner::start("starting the sandbox"));
        Self {
            json,
            spinner,
            cancel,
            failed: None,
        }
    }

    fn line(&mut self, value: &Value, text: &str) {
        if self.failed.is_some() {
            return;
        }
        let written = if self.json {
            output::print_json_line(value)
        } else if let Some(spinner) = &self.spinner {
            spinner.println(&format!("\u{25b8} {text}"))
        } else {
            errln!("{text}")
        };
        self.check(written);
    }

    /// Records a failed write and cancels the task (once).
    fn check(&mut self, written: Result<(), OutputError>) {
        if let (Err(err), None) = (written, &self.failed) {
            let _ = self.cancel.send(true);
            self.failed = Some(err);
        }
    }

    fn status(&self, text: String) {
        if let Some(spinner) = &self.spinner {
            spinner.set_status(text);
        }
    }

    fn progress(&mut self, progress: &Progress) {
        if self.failed.is_some() {
            return;
        }
        match progress {
            Progress::Started { sandbox, workspace } => {
                self.line(
                    &json!({"type": "started", "sandbox": sandbox, "workspace": workspace}),
                    &format!(
                        "sandbox {sandbox} up; workspace {}",
                        field(&workspace.display().to_string())
                    ),
                );
                self.status("agent starting".into());
            }
            Progress::Agent(event) => self.agent(event),
            Progress::Security { kind, data } => {
                if self.json {
                    let written = output::print_json_line(&json!({"type": kind, "event": data}));
                    self.check(written);
                } else {
                    self.line(data, &security_line(kind, data));
                }
            }
        }
    }

    fn agent(&mut self, event: &Value) {
        if self.json {
            let written = output::print_json_line(&json!({"type": "agent", "event": event}));
            self.check(written);
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
                self.status(format!("step {step} · {tokens} tokens · waiting for tools"));
            }
            Some("tool_call") => {
                let name = field(event["name"].as_str().unwrap_or("?"));
                let args: String = event["arguments"]
                    .as_str()
                    .unwrap_or("")
                    .chars()
                    .take(80)
                    .collect();
                self.line(event, &format!("step {step}: {name} {}", field(&args)));
                self.status(format!("step {step} · running {name}"));
            }
            Some("tool_result") => self.status(format!("step {step} · asking the model")),
            Some("error") => self.line(
                event,
                &format!(
                    "step {step}: error: {}",
                    field(event["reason"].as_str().unwrap_or("?"))
                ),
            ),
            _ => {}
        }
    }

    /// The result: the outcome on stderr, the diff and the answer (multi-line text, escaped
    /// but for line feeds and tabs) on stdout. A progress write that failed ends here, after the
    /// run's cleanup, as that error.
    fn finish(&mut self, record: &TaskRecord) -> Result<(), OutputError> {
        if let Some(spinner) = self.spinner.take() {
            spinner.stop();
        }
        if let Some(err) = self.failed.take() {
            return Err(err);
        }
        if self.json {
            return output::print_json_line(&json!({"type": "result", "task": record}));
        }
        errln!(
            "task {} {} ({} prompt + {} completion tokens)",
            record.id,
            record.status,
            record.prompt_tokens,
            record.completion_tokens
        )?;
        if let Some(reason) = &record.reason {
            errln!("reason: {reason}")?;
        }
        if let Some(diff) = record.diff.as_deref().filter(|d| !d.is_empty()) {
            outln!("{diff}")?;
        }
        if let Some(answer) = &record.answer {
            outln!("{answer}")?;
        }
        Ok(())
    }
}

/// One line for a denial or a drop.
fn security_line(kind: &str, data: &Value) -> String {
    match kind {
        "syscall_denied" => format!(
            "! syscall {} {} (pid {}, {})",
            field(data["syscall"].as_str().unwrap_or("(unknown)")),
            match data["action"].as_str() {
                Some("denied_eperm") => "denied with EPERM".into(),
                Some("killed_process") => "killed the process".into(),
                Some(other) => field(other),
                None => "denied".into(),
            },
            data["pid"]
                .as_i64()
                .map_or_else(|| "?".to_owned(), |p| p.to_string()),
            field(data["comm"].as_str().unwrap_or("?")),
        ),
        _ => format!(
            "! firewall dropped {} to {}{} ({})",
            match data["protocol"].as_u64() {
                Some(6) => "tcp".to_owned(),
                Some(17) => "udp".to_owned(),
                Some(1) => "icmp".to_owned(),
                Some(n) => format!("protocol {n}"),
                None => "a packet".to_owned(),
            },
            field(data["destination"].as_str().unwrap_or("?")),
            data["port"]
                .as_u64()
                .map(|p| format!(":{p}"))
                .unwrap_or_default(),
            field(data["reason"].as_str().unwrap_or("?")),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn security_lines_escape_what_the_workload_chose() {
        let denial = json!({"syscall": "unshare", "action": "denied_eperm", "pid": 7,
                            "comm": "\u{1b}[31mred\n! fake"});
        let line = security_line("syscall_denied", &denial);
        assert!(line.ends_with("(pid 7, \\x1b[31mred\\n! fake)"), "{line}");
        let drop = json!({"protocol": 6, "destination": "10.0.0.9\u{9b}", "port": 80,
                          "reason": "policy\r"});
        let line = security_line("network_drop", &drop);
        assert_eq!(
            line,
            "! firewall dropped tcp to 10.0.0.9\\u{9b}:80 (policy\\r)"
        );
    }
}
