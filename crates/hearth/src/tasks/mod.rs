//! Agent tasks: a prompt run by the Python agent inside a fresh sandbox, the model reached only
//! through hearth's gateway, everything recorded in the task's timeline.

mod agent_files;
pub mod diff;
pub mod handback;
pub mod model;
pub mod params;
pub mod queue;
pub mod recorder;
pub mod restart;
pub mod runner;
pub mod security;
mod slots;

use std::path::PathBuf;

use crate::sandboxes::SandboxError;
use crate::store::{StoreError, TaskId};

/// Why a task could not run (as opposed to an agent that ran and failed, which is an outcome).
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("task {0} is not queued; it cannot start")]
    NotStartable(TaskId),
    #[error("cannot create {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("gateway: {0}")]
    Gateway(String),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Guest(#[from] hearth_sandbox::guest_client::GuestClientError),
    #[error("handing the workspace back: {0}")]
    Handback(#[from] handback::HandbackError),
    #[error("template {0} has no python3 on its PATH, and the agent loop runs on python3: build the template from an image that has it, or leave out --template")]
    NoPython(String),
}
