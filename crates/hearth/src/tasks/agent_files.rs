//! The Python agent, embedded in the hearth binary so an installed `hearth` needs no source
//! tree: the runner copies these files into each task's sandbox.

/// (path under the agent dir, content)
pub const AGENT_FILES: &[(&str, &str)] = &[
    ("loop.py", include_str!("../../../../agent/loop.py")),
    (
        "hearth_agent/__init__.py",
        include_str!("../../../../agent/hearth_agent/__init__.py"),
    ),
    (
        "hearth_agent/errors.py",
        include_str!("../../../../agent/hearth_agent/errors.py"),
    ),
    (
        "hearth_agent/loop.py",
        include_str!("../../../../agent/hearth_agent/loop.py"),
    ),
    (
        "hearth_agent/mcp_client.py",
        include_str!("../../../../agent/hearth_agent/mcp_client.py"),
    ),
    (
        "hearth_agent/messages.py",
        include_str!("../../../../agent/hearth_agent/messages.py"),
    ),
    (
        "hearth_agent/model.py",
        include_str!("../../../../agent/hearth_agent/model.py"),
    ),
    (
        "hearth_agent/task.py",
        include_str!("../../../../agent/hearth_agent/task.py"),
    ),
    (
        "hearth_agent/tools.py",
        include_str!("../../../../agent/hearth_agent/tools.py"),
    ),
    (
        "hearth_agent/trajectory.py",
        include_str!("../../../../agent/hearth_agent/trajectory.py"),
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    /// A new module in agent/hearth_agent must be embedded too, or the agent fails to import
    /// inside the sandbox.
    #[test]
    fn every_agent_module_is_embedded() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../agent/hearth_agent");
        for entry in std::fs::read_dir(dir).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            if name.ends_with(".py") {
                let path = format!("hearth_agent/{name}");
                assert!(
                    AGENT_FILES.iter().any(|(p, _)| *p == path),
                    "{path} is not embedded"
                );
            }
        }
    }
}
