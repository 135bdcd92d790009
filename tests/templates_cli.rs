//! A template imported from an app's OpenAPI document is what `assay analyze --templates`
//! probes the app against: imported by the CLI, checked before anything runs (a broken
//! catalog is refused naming its file), and used by the dynamic analyzer for the app whose
//! path names it.

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_assay");

const OPENAPI: &str = r#"{
  "openapi": "3.0.3",
  "info": {"title": "Shop", "version": "1"},
  "paths": {
    "/api/items": {
      "get": {"responses": {"200": {"description": "all items"}}},
      "post": {
        "requestBody": {"content": {"application/json": {"schema": {
          "type": "object", "required": ["name"],
          "properties": {"name": {"type": "string"}, "price": {"type": "number"}}}}}},
        "responses": {"201": {"description": "created"}}
      }
    },
    "/api/items/{id}": {
      "get": {"parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}}],
              "responses": {"200": {"description": "one item"}, "404": {"description": "none"}}}
    }
  }
}"#;

/// Written as a model might, with no framework: the standard library's HTTP server.
const APP: &str = r#"import json, os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

items = []

class Handler(BaseHTTPRequestHandler):
    def send(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/api/items":
            return self.send(200, items)
        if self.path.startswith("/api/items/"):
            tail = self.path.rsplit("/", 1)[1]
            for item in items:
                if str(item["id"]) == tail:
                    return self.send(200, item)
        return self.send(404, {"error": "not found"})

    def do_POST(self):
        if self.path != "/api/items":
            return self.send(404, {"error": "not found"})
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            return self.send(400, {"error": "bad json"})
        item = {"id": len(items) + 1, "name": body.get("name"), "price": body.get("price")}
        items.append(item)
        return self.send(201, item)

ThreadingHTTPServer(("0.0.0.0", int(os.environ.get("PORT", "8000"))), Handler).serve_forever()
"#;

fn assay(cwd: &Path, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .current_dir(cwd)
        .env_remove("ASSAY_APP_PATH")
        // A developer's key would make the run generate apps too.
        .env_remove("OPENROUTER_API_KEY")
        .output()
        .unwrap()
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn an_imported_template_is_what_analyze_probes_the_app_against() {
    let root = tempfile::tempdir().unwrap();
    let work = root.path();
    std::fs::write(work.join("openapi.json"), OPENAPI).unwrap();
    let imported = assay(
        work,
        &[
            "templates",
            "import",
            "openapi.json",
            "--name",
            "shop",
            "--out",
            "catalog",
        ],
    );
    assert!(imported.status.success(), "{}", text(&imported));
    assert!(work.join("catalog/shop.toml").is_file());

    let app = work.join("apps/some-model/shop");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(app.join("app.py"), APP).unwrap();

    // The spec carries the catalog to every app analyzer.
    let printed = assay(
        work,
        &["analyze", "apps", "--templates", "catalog", "--print-spec"],
    );
    assert!(printed.status.success(), "{}", text(&printed));
    let spec: toml::Table = toml::from_str(&String::from_utf8_lossy(&printed.stdout)).unwrap();
    let catalog = std::path::absolute(work.join("catalog")).unwrap();
    for stage in spec["stage"].as_array().unwrap() {
        let templates = stage["params"].get("templates").and_then(|t| t.as_str());
        match stage["kind"].as_str().unwrap() {
            "static" => assert_eq!(templates, None),
            _ => assert_eq!(templates, Some(catalog.to_str().unwrap()), "{stage}"),
        }
    }

    // A broken catalog is refused before anything runs, naming the file.
    std::fs::create_dir_all(work.join("broken")).unwrap();
    std::fs::write(
        work.join("broken/shop.toml"),
        "name = \"shop\"\nendpoints = 3\n",
    )
    .unwrap();
    let refused = assay(
        work,
        &["analyze", "apps", "--templates", "broken", "--plain"],
    );
    assert_ne!(refused.status.code(), Some(0));
    assert!(text(&refused).contains("shop.toml"), "{}", text(&refused));
    assert!(!work.join(".assay").exists(), "nothing ran");

    let ran = assay(
        work,
        &[
            "analyze",
            "apps",
            "--templates",
            "catalog",
            "--analyzers",
            "dynamic",
            "--plain",
            "--no-cache",
            "--data-dir",
            "data",
        ],
    );
    assert_eq!(ran.status.code(), Some(0), "{}", text(&ran));
    let result = tokio::runtime::Runtime::new().unwrap().block_on(async {
        use assay::store::{sqlite::SqliteStore, JobFilter, Store};
        let store = SqliteStore::open(&work.join("data/server/assay.db"))
            .await
            .unwrap();
        let jobs = store.jobs(&JobFilter::default()).await.unwrap();
        assert_eq!(jobs.len(), 1);
        jobs[0].result.clone().unwrap()
    });
    assert_eq!(result["template"], "shop", "{result}");
    assert_eq!(result["app_outcome"], "started", "{result}");
    let functional = result["coverage"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["part"] == "functional checks")
        .unwrap();
    assert_eq!(
        functional["done"], true,
        "checked against the imported template: {result}"
    );
    // The walk created an item and fetched it by the id it was given.
    assert!(result["requests"].as_u64().unwrap() > 5, "{result}");
    // Its one departure from its document, found and said against which template: a
    // required field that is never checked.
    let functional: Vec<&str> = result["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["rule"] == "functional")
        .map(|f| f["message"].as_str().unwrap())
        .collect();
    assert_eq!(
        functional,
        ["an empty JSON body is accepted; required fields are not validated (template `shop`)"],
        "{result}"
    );
}
