//! Checks tool arguments against the tool's JSON Schema before anything runs: a person editing a
//! call's arguments (tool approvals) gets told which field is wrong, instead of the tool failing
//! later with the model seeing the error.
//!
//! The subset of JSON Schema that tool schemas use (schemars output, MCP tools): `type`,
//! `properties`, `required`, `additionalProperties: false`, `items`, `enum`, `const`, `anyOf` /
//! `oneOf`, and local `$ref`s (`#/$defs/…`, `#/definitions/…`). Other keywords are not checked
//! here; the tool still checks its own arguments when it runs.

use serde_json::Value;

/// Arguments that do not match a tool's schema, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ArgumentError {
    /// Where: a JSON pointer into the arguments (`/` for the whole object).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// Checks `args` against `schema` (the tool's parameters).
pub fn check_arguments(schema: &Value, args: &Value) -> Result<(), ArgumentError> {
    Checker { root: schema }.check(schema, args, "")
}

struct Checker<'a> {
    root: &'a Value,
}

impl Checker<'_> {
    fn check(&self, schema: &Value, value: &Value, at: &str) -> Result<(), ArgumentError> {
        let Some(schema) = schema.as_object() else { return Ok(()) };
        let fail = |message: String| Err(ArgumentError { field: pointer(at), message });
        if let Some(target) = schema.get("$ref").and_then(Value::as_str) {
            return match self.resolve(target) {
                Some(s) => self.check(s, value, at),
                None => fail(format!("the schema refers to {target}, which it does not define")),
            };
        }
        if let Some(branches) = schema.get("anyOf").or_else(|| schema.get("oneOf")).and_then(Value::as_array)
            && !branches.iter().any(|b| self.check(b, value, at).is_ok())
        {
            return match branches.iter().map(|b| self.check(b, value, at)).find_map(Result::err) {
                Some(e) => Err(e),
                None => fail("matches none of the allowed shapes".into()),
            };
        }
        if let Some(types) = schema.get("type")
            && !type_matches(types, value)
        {
            return fail(format!("expected {}, got {}", type_names(types), kind_of(value)));
        }
        if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
            && !allowed.contains(value)
        {
            return fail(format!("{value} is not one of {}", Value::Array(allowed.clone())));
        }
        if let Some(c) = schema.get("const")
            && c != value
        {
            return fail(format!("must be {c}"));
        }
        match value {
            Value::Object(map) => self.check_object(schema, map, at),
            Value::Array(items) => match schema.get("items") {
                Some(item) => (items.iter().enumerate())
                    .try_for_each(|(i, v)| self.check(item, v, &format!("{at}/{i}"))),
                None => Ok(()),
            },
            _ => Ok(()),
        }
    }

    fn check_object(
        &self,
        schema: &serde_json::Map<String, Value>,
        map: &serde_json::Map<String, Value>,
        at: &str,
    ) -> Result<(), ArgumentError> {
        let props = schema.get("properties").and_then(Value::as_object);
        for name in schema.get("required").and_then(Value::as_array).into_iter().flatten() {
            if let Some(name) = name.as_str()
                && !map.contains_key(name)
            {
                let message = "is required".to_owned();
                return Err(ArgumentError { field: pointer(&format!("{at}/{name}")), message });
            }
        }
        for (key, v) in map {
            let here = format!("{at}/{key}");
            match props.and_then(|p| p.get(key)) {
                Some(s) => self.check(s, v, &here)?,
                None if schema.get("additionalProperties") == Some(&Value::Bool(false)) => {
                    let known: Vec<&str> =
                        props.into_iter().flat_map(|p| p.keys()).map(String::as_str).collect();
                    let message = format!("unknown field (expected one of: {})", known.join(", "));
                    return Err(ArgumentError { field: pointer(&here), message });
                }
                None => {}
            }
        }
        Ok(())
    }

    fn resolve(&self, target: &str) -> Option<&Value> {
        let path = target.strip_prefix('#')?;
        self.root.pointer(path)
    }
}

fn pointer(at: &str) -> String {
    if at.is_empty() { "/".into() } else { at.to_owned() }
}

fn type_matches(types: &Value, value: &Value) -> bool {
    match types {
        Value::String(t) => one_type_matches(t, value),
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).any(|t| one_type_matches(t, value)),
        _ => true,
    }
}

fn one_type_matches(t: &str, value: &Value) -> bool {
    match t {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        "null" => value.is_null(),
        "number" => value.is_number(),
        "integer" => value.is_i64() || value.is_u64() || value.as_f64().is_some_and(|f| f.fract() == 0.0),
        _ => true,
    }
}

fn type_names(types: &Value) -> String {
    match types {
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" or "),
        t => t.as_str().unwrap_or("?").to_owned(),
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[derive(serde::Deserialize, schemars::JsonSchema)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Args {
        path: String,
        count: Option<u32>,
        mode: Mode,
        inner: Option<Inner>,
    }

    #[derive(serde::Deserialize, schemars::JsonSchema)]
    #[serde(rename_all = "snake_case")]
    #[allow(dead_code)]
    enum Mode {
        Append,
        Replace,
    }

    #[derive(serde::Deserialize, schemars::JsonSchema)]
    #[allow(dead_code)]
    struct Inner {
        lines: Vec<String>,
    }

    fn err(args: Value) -> ArgumentError {
        check_arguments(&crate::tools::schema_of::<Args>(), &args).unwrap_err()
    }

    #[test]
    fn arguments_matching_a_schemars_schema_pass() {
        let schema = crate::tools::schema_of::<Args>();
        let ok = json!({"path": "a", "count": 3, "mode": "append", "inner": {"lines": ["x"]}});
        assert_eq!(check_arguments(&schema, &ok), Ok(()));
        assert_eq!(check_arguments(&schema, &json!({"path": "a", "mode": "replace", "count": null})), Ok(()));
    }

    #[test]
    fn each_mismatch_names_its_field() {
        assert_eq!(err(json!({"mode": "append"})).field, "/path");
        let e = err(json!({"path": 7, "mode": "append"}));
        assert_eq!((e.field.as_str(), e.message.as_str()), ("/path", "expected string, got a number"));
        assert_eq!(err(json!({"path": "a", "mode": "delete"})).field, "/mode");
        assert_eq!(err(json!({"path": "a", "mode": "append", "extra": 1})).field, "/extra");
        assert_eq!(err(json!({"path": "a", "mode": "append", "count": "3"})).field, "/count");
        assert_eq!(
            err(json!({"path": "a", "mode": "append", "inner": {"lines": [1]}})).field,
            "/inner/lines/0"
        );
        assert_eq!(err(json!(["not", "an", "object"])).field, "/");
    }
}
