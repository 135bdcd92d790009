//! `assay templates import`: a catalog template made from an OpenAPI 3 or Swagger 2
//! document (YAML or JSON), so that apps written to an API someone specified are probed
//! and held to it like apps of a built-in template. Pure: the caller reads the file.
//!
//! What is taken: `info` (title, description); every operation as an endpoint (method,
//! path with `<param>` parameters, whether it needs auth, its summary, typed query
//! parameters and JSON body fields, optional ones marked `?`, the first 2xx response with
//! its body's fields or schema name); `components.schemas` / `definitions` as the data
//! model; one backend requirement per operation for the judge.

use super::catalog::{self, Endpoint, Requirements, Response, Template};
use super::routes::{self, resolve_ref};
use serde_json::Value;
use std::collections::BTreeMap;

/// Documents larger than this are refused (an API description is kilobytes).
pub const MAX_DOCUMENT_BYTES: usize = 4 << 20;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ImportError {
    #[error("the document is {0} bytes; the limit is {MAX_DOCUMENT_BYTES} bytes")]
    TooLarge(usize),
    #[error("not YAML or JSON: {0}")]
    Unreadable(String),
    #[error("no `paths` with operations: is this an OpenAPI 3 or Swagger 2 document?")]
    NoOperations,
    #[error("the template made from it is not valid: {}", .0.join("; "))]
    Invalid(Vec<String>),
}

/// Parse YAML or JSON (JSON is YAML) into a value.
pub fn parse_document(text: &str) -> Result<Value, ImportError> {
    if text.len() > MAX_DOCUMENT_BYTES {
        return Err(ImportError::TooLarge(text.len()));
    }
    serde_yaml_ng::from_str::<Value>(text).map_err(|e| ImportError::Unreadable(e.to_string()))
}

/// A template name from a file name: ASCII letters, digits, `-` and `_`.
pub fn name_from(stem: &str) -> String {
    let name: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let name = name.trim_matches('-').to_string();
    if name.is_empty() {
        "imported".into()
    } else {
        name
    }
}

fn type_of(doc: &Value, schema: &Value) -> String {
    if let Some(name) = schema
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.rsplit('/').next())
    {
        return name.to_string();
    }
    // FastAPI writes `Optional[int]` as `anyOf: [{type: integer}, {type: null}]`.
    for key in ["anyOf", "oneOf", "allOf"] {
        if let Some(first) = schema.get(key).and_then(Value::as_array).and_then(|alts| {
            alts.iter()
                .find(|a| a.get("type").and_then(Value::as_str) != Some("null"))
        }) {
            return type_of(doc, first);
        }
    }
    let schema = resolve_ref(doc, schema);
    match schema.get("type") {
        Some(Value::String(t)) => t.clone(),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("string")
            .to_string(),
        _ => "string".into(),
    }
}

/// Property → type of an object schema, optional ones marked `?`.
fn fields(doc: &Value, schema: &Value, mark_optional: bool) -> Option<toml::Table> {
    let schema = resolve_ref(doc, schema);
    let schema = match schema.get("allOf").and_then(Value::as_array) {
        Some(parts) if parts.len() == 1 => resolve_ref(doc, &parts[0]),
        _ => schema,
    };
    let props = schema.get("properties")?.as_object()?;
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    Some(
        props
            .iter()
            .map(|(name, s)| {
                let mut t = type_of(doc, s);
                if mark_optional && !required.contains(&name.as_str()) {
                    t.push('?');
                }
                (name.clone(), toml::Value::String(t))
            })
            .collect(),
    )
}

fn json_schema<'a>(doc: &'a Value, holder: &'a Value) -> Option<&'a Value> {
    let holder = resolve_ref(doc, holder);
    // OpenAPI 3: content.<media>.schema; Swagger 2: schema.
    holder
        .get("content")
        .and_then(Value::as_object)
        .and_then(|c| {
            c.iter()
                .find(|(media, _)| media.contains("json"))
                .or_else(|| c.iter().next())
                .and_then(|(_, m)| m.get("schema"))
        })
        .or_else(|| holder.get("schema"))
}

fn response_of(doc: &Value, operation: &Value) -> Response {
    let mut codes: Vec<(u16, &Value)> = operation
        .get("responses")
        .and_then(Value::as_object)
        .map(|r| {
            r.iter()
                .filter_map(|(code, v)| Some((code.parse::<u16>().ok()?, v)))
                .filter(|(code, _)| (200..300).contains(code))
                .collect()
        })
        .unwrap_or_default();
    codes.sort_by_key(|(c, _)| *c);
    let Some((status, resp)) = codes.first().copied() else {
        return Response {
            status: 200,
            body: toml::Value::String("any".into()),
        };
    };
    let body = match json_schema(doc, resp) {
        Some(schema) => {
            let named = |s: &Value| {
                s.get("$ref")
                    .and_then(Value::as_str)
                    .and_then(|r| r.rsplit('/').next())
                    .map(str::to_string)
            };
            if let Some(name) = named(schema) {
                toml::Value::String(name)
            } else if let Some(name) = schema.get("items").and_then(named) {
                toml::Value::String(format!("{name}[]"))
            } else if let Some(table) = fields(doc, schema, false) {
                toml::Value::Table(table)
            } else {
                toml::Value::String("any".into())
            }
        }
        None => toml::Value::String("any".into()),
    };
    Response { status, body }
}

fn template_path(path: &str) -> String {
    path.split('/')
        .map(
            |seg| match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(name) => format!("<{name}>"),
                None => seg.to_string(),
            },
        )
        .collect::<Vec<_>>()
        .join("/")
}

/// The template an OpenAPI document describes, named `name`.
pub fn template_from_openapi(doc: &Value, name: &str) -> Result<Template, ImportError> {
    let routes = routes::from_openapi(doc);
    if routes.is_empty() {
        return Err(ImportError::NoOperations);
    }
    let base = routes::openapi_base_path(doc);
    let mut operations: BTreeMap<(String, String), &Value> = BTreeMap::new();
    if let Some(paths) = doc.get("paths").and_then(Value::as_object) {
        for (raw, item) in paths {
            let item = resolve_ref(doc, item);
            for method in ["get", "post", "put", "patch", "delete", "head", "options"] {
                if let Some(op) = item.get(method).filter(|o| o.is_object()) {
                    let path = format!("{}{}", base.trim_end_matches('/'), raw);
                    operations.insert((method.to_ascii_uppercase(), path), op);
                }
            }
        }
    }
    let mut endpoints = Vec::new();
    let mut backend = Vec::new();
    for r in &routes {
        let op = operations
            .get(&(r.method.clone(), r.path.clone()))
            .copied()
            .unwrap_or(&Value::Null);
        let summary = ["summary", "description", "operationId"]
            .iter()
            .find_map(|k| op.get(*k).and_then(Value::as_str))
            .map(|s| s.lines().next().unwrap_or("").trim().to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| format!("{} {}", r.method, r.path));
        let query: toml::Table = op
            .get("parameters")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|p| resolve_ref(doc, p))
            .filter(|p| p.get("in").and_then(Value::as_str) == Some("query"))
            .filter_map(|p| {
                let name = p.get("name")?.as_str()?.to_string();
                let mut t = type_of(doc, p.get("schema").unwrap_or(p));
                if p.get("required") != Some(&Value::Bool(true)) {
                    t.push('?');
                }
                Some((name, toml::Value::String(t)))
            })
            .collect();
        let request = op
            .get("requestBody")
            .and_then(|b| json_schema(doc, b))
            .or_else(|| {
                // Swagger 2: a `body` parameter.
                op.get("parameters")
                    .and_then(Value::as_array)?
                    .iter()
                    .map(|p| resolve_ref(doc, p))
                    .find(|p| p.get("in").and_then(Value::as_str) == Some("body"))?
                    .get("schema")
            })
            .and_then(|s| fields(doc, s, true))
            .or_else(|| {
                (!r.body_fields.is_empty()).then(|| {
                    r.body_fields
                        .iter()
                        .map(|f| (f.clone(), toml::Value::String("string".into())))
                        .collect()
                })
            });
        backend.push(format!(
            "{} {}: {summary}",
            r.method,
            template_path(&r.path)
        ));
        endpoints.push(Endpoint {
            method: r.method.clone(),
            path: template_path(&r.path),
            auth: r.auth_hint,
            description: summary,
            query: (!query.is_empty()).then_some(query),
            request: request.filter(|t| !t.is_empty()),
            response: response_of(doc, op),
            found_in_code: false,
        });
    }
    let schemas = doc
        .pointer("/components/schemas")
        .or_else(|| doc.get("definitions"))
        .and_then(Value::as_object);
    let data_model = schemas
        .into_iter()
        .flatten()
        .filter_map(|(name, s)| {
            let table = fields(doc, s, false)?;
            Some((
                name.clone(),
                table
                    .into_iter()
                    .map(|(k, v)| (k, v.as_str().unwrap_or("string").to_string()))
                    .collect(),
            ))
        })
        .collect();
    let info = doc.get("info");
    let text = |k: &str| info.and_then(|i| i.get(k)).and_then(Value::as_str);
    let template = Template {
        name: name.to_string(),
        title: text("title").unwrap_or(name).to_string(),
        description: text("description")
            .unwrap_or("Imported from an OpenAPI document.")
            .to_string(),
        requirements: Requirements {
            backend,
            ..Default::default()
        },
        endpoints,
        data_model,
        discovered: false,
    };
    let problems = template.problems();
    if !problems.is_empty() {
        return Err(ImportError::Invalid(problems));
    }
    Ok(template)
}

/// The template as a catalog file, checked to load back as the same template.
pub fn to_toml(template: &Template) -> Result<String, ImportError> {
    let text = toml::to_string(template).map_err(|e| ImportError::Invalid(vec![e.to_string()]))?;
    let back = catalog::parse(&text, std::path::Path::new("imported.toml"))
        .map_err(|e| ImportError::Invalid(vec![e.to_string()]))?;
    if &back != template {
        return Err(ImportError::Invalid(vec![
            "the written template does not read back the same".into(),
        ]));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What FastAPI serves at /openapi.json for a small notes API (trimmed, as written by
    /// FastAPI 0.115: `anyOf` with null for Optional, HTTPValidationError schemas).
    const FASTAPI: &str = r##"{"openapi":"3.1.0","info":{"title":"Notes API","version":"0.1.0"},
"paths":{"/notes":{"get":{"summary":"List Notes","operationId":"list_notes_notes_get",
"parameters":[{"name":"limit","in":"query","required":false,"schema":{"anyOf":[{"type":"integer"},{"type":"null"}],"title":"Limit"}}],
"responses":{"200":{"description":"Successful Response","content":{"application/json":{"schema":{"type":"array","items":{"$ref":"#/components/schemas/Note"},"title":"Response List Notes Notes Get"}}}}}},
"post":{"summary":"Create Note","operationId":"create_note_notes_post","requestBody":{"content":{"application/json":{"schema":{"$ref":"#/components/schemas/NoteIn"}}},"required":true},
"responses":{"201":{"description":"Successful Response","content":{"application/json":{"schema":{"$ref":"#/components/schemas/Note"}}}},"422":{"description":"Validation Error","content":{"application/json":{"schema":{"$ref":"#/components/schemas/HTTPValidationError"}}}}},
"security":[{"OAuth2PasswordBearer":[]}]}},
"/notes/{note_id}":{"delete":{"summary":"Delete Note","parameters":[{"name":"note_id","in":"path","required":true,"schema":{"type":"integer","title":"Note Id"}}],"responses":{"204":{"description":"Successful Response"}}}}},
"components":{"schemas":{"Note":{"properties":{"id":{"type":"integer","title":"Id"},"title":{"type":"string","title":"Title"},"body":{"anyOf":[{"type":"string"},{"type":"null"}],"title":"Body"}},"type":"object","required":["id","title"],"title":"Note"},
"NoteIn":{"properties":{"title":{"type":"string","title":"Title"},"body":{"anyOf":[{"type":"string"},{"type":"null"}],"title":"Body"}},"type":"object","required":["title"],"title":"NoteIn"},
"HTTPValidationError":{"properties":{"detail":{"items":{"$ref":"#/components/schemas/ValidationError"},"type":"array","title":"Detail"}},"type":"object","title":"HTTPValidationError"}},
"securitySchemes":{"OAuth2PasswordBearer":{"type":"oauth2","flows":{"password":{"scopes":{},"tokenUrl":"token"}}}}}}"##;

    #[test]
    fn a_fastapi_document_becomes_a_template_that_loads_back() {
        let doc = parse_document(FASTAPI).unwrap();
        let t = template_from_openapi(&doc, "notes-api").unwrap();
        assert_eq!(t.title, "Notes API");
        let get = t.endpoints.iter().find(|e| e.method == "GET").unwrap();
        assert_eq!(get.path, "/notes");
        assert_eq!(get.response.body, toml::Value::String("Note[]".into()));
        assert_eq!(
            get.query.as_ref().unwrap()["limit"].as_str(),
            Some("integer?")
        );
        let post = t.endpoints.iter().find(|e| e.method == "POST").unwrap();
        assert_eq!(post.response.status, 201);
        assert!(post.auth, "the operation's security names a scheme");
        let req = post.request.as_ref().unwrap();
        assert_eq!(req["title"].as_str(), Some("string"));
        assert_eq!(req["body"].as_str(), Some("string?"));
        let delete = t.endpoints.iter().find(|e| e.method == "DELETE").unwrap();
        assert_eq!(delete.path, "/notes/<note_id>");
        assert_eq!(delete.response.status, 204);
        assert_eq!(t.data_model["Note"]["id"], "integer");
        assert_eq!(t.requirements.backend.len(), 3);
        assert!(t
            .requirements
            .backend
            .iter()
            .any(|r| r == "POST /notes: Create Note"));
        let text = to_toml(&t).unwrap();
        assert!(text.contains("name = \"notes-api\""));
    }

    #[test]
    fn a_swagger_2_yaml_document_with_a_base_path_is_read() {
        let yaml = r##"
swagger: "2.0"
info: {title: Todo, description: "A todo list"}
basePath: /api
paths:
  /todos:
    post:
      parameters:
        - in: body
          name: todo
          schema: {$ref: "#/definitions/Todo"}
      responses: {"200": {description: ok, schema: {$ref: "#/definitions/Todo"}}}
definitions:
  Todo:
    type: object
    required: [title]
    properties: {title: {type: string}, done: {type: boolean}}
"##;
        let t = template_from_openapi(&parse_document(yaml).unwrap(), "todo").unwrap();
        let post = &t.endpoints[0];
        assert_eq!(post.path, "/api/todos");
        assert_eq!(
            post.request.as_ref().unwrap()["done"].as_str(),
            Some("boolean?")
        );
        assert_eq!(post.response.body, toml::Value::String("Todo".into()));
        to_toml(&t).unwrap();
    }

    #[test]
    fn what_is_not_an_api_description_is_refused_with_the_reason() {
        assert_eq!(
            template_from_openapi(&parse_document("a: [1, 2]").unwrap(), "x").unwrap_err(),
            ImportError::NoOperations
        );
        assert!(matches!(
            parse_document("{ not: [valid"),
            Err(ImportError::Unreadable(_))
        ));
        assert!(matches!(
            parse_document(&" ".repeat(MAX_DOCUMENT_BYTES + 1)),
            Err(ImportError::TooLarge(_))
        ));
        assert_eq!(name_from("My API v2 (final)"), "my-api-v2--final");
    }
}
