//! Firecracker's swagger spec (`../shared/firecracker/firecracker.yaml`, read at test time,
//! never copied into the repository) as a request checker: the method and path must be in
//! `paths`, and the body must validate against the operation's body schema, with the
//! definitions turned into JSON Schema (draft 4, what swagger 2.0 builds on).
//!
//! Swagger objects allow unknown properties unless they say otherwise, but Firecracker's
//! parser refuses them (`deny_unknown_fields`), so every object schema here gets
//! `additionalProperties: false`: a misspelt field fails the test instead of the boot.

use std::path::PathBuf;

use serde_json::{Map, Value};

pub struct Spec {
    paths: Map<String, Value>,
    definitions: Value,
}

impl Spec {
    pub fn path() -> PathBuf {
        // shared/ sits beside the workspace root (or where HEARTH_SHARED_DIR says).
        hearth_sandbox::backend::firecracker::find_shared_file(
            "firecracker.yaml",
            &[PathBuf::from(env!("CARGO_MANIFEST_DIR"))],
        )
        .expect("Firecracker's API spec under shared/firecracker")
    }

    pub fn load() -> Spec {
        let path = Self::path();
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let yaml: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).expect("spec is YAML");
        let json = yaml_to_json(yaml);
        assert_eq!(json["swagger"], "2.0");
        let paths = json["paths"].as_object().expect("paths").clone();
        let mut definitions = json["definitions"].clone();
        for schema in definitions
            .as_object_mut()
            .expect("definitions")
            .values_mut()
        {
            strict(schema);
        }
        Spec { paths, definitions }
    }

    /// Checks one request; the error says what is wrong.
    pub fn check(&self, method: &str, path: &str, body: Option<&Value>) -> Result<(), String> {
        let (template, item) = self
            .paths
            .iter()
            .find(|(template, _)| matches_template(template, path))
            .ok_or_else(|| format!("{path}: no such path in the spec"))?;
        let operation = item
            .get(method.to_ascii_lowercase())
            .ok_or_else(|| format!("{method} {template}: method not in the spec"))?;
        let params = operation["parameters"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let body_param = params.iter().find(|p| p["in"] == "body");
        let (Some(param), Some(body)) = (body_param, body) else {
            return match (body_param, body) {
                (None, Some(_)) => Err(format!("{method} {template} takes no body")),
                (Some(p), None) if p["required"] == true => {
                    Err(format!("{method} {template} requires a body"))
                }
                _ => Ok(()),
            };
        };
        let mut schema = param["schema"].clone();
        schema["definitions"] = self.definitions.clone();
        let validator = jsonschema::draft4::new(&schema)
            .map_err(|e| format!("{method} {template}: schema does not compile: {e}"))?;
        let errors: Vec<String> = validator
            .iter_errors(body)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(format!("{method} {path}: {}", errors.join("; ")))
        }
    }

    /// The definition an operation's body uses, e.g. `Drive` for `PUT /drives/{drive_id}`.
    pub fn body_definition(&self, method: &str, path: &str) -> Option<String> {
        let (_, item) = self
            .paths
            .iter()
            .find(|(template, _)| matches_template(template, path))?;
        let params = item.get(method.to_ascii_lowercase())?["parameters"].as_array()?;
        let reference = params.iter().find(|p| p["in"] == "body")?["schema"]["$ref"].as_str()?;
        reference.rsplit('/').next().map(str::to_owned)
    }
}

/// `/drives/{drive_id}` matches `/drives/rootfs`.
fn matches_template(template: &str, path: &str) -> bool {
    let t: Vec<&str> = template.split('/').collect();
    let p: Vec<&str> = path.split('/').collect();
    t.len() == p.len()
        && t.iter()
            .zip(&p)
            .all(|(t, p)| (t.starts_with('{') && t.ends_with('}') && !p.is_empty()) || t == p)
}

/// Adds `additionalProperties: false` to every object schema that lists its properties.
fn strict(schema: &mut Value) {
    let Some(object) = schema.as_object_mut() else {
        return;
    };
    if let Some(Value::Object(props)) = object.get_mut("properties") {
        for prop in props.values_mut() {
            strict(prop);
        }
        object
            .entry("additionalProperties")
            .or_insert(Value::Bool(false));
    }
    if let Some(items) = object.get_mut("items") {
        strict(items);
    }
}

fn yaml_to_json(value: serde_yaml_ng::Value) -> Value {
    use serde_yaml_ng::Value as Y;
    match value {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => serde_json::to_value(n).expect("number"),
        Y::String(s) => Value::String(s),
        Y::Sequence(items) => Value::Array(items.into_iter().map(yaml_to_json).collect()),
        Y::Mapping(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| {
                    let key = match k {
                        Y::String(s) => s,
                        other => serde_yaml_ng::to_string(&other)
                            .expect("key")
                            .trim()
                            .to_owned(),
                    };
                    (key, yaml_to_json(v))
                })
                .collect(),
        ),
        Y::Tagged(tagged) => yaml_to_json(tagged.value),
    }
}
