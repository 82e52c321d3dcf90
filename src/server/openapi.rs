//! The OpenAPI document served at `/openapi.json`.
//!
//! Routes, methods, parameters, status codes and the server's own bodies (`api.rs`) come from the
//! handlers' `#[utoipa::path]` annotations and `utoipa::ToSchema` derives. The library types in
//! those bodies (runs, plans, options, events…) already derive `schemars::JsonSchema`, the one
//! description of the plan and event contract; rather than derive a second schema of them that
//! could drift from the first, [`schemars_components!`] makes each a `ToSchema` that refers to its
//! component, and [`build`] fills those components with the schemars schemas (JSON Schema 2020-12,
//! which OpenAPI 3.1 uses).

use std::borrow::Cow;
use std::sync::OnceLock;

use schemars::JsonSchema;
use serde_json::{Map, Value, json};
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{RefOr, schema::Ref, schema::Schema};

use super::{api, approvals, routes};

/// Makes each library type a `utoipa::ToSchema` whose schema is a `$ref` to the component named
/// by its `JsonSchema`, and lists them for [`build`] to fill those components.
macro_rules! schemars_components {
    ($($ty:ty),* $(,)?) => {
        $(
            impl utoipa::PartialSchema for $ty {
                fn schema() -> RefOr<Schema> {
                    RefOr::Ref(Ref::from_schema_name(<$ty as JsonSchema>::schema_name()))
                }
            }
            impl utoipa::ToSchema for $ty {
                fn name() -> Cow<'static, str> {
                    <$ty as JsonSchema>::schema_name()
                }
            }
        )*
        /// The schemars schemas of the library types the API carries, by component name.
        fn library_schemas() -> Map<String, Value> {
            let mut settings = schemars::generate::SchemaSettings::draft2020_12();
            settings.definitions_path = "/components/schemas".into();
            let mut generator = settings.into_generator();
            $( generator.subschema_for::<$ty>(); )*
            generator.take_definitions(true)
        }
    };
}

schemars_components!(
    crate::run::RunResult,
    crate::run::RunEvent,
    crate::run::RunId,
    crate::run::RunStatus,
    crate::store::RunSummary,
    crate::plan::PlanSpec,
    crate::options::RunOptions,
    crate::options::Policy,
    crate::options::StepBudget,
    crate::options::RunBudget,
    crate::tools::SourceStatus,
    crate::tools::ToolHints,
);

#[derive(OpenApi)]
#[openapi(
    info(title = "stepwise", description = "Plan & Execute agent runtime: submit tasks, follow and steer their runs."),
    paths(
        routes::submit, routes::list, routes::get_run, routes::events, routes::approve, routes::reject,
        routes::cancel, routes::healthz, routes::readyz, routes::tools, routes::metrics, routes::openapi,
        approvals::list_approvals, approvals::resolve_approval,
    ),
    // Not reached from a body annotation: the events stream's `data`.
    components(schemas(
        crate::run::RunEvent,
        api::ErrorBody,
        approvals::ApprovalList,
        approvals::ApprovalView,
        approvals::ApprovalAnswer,
        approvals::ApprovalResolution,
    )),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI document of the API, built once.
pub fn openapi_json() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(build)
}

fn build() -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_else(|_| json!({}));
    let library = library_schemas();
    if let Some(components) = doc.get_mut("components").and_then(Value::as_object_mut) {
        let slot = components.entry("schemas").or_insert_with(|| json!({}));
        if let Some(slot) = slot.as_object_mut() {
            // Replaces the self-references utoipa collected for the bridged types.
            slot.extend(library);
        }
    }
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        paths
            .values_mut()
            .filter_map(Value::as_object_mut)
            .flat_map(|p| p.values_mut())
            .for_each(optional_body);
    }
    bound_unsigned_formats(&mut doc);
    doc
}

/// An optional body (`request_body(content = Option<T>)`) is omitted, not sent as JSON `null`,
/// which the handlers refuse: utoipa's `oneOf: [T, null]` becomes `T`, `required: false`.
fn optional_body(operation: &mut Value) {
    let Some(body) = operation.get_mut("requestBody") else { return };
    if body.get("required") == Some(&Value::Bool(true)) {
        return;
    }
    body["required"] = Value::Bool(false);
    let Some(media) = body.pointer_mut("/content/application~1json") else { return };
    let Some(branches) = media.pointer("/schema/oneOf").and_then(Value::as_array) else { return };
    let mut not_null = branches.iter().filter(|b| b.get("type") != Some(&json!("null")));
    if let (Some(only), None) = (not_null.next(), not_null.next()) {
        media["schema"] = only.clone();
    }
}

/// Adds the `maximum` that an unsigned `format` (`uint32`…) implies but does not state: a larger
/// number is refused when deserialised, so the document says so. utoipa spells these formats
/// `u-int32`…; they become `uint32`…, as schemars and other tools spell them.
fn bound_unsigned_formats(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            if let Some(Value::String(format)) = map.get_mut("format") {
                if let Some(bits) = format.strip_prefix("u-int") {
                    *format = format!("uint{bits}");
                }
            }
            let max = match map.get("format").and_then(Value::as_str) {
                Some("uint8") => Some(u64::from(u8::MAX)),
                Some("uint16") => Some(u64::from(u16::MAX)),
                Some("uint32") => Some(u64::from(u32::MAX)),
                Some("uint64" | "uint") => Some(u64::MAX),
                _ => None,
            };
            if let Some(max) = max {
                map.entry("maximum").or_insert(json!(max));
            }
            map.values_mut().for_each(bound_unsigned_formats);
        }
        Value::Array(items) => items.iter_mut().for_each(bound_unsigned_formats),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The schema a `$ref` chain ends at.
    fn resolve<'a>(doc: &'a Value, mut schema: &'a Value) -> &'a Value {
        while let Some(r) = schema.get("$ref").and_then(Value::as_str) {
            let at = r.strip_prefix('#').expect("local ref");
            schema = doc.pointer(at).unwrap_or_else(|| panic!("{r} does not resolve"));
        }
        schema
    }

    /// True when `schema` says nothing about the fields of a JSON object.
    fn untyped(doc: &Value, schema: &Value) -> bool {
        let s = resolve(doc, schema);
        let described = ["properties", "oneOf", "anyOf", "allOf", "items", "enum", "const"]
            .iter()
            .any(|k| s.get(k).is_some());
        let scalar = matches!(
            s.get("type").and_then(Value::as_str),
            Some("string" | "integer" | "number" | "boolean")
        );
        !(described || scalar)
    }

    /// Every (operation, where, media type, schema) of request and response bodies.
    fn bodies(doc: &Value) -> Vec<(String, String, &Value)> {
        let mut out = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let mut contents = vec![("request".to_owned(), &op["requestBody"]["content"])];
                for (status, resp) in op["responses"].as_object().unwrap() {
                    contents.push((status.clone(), &resp["content"]));
                }
                for (at, content) in contents {
                    for (media, m) in content.as_object().into_iter().flatten() {
                        out.push((format!("{method} {path}"), format!("{at} {media}"), &m["schema"]));
                    }
                }
            }
        }
        out
    }

    #[test]
    fn every_body_but_the_document_itself_is_typed() {
        let doc = build();
        let bodies = bodies(&doc);
        assert!(bodies.len() > 40, "{}", bodies.len());
        for (op, at, schema) in bodies {
            // The document's own schema is the OpenAPI meta-schema.
            if op == "get /openapi.json" && at.starts_with("200") {
                continue;
            }
            assert!(!untyped(&doc, schema), "{op} {at}: untyped body {schema}");
            let status = at.split(' ').next().unwrap();
            if status.starts_with('4') || status.starts_with('5') {
                assert_eq!(schema["$ref"], "#/components/schemas/Error", "{op} {at}");
            }
        }
    }

    #[test]
    fn every_component_is_a_schema_not_a_reference_to_itself() {
        let doc = build();
        for (name, schema) in doc["components"]["schemas"].as_object().unwrap() {
            assert!(schema.get("$ref").is_none(), "component {name} is only a reference: {schema}");
        }
        for name in
            ["RunResult", "RunEvent", "RunSummary", "PlanSpec", "Policy", "SubmitRequest", "RunAck", "Error"]
        {
            assert!(doc["components"]["schemas"][name]["description"].is_string(), "{name}");
        }
    }

    #[test]
    fn optional_bodies_are_omitted_rather_than_null() {
        let doc = build();
        let body = &doc["paths"]["/v1/runs/{id}/approve"]["post"]["requestBody"];
        assert_eq!(body["required"], false);
        assert_eq!(
            body["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/ApproveRequest"
        );
        assert_eq!(doc["paths"]["/v1/runs"]["post"]["requestBody"]["required"], true);
    }

    #[test]
    fn unsigned_formats_state_their_maximum() {
        let mut s =
            json!({"properties": {"a": {"type": "integer", "format": "uint32"}, "b": {"format": "uint8"}}});
        bound_unsigned_formats(&mut s);
        assert_eq!(s["properties"]["a"]["maximum"], json!(u32::MAX));
        assert_eq!(s["properties"]["b"]["maximum"], json!(255));
        let doc = build();
        let policy = &doc["components"]["schemas"]["Policy"]["properties"]["max_retries"];
        assert_eq!(policy["maximum"], json!(u32::MAX), "{policy}");
        let after = &doc["paths"]["/v1/runs/{id}/events"]["get"]["parameters"][1]["schema"];
        assert_eq!(after["format"], "uint64", "{after}");
        assert_eq!(after["maximum"], json!(u64::MAX), "{after}");
    }
}
