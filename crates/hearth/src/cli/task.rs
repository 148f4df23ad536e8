//! `hearth task ls|show|export`: what tasks did, from the store.

use clap::Subcommand;
use serde_json::json;

use super::escape::field;
use super::output::{self, outln, OutputError};
use crate::config::Settings;
use crate::exit::{CliError, ErrorKind};
use crate::store::{Store, TaskId, TaskRecord};

#[derive(Debug, Subcommand)]
pub enum TaskCommand {
    /// List tasks.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Show a task: status, answer, tokens, diff and its timeline.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Print a task's whole record as JSON Lines: the task, then every timeline event in order.
    Export { id: String },
}

pub async fn run(command: TaskCommand, settings: &Settings) -> anyhow::Result<u8> {
    let store = settings.store().await?;
    match command {
        TaskCommand::Ls { json } => {
            let tasks = store.list_tasks().await?;
            if json {
                output::print_json(&tasks)?;
            } else {
                outln!("{:<16} {:<11} {:>8}  PROMPT", "ID", "STATUS", "TOKENS")?;
                for task in tasks {
                    let prompt: String = task.prompt.chars().take(60).collect();
                    outln!(
                        "{:<16} {:<11} {:>8}  {}",
                        task.id.to_string(),
                        task.status.to_string(),
                        task.prompt_tokens + task.completion_tokens,
                        field(&prompt)
                    )?;
                }
            }
        }
        TaskCommand::Show { id, json } => {
            let task = find(&store, &id).await?;
            let events = store.events_after(&task.id, 0).await?;
            if json {
                output::print_json(&json!({"task": task, "events": events}))?;
            } else {
                print_task(&task)?;
                outln!("\ntimeline ({} events):", events.len())?;
                for event in events {
                    // The agent's own event type: whatever the agent wrote.
                    let summary = event
                        .data
                        .get("type")
                        .and_then(|t| t.as_str())
                        .unwrap_or("");
                    outln!(
                        "  {:>4} {:>14} {:<9} {}",
                        event.seq,
                        event.ts_ms,
                        field(&event.kind),
                        field(summary)
                    )?;
                }
            }
        }
        TaskCommand::Export { id } => {
            let task = find(&store, &id).await?;
            output::print_json_line(&json!({"kind": "task", "task": task}))?;
            for event in store.events_after(&task.id, 0).await? {
                output::print_json_line(
                    &json!({"kind": event.kind, "seq": event.seq, "ts_ms": event.ts_ms, "data": event.data}),
                )?;
            }
        }
    }
    Ok(0)
}

async fn find(store: &Store, raw: &str) -> anyhow::Result<TaskRecord> {
    let id = TaskId::parse(raw)?;
    Ok(store
        .get_task(&id)
        .await?
        .ok_or_else(|| CliError::new(ErrorKind::NotFound, format!("no task with id {id}")))?)
}

/// The task for people. The prompt, reason, answer and diff are multi-line text the model or
/// the workload wrote: [`outln!`] escapes every control in them but line feeds and tabs.
fn print_task(task: &TaskRecord) -> Result<(), OutputError> {
    outln!("task      {}", task.id)?;
    outln!("status    {}", task.status)?;
    outln!("model     {}", field(&task.model))?;
    outln!("prompt    {}", task.prompt)?;
    outln!(
        "tokens    {} prompt + {} completion",
        task.prompt_tokens,
        task.completion_tokens
    )?;
    if let Some(reason) = &task.reason {
        outln!("reason    {reason}")?;
    }
    if let Some(answer) = &task.answer {
        outln!("answer    {answer}")?;
    }
    if let Some(diff) = task.diff.as_deref().filter(|d| !d.is_empty()) {
        outln!("diff:\n{diff}")?;
    }
    Ok(())
}
