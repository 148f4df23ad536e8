//! The MCP tool server: tool definitions (names, arguments and schemas) and the handler glue.
//!
//! Tool names and argument names match `agent/tests/sdk_mcp_server.py`, the reference server the
//! agent's tests run against. Anything a model can fix (a missing file, an ambiguous edit, a bad
//! argument, a timeout) is a tool result with `isError: true`, never a JSON-RPC error: the agent
//! feeds tool results back to the model, so the model gets to try again.

use std::fmt::Display;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::tool::ToolCallContext;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock};
use rmcp::service::RequestContext;
use rmcp::{tool, tool_handler, tool_router, ErrorData, RoleServer, ServerHandler};
use schemars::JsonSchema;
use serde::Deserialize;

use super::files::Workspace;
use super::shell::Shell;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(transform = tidy_optional_fields)]
struct ShellArgs {
    /// The command line, run by `/bin/sh -c` in the workspace directory with stdin closed.
    command: String,
    /// Seconds before the command and everything it started are killed (default: 60).
    #[serde(default)]
    #[schemars(with = "f64", range(min = 0.001))]
    timeout_s: Option<f64>,
}

/// Removes what schemars adds to an optional `f64` that only adds noise to a model's prompt: a
/// `"default": null` (which reads as an invitation to send null) and `"format": "double"`.
fn tidy_optional_fields(schema: &mut schemars::Schema) {
    let properties = schema.get_mut("properties").and_then(|p| p.as_object_mut());
    for property in properties.into_iter().flat_map(|p| p.values_mut()) {
        if let Some(property) = property.as_object_mut() {
            if property
                .get("default")
                .is_some_and(serde_json::Value::is_null)
            {
                property.remove("default");
            }
            if property.get("format").and_then(serde_json::Value::as_str) == Some("double") {
                property.remove("format");
            }
        }
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct PathArgs {
    /// A path, relative to the workspace or absolute.
    path: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct WriteArgs {
    /// A path, relative to the workspace or absolute; missing parent directories are created.
    path: String,
    /// The whole new content of the file (UTF-8 text).
    content: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct EditArgs {
    /// A path, relative to the workspace or absolute.
    path: String,
    /// Text to replace; must occur exactly once in the file, whitespace included.
    old: String,
    /// The replacement text.
    new: String,
}

/// The server one `hearth-guest mcp` process runs.
#[derive(Debug, Clone)]
pub struct ToolServer {
    shell: Shell,
    workspace: Workspace,
    tool_router: ToolRouter<Self>,
}

fn reply<E: Display>(result: Result<String, E>) -> CallToolResult {
    match result {
        Ok(text) => CallToolResult::success(vec![ContentBlock::text(text)]),
        Err(err) => CallToolResult::error(vec![ContentBlock::text(err.to_string())]),
    }
}

#[tool_router]
impl ToolServer {
    pub fn new(shell: Shell, workspace: Workspace) -> Self {
        Self {
            shell,
            workspace,
            tool_router: Self::tool_router(),
        }
    }

    /// The process groups of the commands this server started.
    pub fn groups(&self) -> super::shell::Groups {
        self.shell.groups.clone()
    }

    /// Runs blocking file I/O off the async workers, so a slow disk never stalls a running
    /// shell call's output capture.
    async fn blocking<F>(&self, op: F) -> CallToolResult
    where
        F: FnOnce(&Workspace) -> Result<String, super::files::FileError> + Send + 'static,
    {
        let workspace = self.workspace.clone();
        match tokio::task::spawn_blocking(move || op(&workspace)).await {
            Ok(result) => reply(result),
            Err(join) => reply::<String>(Err(format!("the file operation failed: {join}"))),
        }
    }

    #[tool(
        description = "Run a shell command (/bin/sh -c) in the workspace directory. Returns the \
                       exit code, stdout and stderr; long output loses its middle, marked as \
                       such. The command is killed with its whole process group at the timeout."
    )]
    async fn shell(
        &self,
        Parameters(args): Parameters<ShellArgs>,
        context: RequestContext<RoleServer>,
    ) -> CallToolResult {
        let timeout = match self.shell.timeout(args.timeout_s) {
            Ok(timeout) => timeout,
            Err(err) => return reply(Err::<String, _>(err)),
        };
        reply(
            self.shell
                .run(&args.command, timeout, context.ct.cancelled())
                .await,
        )
    }

    #[tool(
        description = "Read a UTF-8 text file.",
        annotations(read_only_hint = true)
    )]
    async fn read_file(&self, Parameters(args): Parameters<PathArgs>) -> CallToolResult {
        self.blocking(move |ws| ws.read(&args.path)).await
    }

    #[tool(
        description = "Create or overwrite a file with the given content (atomically; missing \
                       parent directories are created).",
        annotations(destructive_hint = true, idempotent_hint = true)
    )]
    async fn write_file(&self, Parameters(args): Parameters<WriteArgs>) -> CallToolResult {
        self.blocking(move |ws| ws.write(&args.path, &args.content))
            .await
    }

    #[tool(
        description = "Replace the exact string `old` with `new` in a file; `old` must occur \
                       exactly once (include surrounding lines to make it unique).",
        annotations(destructive_hint = true)
    )]
    async fn edit_file(&self, Parameters(args): Parameters<EditArgs>) -> CallToolResult {
        self.blocking(move |ws| ws.edit(&args.path, &args.old, &args.new))
            .await
    }

    #[tool(
        description = "List a directory, one name a line, sorted; directories end with '/'.",
        annotations(read_only_hint = true)
    )]
    async fn list_dir(&self, Parameters(args): Parameters<PathArgs>) -> CallToolResult {
        self.blocking(move |ws| ws.list(&args.path)).await
    }
}

#[tool_handler(
    router = self.tool_router,
    name = "hearth-guest",
    instructions = "Tools for working in the task's workspace: shell, read_file, write_file, \
                    edit_file, list_dir. Relative paths are relative to the workspace."
)]
impl ServerHandler for ToolServer {
    /// The router's dispatch (which already turns arguments that do not fit a tool's schema into
    /// an error result, as MCP 2025-11-25 advises), with a better answer for an unknown tool: a
    /// protocol error (-32602) that names the tools there are, not just "tool not found".
    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        if !self.tool_router.has_route(&request.name) {
            let known: Vec<_> = self
                .tool_router
                .list_all()
                .into_iter()
                .map(|t| t.name)
                .collect();
            let message = format!(
                "unknown tool {:?}; the tools are: {}",
                request.name,
                known.join(", ")
            );
            return Err(ErrorData::invalid_params(message, None));
        }
        let call = ToolCallContext::new(self, request, context);
        self.tool_router.call(call).await
    }
}
