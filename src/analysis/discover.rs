//! Finding the apps in a tree someone else made: a layout such as `{model}/{template}`
//! says which folder levels name the model and the template, and every folder at the
//! layout's depth is an app. What is not taken (a link, a file where a folder belongs, a
//! hidden or tool folder) is listed with the reason, never dropped in silence.
//!
//! Reads folder listings only; nothing of an app is opened but its `assay-app.toml`.

use crate::analysis::apps;
use std::path::{Path, PathBuf};

/// The most apps one discovery returns (a study has hundreds; a typo in a layout can
/// match a whole disk).
pub const MAX_APPS: usize = 100_000;
/// The most entries one folder may list before discovery stops.
pub const MAX_ENTRIES: usize = 200_000;

#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Literal(String),
    Model,
    Template,
    /// A name that identifies the app but is neither (`{app}`), or anything (`*`).
    Name,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    segments: Vec<Segment>,
    text: String,
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    #[error("layout `{layout}`: {message} (e.g. `{{model}}/{{template}}` or `models/{{model}}/apps/{{app}}`)")]
    Layout { layout: String, message: String },
    #[error("{path}: {message}")]
    Folder { path: PathBuf, message: String },
    #[error(
        "{root}: more than {limit} {what} (a layout deeper than the tree, or the wrong folder?)"
    )]
    TooMany {
        root: PathBuf,
        limit: usize,
        what: &'static str,
    },
}

impl Layout {
    pub fn parse(text: &str) -> Result<Layout, DiscoverError> {
        let err = |message: String| DiscoverError::Layout {
            layout: text.to_string(),
            message,
        };
        let mut segments = Vec::new();
        for part in text.trim_matches('/').split('/') {
            let segment = match part {
                "" => return Err(err("an empty level (`//`)".into())),
                "{model}" => Segment::Model,
                "{template}" => Segment::Template,
                "{app}" | "*" => Segment::Name,
                "." | ".." => return Err(err(format!("`{part}` is not a level"))),
                p if p.contains('{') || p.contains('}') || p.contains('*') => {
                    return Err(err(format!(
                        "`{p}`: a level is a whole `{{model}}`, `{{template}}`, `{{app}}`, `*` or a folder name"
                    )))
                }
                p => Segment::Literal(p.to_string()),
            };
            if segment != Segment::Name
                && !matches!(segment, Segment::Literal(_))
                && segments.contains(&segment)
            {
                return Err(err(format!("`{part}` appears twice")));
            }
            segments.push(segment);
        }
        if !segments.iter().any(|s| !matches!(s, Segment::Literal(_))) {
            return Err(err(
                "no level varies; name at least one `{model}`, `{template}`, `{app}` or `*`".into(),
            ));
        }
        Ok(Layout {
            segments,
            text: text.to_string(),
        })
    }

    pub fn names_model(&self) -> bool {
        self.segments.contains(&Segment::Model)
    }

    pub fn names_template(&self) -> bool {
        self.segments.contains(&Segment::Template)
    }
}

impl std::fmt::Display for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// One app found.
#[derive(Debug, Clone, PartialEq)]
pub struct Discovered {
    /// Relative to the root discovery started from.
    pub path: PathBuf,
    pub model: Option<String>,
    pub template: Option<String>,
    /// Where the names came from, when the app's own `assay-app.toml` overrode the path.
    pub named_by: Vec<String>,
}

#[derive(Debug, Default)]
pub struct Discovery {
    pub apps: Vec<Discovered>,
    /// What matched a level but was not taken, and why.
    pub passed_over: Vec<(PathBuf, String)>,
}

/// Folders that hold tools' or environments' files, never an app of a layout's level.
const NEVER_APPS: &[&str] = &[
    "node_modules",
    "__pycache__",
    "venv",
    ".venv",
    "site-packages",
];

/// Every app under `root` that `layout` describes, in path order.
pub fn discover(root: &Path, layout: &Layout) -> Result<Discovery, DiscoverError> {
    let meta = std::fs::metadata(root).map_err(|e| DiscoverError::Folder {
        path: root.to_path_buf(),
        message: format!("cannot read it: {e}"),
    })?;
    if !meta.is_dir() {
        return Err(DiscoverError::Folder {
            path: root.to_path_buf(),
            message: "not a folder".into(),
        });
    }
    let mut out = Discovery::default();
    // (relative path, model, template) at the current level.
    let mut level: Vec<(PathBuf, Option<String>, Option<String>)> =
        vec![(PathBuf::new(), None, None)];
    for segment in &layout.segments {
        let mut next = Vec::new();
        for (rel, model, template) in level {
            let here = root.join(&rel);
            if let Segment::Literal(name) = segment {
                let candidate = rel.join(name);
                match std::fs::symlink_metadata(root.join(&candidate)) {
                    Ok(m) if m.is_dir() => next.push((candidate, model, template)),
                    Ok(_) => out
                        .passed_over
                        .push((candidate, "not a folder (links are not followed)".into())),
                    Err(_) => {}
                }
                continue;
            }
            let entries = std::fs::read_dir(&here).map_err(|e| DiscoverError::Folder {
                path: here.clone(),
                message: format!("cannot list it: {e}"),
            })?;
            let mut names = Vec::new();
            for entry in entries {
                let entry = entry.map_err(|e| DiscoverError::Folder {
                    path: here.clone(),
                    message: format!("cannot list it: {e}"),
                })?;
                names.push(entry);
                if names.len() > MAX_ENTRIES {
                    return Err(DiscoverError::TooMany {
                        root: here,
                        limit: MAX_ENTRIES,
                        what: "entries in one folder",
                    });
                }
            }
            names.sort_by_key(|e| e.file_name());
            for entry in names {
                let name = entry.file_name().to_string_lossy().into_owned();
                let candidate = rel.join(&name);
                if name.starts_with('.') || NEVER_APPS.contains(&name.as_str()) {
                    continue;
                }
                let Ok(kind) = entry.file_type() else {
                    continue;
                };
                if kind.is_symlink() {
                    out.passed_over
                        .push((candidate, "a link (links are not followed)".into()));
                    continue;
                }
                if !kind.is_dir() {
                    // Files beside the apps (a README, a results CSV) are expected.
                    continue;
                }
                let (mut model, mut template) = (model.clone(), template.clone());
                match segment {
                    Segment::Model => model = Some(name),
                    Segment::Template => template = Some(name),
                    _ => {}
                }
                next.push((candidate, model, template));
                if next.len() > MAX_APPS {
                    return Err(DiscoverError::TooMany {
                        root: root.to_path_buf(),
                        limit: MAX_APPS,
                        what: "folders at one level",
                    });
                }
            }
        }
        level = next;
    }
    for (path, model, template) in level {
        let mut found = Discovered {
            path,
            model,
            template,
            named_by: Vec::new(),
        };
        // The app's own manifest is more exact than a folder name.
        match apps::load_manifest(&root.join(&found.path)) {
            Ok(manifest) => {
                if let Some(m) = manifest.model.filter(|m| !m.is_empty()) {
                    if found.model.as_deref() != Some(&m) {
                        found
                            .named_by
                            .push(format!("model `{m}` from {}", apps::MANIFEST));
                        found.model = Some(m);
                    }
                }
                if let Some(t) = manifest.template.filter(|t| !t.is_empty()) {
                    if found.template.as_deref() != Some(&t) {
                        found
                            .named_by
                            .push(format!("template `{t}` from {}", apps::MANIFEST));
                        found.template = Some(t);
                    }
                }
            }
            // Its analyses will say so; the app is still one of the study's.
            Err(e) => found
                .named_by
                .push(format!("its {} is unusable: {e}", apps::MANIFEST)),
        }
        out.apps.push(found);
    }
    Ok(out)
}

/// The analyzers `assay analyze` runs, in order, with their stage settings.
pub const ANALYZERS: &[&str] = &["static", "dynamic", "performance", "ai"];

/// A spec that runs `analyzers` over every app found: one stage per analyzer, one job per
/// app, items `{app, model, template}` (the names the layout or the manifest gave), so the
/// grid, results and comparison see models and templates as they do for generated apps.
/// `root` is the folder as the user named it: jobs name apps under it.
/// Apps generated in the same run as the tree is analyzed: each model × template.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// A name from the providers file; `None` is the default provider.
    pub provider: Option<String>,
    pub models: Vec<String>,
    pub templates: Vec<String>,
}

/// The spec `assay analyze` runs: a stage per analyzer over the discovered apps; the app
/// analyzers look templates up in `templates` (a catalog folder) besides the built-in
/// ones when it is given. With `generation`, a `generate` stage makes apps too, and each
/// analyzer has a second stage (`NAME-generated`) that takes each app as it is made.
pub fn analysis_spec(
    root: &Path,
    layout: &Layout,
    found: &Discovery,
    analyzers: &[String],
    templates: Option<&Path>,
    generation: Option<&Generation>,
) -> Result<String, String> {
    use toml::{Table, Value};
    if found.apps.is_empty() {
        return Err(format!(
            "no app folder matches `{layout}` under {} ({} passed over)",
            root.display(),
            found.passed_over.len()
        ));
    }
    let items: Vec<Value> = found
        .apps
        .iter()
        .map(|a| {
            let mut item = Table::new();
            item.insert(
                "app".into(),
                Value::String(root.join(&a.path).display().to_string()),
            );
            if let Some(m) = &a.model {
                item.insert("model".into(), Value::String(m.clone()));
            }
            if let Some(t) = &a.template {
                item.insert("template".into(), Value::String(t.clone()));
            }
            Value::Table(item)
        })
        .collect();
    let mut stages = Vec::new();
    let mut generated_stages = Vec::new();
    for analyzer in analyzers {
        let (timeout, attempts) = match analyzer.as_str() {
            "static" => ("10m", 2),
            "dynamic" => ("5m", 3),
            "performance" => ("5m", 3),
            "ai" => ("10m", 3),
            other => {
                return Err(format!(
                    "`{other}` is not an analyzer; choose from {}",
                    ANALYZERS.join(", ")
                ))
            }
        };
        let mut stage = Table::new();
        stage.insert("name".into(), Value::String(analyzer.clone()));
        stage.insert("kind".into(), Value::String(analyzer.clone()));
        stage.insert("items".into(), Value::Array(items.clone()));
        stage.insert("timeout".into(), Value::String(timeout.into()));
        stage.insert("max_attempts".into(), Value::Integer(attempts));
        stage.insert("backoff".into(), Value::String("2s".into()));
        if analyzer == "performance" {
            // One load test at a time: they would skew each other.
            stage.insert("concurrency".into(), Value::Integer(1));
        }
        let mut params = Table::new();
        params.insert("app".into(), Value::String("{{ app }}".into()));
        if analyzer != "static" {
            params.insert(
                "template".into(),
                Value::String("{{ template | default('') }}".into()),
            );
            if let Some(dir) = templates {
                params.insert("templates".into(), Value::String(dir.display().to_string()));
            }
        }
        if analyzer == "performance" {
            params.insert("users".into(), Value::Integer(4));
            params.insert("duration".into(), Value::String("3s".into()));
            params.insert("warmup".into(), Value::String("500ms".into()));
        }
        stage.insert("params".into(), Value::Table(params.clone()));
        if let Some(generation) = generation {
            let mut generated = stage.clone();
            generated.remove("items");
            generated.insert(
                "name".into(),
                Value::String(format!("{analyzer}-generated")),
            );
            generated.insert(
                "after".into(),
                Value::Array(vec![Value::String("generate".into())]),
            );
            generated.insert("matrix".into(), Value::Table(matrix_of(generation)));
            params.remove("app");
            params.insert("app_from".into(), Value::String("generate".into()));
            if params.contains_key("template") {
                params.insert("template".into(), Value::String("{{ template }}".into()));
            }
            generated.insert("params".into(), Value::Table(params));
            generated_stages.push(Value::Table(generated));
        }
        stages.push(Value::Table(stage));
    }
    if let Some(generation) = generation {
        let mut stage = Table::new();
        stage.insert("name".into(), Value::String("generate".into()));
        stage.insert("kind".into(), Value::String("generate".into()));
        stage.insert("matrix".into(), Value::Table(matrix_of(generation)));
        stage.insert("timeout".into(), Value::String("15m".into()));
        stage.insert("max_attempts".into(), Value::Integer(3));
        stage.insert("backoff".into(), Value::String("10s".into()));
        let mut params = Table::new();
        params.insert("model".into(), Value::String("{{ model }}".into()));
        params.insert("template".into(), Value::String("{{ template }}".into()));
        params.insert("temperature".into(), Value::Float(0.2));
        params.insert("seed".into(), Value::Integer(42));
        if let Some(dir) = templates {
            params.insert(
                "templates_dir".into(),
                Value::String(dir.display().to_string()),
            );
        }
        if let Some(name) = &generation.provider {
            params.insert("provider".into(), Value::String(name.clone()));
        }
        stage.insert("params".into(), Value::Table(params));
        // First: model calls are the slowest part, and each app is analyzed as it comes.
        stages.insert(0, Value::Table(stage));
        stages.extend(generated_stages);
    }
    let mut pipeline = Table::new();
    pipeline.insert(
        "name".into(),
        Value::String(format!("analyze {} ({layout})", root.display())),
    );
    let mut spec = Table::new();
    spec.insert("pipeline".into(), Value::Table(pipeline));
    spec.insert("stage".into(), Value::Array(stages));
    let header = format!(
        "# Made by `assay analyze {} --layout '{layout}'`: {} apps.\n",
        root.display(),
        found.apps.len()
    );
    Ok(header + &toml::to_string(&spec).map_err(|e| e.to_string())?)
}

fn matrix_of(generation: &Generation) -> toml::Table {
    let list = |xs: &[String]| {
        toml::Value::Array(xs.iter().map(|x| toml::Value::String(x.clone())).collect())
    };
    let mut matrix = toml::Table::new();
    matrix.insert("model".into(), list(&generation.models));
    matrix.insert("template".into(), list(&generation.templates));
    matrix
}

/// A spec's `apps = { dir = "…", layout = "…" }` sources replaced by the `items` they
/// discover (`dir` relative to the spec's folder), so that a stage can analyze a tree of
/// apps as `assay analyze` does. A spec without one comes back unchanged.
pub fn expand_app_sources(text: &str, spec_dir: &Path) -> Result<Option<String>, String> {
    let mut doc: toml::Table = match toml::from_str(text) {
        Ok(d) => d,
        // The spec's own parser says what is wrong, with the line.
        Err(_) => return Ok(None),
    };
    let Some(stages) = doc.get_mut("stage").and_then(|s| s.as_array_mut()) else {
        return Ok(None);
    };
    let mut changed = false;
    for stage in stages.iter_mut().filter_map(|s| s.as_table_mut()) {
        let Some(source) = stage.remove("apps") else {
            continue;
        };
        let name = stage
            .get("name")
            .and_then(|n| n.as_str())
            .unwrap_or("?")
            .to_string();
        let field = |key: &str| {
            source
                .get(key)
                .and_then(|v| v.as_str())
                .map(str::to_string)
                .ok_or_else(|| {
                    format!(
                        "stage `{name}`: `apps` needs `{key}` (e.g. apps = {{ dir = \"corpus\", layout = \"{{model}}/{{template}}\" }})"
                    )
                })
        };
        let dir = field("dir")?;
        let layout =
            Layout::parse(&field("layout")?).map_err(|e| format!("stage `{name}`: {e}"))?;
        let root = spec_dir.join(&dir);
        let found = discover(&root, &layout).map_err(|e| format!("stage `{name}`: {e}"))?;
        if found.apps.is_empty() {
            return Err(format!(
                "stage `{name}`: no app folder matches `{layout}` under {}",
                root.display()
            ));
        }
        let items = found
            .apps
            .iter()
            .map(|a| {
                let mut item = toml::Table::new();
                item.insert(
                    "app".into(),
                    root.join(&a.path).display().to_string().into(),
                );
                if let Some(m) = &a.model {
                    item.insert("model".into(), m.clone().into());
                }
                if let Some(t) = &a.template {
                    item.insert("template".into(), t.clone().into());
                }
                toml::Value::Table(item)
            })
            .collect();
        stage.insert("items".into(), toml::Value::Array(items));
        changed = true;
    }
    if !changed {
        return Ok(None);
    }
    toml::to_string(&doc).map(Some).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_are_checked_and_explained() {
        assert!(Layout::parse("{model}/{template}").is_ok());
        assert!(Layout::parse("models/{model}/apps/*").is_ok());
        for bad in [
            "models/apps",
            "{model}/{model}",
            "{model}-x/{template}",
            "a//b",
            "../{model}",
        ] {
            let e = Layout::parse(bad).unwrap_err().to_string();
            assert!(e.contains(bad) && e.contains("e.g."), "{e}");
        }
    }

    #[test]
    fn every_folder_at_the_layouts_depth_is_an_app_and_links_are_passed_over() {
        let root = tempfile::tempdir().unwrap();
        let mk = |p: &str| std::fs::create_dir_all(root.path().join(p)).unwrap();
        mk("models/gpt-4o/todo-api/backend");
        mk("models/gpt-4o/notes-auth");
        mk("models/llama/todo-api");
        mk("models/llama/node_modules/x");
        mk("models/.git/objects");
        std::fs::write(root.path().join("models/llama/README.md"), "x").unwrap();
        std::os::unix::fs::symlink("/etc", root.path().join("models/llama/escape")).unwrap();
        std::fs::write(
            root.path().join("models/llama/todo-api/assay-app.toml"),
            "model = \"meta/llama-3.1\"\n",
        )
        .unwrap();
        let layout = Layout::parse("models/{model}/{template}").unwrap();
        let found = discover(root.path(), &layout).unwrap();
        let names: Vec<(String, Option<String>, Option<String>)> = found
            .apps
            .iter()
            .map(|a| {
                (
                    a.path.display().to_string(),
                    a.model.clone(),
                    a.template.clone(),
                )
            })
            .collect();
        assert_eq!(
            names,
            [
                (
                    "models/gpt-4o/notes-auth".into(),
                    Some("gpt-4o".into()),
                    Some("notes-auth".into())
                ),
                (
                    "models/gpt-4o/todo-api".into(),
                    Some("gpt-4o".into()),
                    Some("todo-api".into())
                ),
                (
                    "models/llama/todo-api".into(),
                    Some("meta/llama-3.1".into()),
                    Some("todo-api".into())
                ),
            ]
        );
        assert!(found.apps[2].named_by[0].contains("assay-app.toml"));
        assert_eq!(found.passed_over.len(), 1, "{:?}", found.passed_over);
        assert!(found.passed_over[0].1.contains("link"));
    }

    #[test]
    fn an_apps_source_in_a_spec_becomes_its_items() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("corpus/gpt/todo-api")).unwrap();
        std::fs::create_dir_all(root.path().join("corpus/llama/todo-api")).unwrap();
        let spec = "[pipeline]\nname = \"x\"\n[[stage]]\nname = \"static\"\nkind = \"static\"\napps = { dir = \"corpus\", layout = \"{model}/{template}\" }\n[stage.params]\napp = \"{{ app }}\"\n";
        // Unexpanded, the spec's parser refuses it and says where it is expanded.
        let e = crate::spec::parse("s.toml", spec).unwrap_err().to_string();
        assert!(e.contains("assay submit"), "{e}");
        let text = expand_app_sources(spec, root.path()).unwrap().unwrap();
        let parsed = crate::spec::parse("s.toml", &text).unwrap();
        let items = &parsed.stages[0].items;
        assert_eq!(items.len(), 2);
        assert_eq!(items[0]["model"], "gpt");
        assert_eq!(items[1]["template"], "todo-api");
        assert!(
            expand_app_sources("[pipeline]\nname = \"x\"\n", root.path())
                .unwrap()
                .is_none()
        );
        let bad = spec.replace("layout =", "lay =");
        assert!(expand_app_sources(&bad, root.path())
            .unwrap_err()
            .contains("needs `layout`"));
    }

    #[test]
    fn a_missing_root_is_said() {
        let e = discover(
            Path::new("/no/such/tree"),
            &Layout::parse("{model}").unwrap(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("/no/such/tree"), "{e}");
    }
}
