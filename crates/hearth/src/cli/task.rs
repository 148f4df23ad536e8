//! `hearth task ls|show|export`: what tasks did, from the store.

use clap::Subcommand;
use serde_json::json;

use crate::config::Settings;
use crate::exit::{CliError, NOT_FOUND};
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
                println!("{}", serde_json::to_string_pretty(&tasks)?);
            } else {
                println!("{:<16} {:<11} {:>8}  PROMPT", "ID", "STATUS", "TOKENS");
                for task in tasks {
                    let prompt: String = task.prompt.chars().take(60).collect();
                    println!(
                        "{:<16} {:<11} {:>8}  {prompt}",
                        task.id.to_string(),
                        task.status.to_string(),
                        task.prompt_tokens + task.completion_tokens
                    );
                }
            }
        }
        TaskCommand::Show { id, json } => {
            let task = find(&store, &id).await?;
            let events = store.events_after(&task.id, 0).await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({"task": task, "events": events}))?
                );
            } else {
                print_task(&task);
                println!("\ntimeline ({} events):", events.len());
                for event in events {
                    let summary = event
                        .data
                        .get("type")
                        .and_then(|t| t.as_str())
                        .unwrap_or("");
                    println!(
                        "  {:>4} {:>14} {:<9} {summary}",
                        event.seq, event.ts_ms, event.kind
                    );
                }
            }
        }
        TaskCommand::Export { id } => {
            let task = find(&store, &id).await?;
            println!("{}", json!({"kind": "task", "task": task}));
            for event in store.events_after(&task.id, 0).await? {
                println!(
                    "{}",
                    json!({"kind": event.kind, "seq": event.seq, "ts_ms": event.ts_ms, "data": event.data})
                );
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
        .ok_or_else(|| CliError::new(NOT_FOUND, format!("no task with id {id}")))?)
}

fn print_task(task: &TaskRecord) {
    println!("task      {}", task.id);
    println!("status    {}", task.status);
    println!("model     {}", task.model);
    println!("prompt    {}", task.prompt);
    println!(
        "tokens    {} prompt + {} completion",
        task.prompt_tokens, task.completion_tokens
    );
    if let Some(reason) = &task.reason {
        println!("reason    {reason}");
    }
    if let Some(answer) = &task.answer {
        println!("answer    {answer}");
    }
    if let Some(diff) = task.diff.as_deref().filter(|d| !d.is_empty()) {
        println!("diff:\n{diff}");
    }
}
