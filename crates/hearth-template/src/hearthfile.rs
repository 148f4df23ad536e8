//! The Hearthfile: a small Dockerfile subset for `hearth template build NAME --file FILE`.
//!
//! ```text
//! FROM REF                  the base image, as `--from` takes it (exactly one, first)
//! RUN command               `/bin/sh -c command` in a hearth sandbox of the layers so far
//! RUN ["prog", "arg"]       the same without a shell
//! COPY src... dest          files of the build context (the Hearthfile's directory)
//! ENV KEY=VALUE ...         also `ENV KEY VALUE`
//! WORKDIR /path             relative paths join the current one
//! USER name[:group]         who later RUNs and the sandboxes run as
//! ```
//!
//! `#` starts a comment line; a trailing `\` continues a line. Anything else is an error naming
//! the line: a silently ignored instruction would build a different template than was asked.

/// One instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Instruction {
    From(String),
    Run(Vec<String>),
    Copy { sources: Vec<String>, dest: String },
    Env(Vec<(String, String)>),
    Workdir(String),
    User(String),
}

impl Instruction {
    /// The instruction as the step cache keys it and progress shows it.
    pub fn canonical(&self) -> String {
        match self {
            Self::From(r) => format!("FROM {r}"),
            Self::Run(argv) => format!("RUN {}", serde_json::to_string(argv).unwrap_or_default()),
            Self::Copy { sources, dest } => format!("COPY {} {dest}", sources.join(" ")),
            Self::Env(pairs) => format!(
                "ENV {}",
                pairs
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            Self::Workdir(dir) => format!("WORKDIR {dir}"),
            Self::User(user) => format!("USER {user}"),
        }
    }
}

/// A Hearthfile that cannot be built, with its line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Hearthfile line {line}: {message}")]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

/// Parses a Hearthfile.
pub fn parse(text: &str) -> Result<Vec<Instruction>, ParseError> {
    let mut instructions = Vec::new();
    let mut pending = String::new();
    let mut start_line = 0;
    for (index, raw) in text.lines().enumerate() {
        let line_no = index + 1;
        let trimmed = raw.trim();
        if pending.is_empty() {
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            start_line = line_no;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        pending.push_str(trimmed);
        let line = std::mem::take(&mut pending);
        instructions.push(instruction(&line).map_err(|message| ParseError {
            line: start_line,
            message,
        })?);
    }
    if !pending.is_empty() {
        return Err(ParseError {
            line: start_line,
            message: "the file ends inside a continued line".to_owned(),
        });
    }
    match instructions.first() {
        Some(Instruction::From(_)) => {}
        _ => {
            return Err(ParseError {
                line: 1,
                message: "the first instruction must be FROM".to_owned(),
            })
        }
    }
    if let Some(pos) = instructions
        .iter()
        .skip(1)
        .position(|i| matches!(i, Instruction::From(_)))
    {
        return Err(ParseError {
            line: pos + 2,
            message: "only one FROM (multi-stage builds are not supported)".to_owned(),
        });
    }
    Ok(instructions)
}

fn instruction(line: &str) -> Result<Instruction, String> {
    let (keyword, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
    let rest = rest.trim();
    let need = |what: &str| -> Result<(), String> {
        if rest.is_empty() {
            Err(format!("{keyword} needs {what}"))
        } else {
            Ok(())
        }
    };
    match keyword.to_ascii_uppercase().as_str() {
        "FROM" => {
            need("an image reference")?;
            if rest.split_whitespace().count() != 1 {
                return Err("FROM takes one image reference (no AS, no --platform)".to_owned());
            }
            Ok(Instruction::From(rest.to_owned()))
        }
        "RUN" => {
            need("a command")?;
            if rest.starts_with('[') {
                let argv: Vec<String> = serde_json::from_str(rest)
                    .map_err(|err| format!("RUN [...] is not a JSON array of strings: {err}"))?;
                if argv.is_empty() {
                    return Err("RUN [] has no program".to_owned());
                }
                Ok(Instruction::Run(argv))
            } else {
                Ok(Instruction::Run(vec![
                    "/bin/sh".to_owned(),
                    "-c".to_owned(),
                    rest.to_owned(),
                ]))
            }
        }
        "COPY" => {
            if rest.starts_with("--") {
                return Err("COPY takes no flags here (no --from, --chown)".to_owned());
            }
            let mut words: Vec<String> = rest.split_whitespace().map(str::to_owned).collect();
            if words.len() < 2 {
                return Err("COPY needs a source and a destination".to_owned());
            }
            let dest = words.pop().unwrap_or_default();
            Ok(Instruction::Copy {
                sources: words,
                dest,
            })
        }
        "ENV" => {
            need("KEY=VALUE")?;
            let pairs = if rest.contains('=') {
                rest.split_whitespace()
                    .map(|word| {
                        word.split_once('=')
                            .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
                            .ok_or_else(|| format!("ENV {word:?} is not KEY=VALUE"))
                    })
                    .collect::<Result<Vec<_>, _>>()?
            } else {
                let (key, value) = rest
                    .split_once(char::is_whitespace)
                    .ok_or("ENV needs KEY=VALUE or KEY VALUE")?;
                vec![(key.to_owned(), value.trim().to_owned())]
            };
            if let Some((bad, _)) = pairs.iter().find(|(k, _)| k.is_empty() || k.contains('\0')) {
                return Err(format!("ENV {bad:?} is not a variable name"));
            }
            Ok(Instruction::Env(pairs))
        }
        "WORKDIR" => {
            need("a directory")?;
            Ok(Instruction::Workdir(rest.to_owned()))
        }
        "USER" => {
            need("a user")?;
            Ok(Instruction::User(rest.to_owned()))
        }
        other => Err(format!(
            "{other} is not supported (FROM, RUN, COPY, ENV, WORKDIR, USER are)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_subset_with_comments_and_continuations() {
        let text = "# base\nFROM oci:/x:v1\nRUN echo a \\\n  && echo b\nRUN [\"touch\", \"/f\"]\nCOPY a b /dst/\nENV A=1 B=\"two\"\nENV C three four\nWORKDIR /srv\nUSER app:staff\n";
        let parsed = parse(text).unwrap();
        assert_eq!(parsed[0], Instruction::From("oci:/x:v1".into()));
        assert_eq!(
            parsed[1],
            Instruction::Run(vec![
                "/bin/sh".into(),
                "-c".into(),
                "echo a  && echo b".into()
            ])
        );
        assert_eq!(
            parsed[2],
            Instruction::Run(vec!["touch".into(), "/f".into()])
        );
        assert_eq!(
            parsed[3],
            Instruction::Copy {
                sources: vec!["a".into(), "b".into()],
                dest: "/dst/".into()
            }
        );
        assert_eq!(
            parsed[4],
            Instruction::Env(vec![("A".into(), "1".into()), ("B".into(), "two".into())])
        );
        assert_eq!(
            parsed[5],
            Instruction::Env(vec![("C".into(), "three four".into())])
        );
        assert_eq!(parsed[6], Instruction::Workdir("/srv".into()));
        assert_eq!(parsed[7], Instruction::User("app:staff".into()));
    }

    #[test]
    fn refuses_what_it_does_not_build_naming_the_line() {
        for (text, line, needle) in [
            ("RUN x\n", 1, "first instruction must be FROM"),
            ("FROM a\nFROM b\n", 2, "only one FROM"),
            ("FROM a\n\nEXPOSE 80\n", 3, "EXPOSE is not supported"),
            ("FROM a\nCOPY --chown=1 a b\n", 2, "no flags"),
            ("FROM a\nCOPY a\n", 2, "source and a destination"),
            ("FROM a\nRUN [1]\n", 2, "JSON array"),
            ("FROM a AS b\n", 1, "one image reference"),
            ("FROM a\nRUN x \\\n", 2, "continued line"),
        ] {
            let err = parse(text).unwrap_err();
            assert_eq!(err.line, line, "{text:?}: {err}");
            assert!(err.message.contains(needle), "{text:?}: {err}");
        }
    }
}
