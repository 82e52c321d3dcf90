//! The OpenAPI document served at `/openapi.json`.
//!
//! Routes, methods, parameters and status codes come from the handlers' `#[utoipa::path]`
//! annotations. The library types already derive `schemars::JsonSchema`, so rather than deriving
//! a second schema trait on them, their JSON Schemas (2020-12, which OpenAPI 3.1 uses) are put
//! into `components.schemas` and the bodies are pointed at them.

use std::sync::OnceLock;

use serde_json::{Value, json};
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

use super::{approvals, routes};

#[derive(OpenApi)]
#[openapi(
    info(title = "stepwise", description = "Plan & Execute agent runtime: submit tasks, follow and steer their runs."),
    paths(
        routes::submit, routes::list, routes::get_run, routes::events, routes::approve, routes::reject,
        routes::cancel, routes::healthz, routes::readyz, routes::tools, routes::metrics, routes::openapi,
        approvals::list_approvals, approvals::resolve_approval,
    ),
    components(schemas(
        approvals::ApprovalList, approvals::ApprovalView, approvals::ApprovalAnswer,
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
    let mut settings = schemars::generate::SchemaSettings::draft2020_12();
    settings.definitions_path = "/components/schemas".into();
    let mut generator = settings.into_generator();
    generator.subschema_for::<crate::run::RunResult>();
    generator.subschema_for::<crate::run::RunEvent>();
    generator.subschema_for::<crate::store::RunSummary>();
    generator.subschema_for::<crate::plan::PlanSpec>();
    generator.subschema_for::<crate::options::RunOptions>();
    let mut schemas = generator.take_definitions(true);
    let r = |name: &str| json!({"$ref": format!("#/components/schemas/{name}")});
    schemas.insert(
        "Error".into(),
        json!({"type": "object", "required": ["error"], "properties": {"error": {
            "type": "object", "required": ["code", "message"], "properties": {
                "code": {"type": "string", "description": "not_found, invalid_json, bad_request, unprocessable, unauthorized, payload_too_large, unsupported_media_type, too_many_runs, conflict, method_not_allowed, unavailable, internal"},
                "message": {"type": "string", "description": "What is wrong and where"}}}}}),
    );
    schemas.insert(
        "SubmitRequest".into(),
        json!({"type": "object", "required": ["task"], "additionalProperties": false, "properties": {
            "task": {"type": "string", "minLength": 1},
            "require_approval": {"type": "boolean", "description": "Overrides policy.require_approval"},
            "policy": {"type": "object", "description": "Keys of RunOptions.policy, merged onto the defaults"},
            "step_budget": {"type": "object", "description": "Keys of RunOptions.step_budget, merged onto the defaults"},
            "run_budget": {"type": "object", "description": "Keys of RunOptions.run_budget, merged onto the defaults"}}}),
    );
    schemas.insert(
        "RunAccepted".into(),
        json!({"type": "object", "required": ["id", "status"], "properties": {
            "id": {"type": "string"}, "status": {"type": "string"}}}),
    );
    schemas.insert(
        "RunList".into(),
        json!({"type": "object", "required": ["runs", "next_before"], "properties": {
            "runs": {"type": "array", "items": r("RunSummary")},
            "next_before": {"type": ["string", "null"], "description": "Pass as `before` for the next page; null on the last"}}}),
    );
    schemas.insert(
        "ApproveRequest".into(),
        json!({"type": "object", "additionalProperties": false, "properties": {"plan": r("PlanSpec")}}),
    );
    schemas.insert(
        "ReasonRequest".into(),
        json!({"type": "object", "additionalProperties": false, "properties": {"reason": {"type": "string"}}}),
    );
    if let Some(components) = doc.get_mut("components").and_then(Value::as_object_mut) {
        let slot = components.entry("schemas").or_insert_with(|| json!({}));
        if let Some(slot) = slot.as_object_mut() {
            slot.extend(schemas);
        }
    }

    let bodies: &[(&str, &str, &str)] = &[
        ("/v1/runs", "post", "SubmitRequest"),
        ("/v1/runs/{id}/approve", "post", "ApproveRequest"),
        ("/v1/runs/{id}/reject", "post", "ReasonRequest"),
        ("/v1/runs/{id}/cancel", "post", "ReasonRequest"),
    ];
    for (path, method, name) in bodies {
        let Some(body) = doc.pointer_mut(&format!("/paths/{}/{method}/requestBody", escape(path))) else {
            continue;
        };
        if let Some(content) = body.get_mut("content") {
            set_json_schema(content, r(name));
        }
        // Only the submission needs a body; approve / reject / cancel take an empty one.
        body["required"] = Value::Bool(*path == "/v1/runs");
    }
    let responses: &[(&str, &str, &str, &str)] = &[
        ("/v1/runs", "post", "202", "RunAccepted"),
        ("/v1/runs", "get", "200", "RunList"),
        ("/v1/runs/{id}", "get", "200", "RunResult"),
        ("/v1/runs/{id}/approve", "post", "200", "RunAccepted"),
        ("/v1/runs/{id}/reject", "post", "200", "RunAccepted"),
        ("/v1/runs/{id}/cancel", "post", "200", "RunAccepted"),
    ];
    for (path, method, status, name) in responses {
        let at = format!("/paths/{}/{method}/responses/{status}/content", escape(path));
        if let Some(content) = doc.pointer_mut(&at) {
            set_json_schema(content, r(name));
        }
    }
    // Every error response carries the one error shape.
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        for op in paths.values_mut().filter_map(Value::as_object_mut).flat_map(|p| p.values_mut()) {
            let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) else { continue };
            for (status, resp) in responses.iter_mut() {
                if status.starts_with('4') || status.starts_with('5') {
                    if let Some(content) = resp.get_mut("content") {
                        set_json_schema(content, r("Error"));
                    }
                }
            }
        }
    }
    doc
}

/// JSON pointer escaping of one segment (`/` → `~1`, `~` → `~0`).
fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

fn set_json_schema(content: &mut Value, schema: Value) {
    if let Some(media) = content.get_mut("application/json").and_then(Value::as_object_mut) {
        media.insert("schema".into(), schema);
    }
}
