//! The template catalog: what an app was asked to be. One TOML file per template
//! (`templates/*.toml`): name, title, description, requirements per area, the HTTP
//! endpoints with their request and response shapes, and the data model. Loading checks
//! the format and a few rules (unique names, known HTTP methods, absolute paths); every
//! error names the file and the problem (TOML errors carry line and column).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The HTTP methods an endpoint may use.
pub const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

include!(concat!(env!("OUT_DIR"), "/builtin_templates.rs"));

/// Where the built-in templates come from in the source tree (shown in messages).
pub fn builtin_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/templates"))
}

/// The catalog shipped with Assay, embedded in the binary at build time.
pub fn builtin() -> Catalog {
    let mut catalog = Catalog::default();
    for (name, text) in BUILTIN_TEMPLATES {
        let path = PathBuf::from(format!("(built in) templates/{name}"));
        let template = parse(text, &path).expect("built-in templates are checked by the tests");
        catalog
            .insert(template, path)
            .expect("built-in template names are unique");
    }
    catalog
}

/// The built-in catalog plus the templates in `dir`, if given (a name used twice is an
/// error naming both files).
pub fn with_user_dir(dir: Option<&Path>) -> Result<Catalog, CatalogError> {
    let mut catalog = builtin();
    if let Some(dir) = dir {
        let user = load_dir(dir)?;
        for t in user.iter() {
            let path = user
                .path_of(&t.name)
                .map(Path::to_path_buf)
                .unwrap_or_else(|| dir.to_path_buf());
            catalog.insert(t.clone(), path)?;
        }
    }
    Ok(catalog)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Template {
    pub name: String,
    pub title: String,
    pub description: String,
    pub requirements: Requirements,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// Entity name → field name → type (e.g. `"string"`, `"integer"`).
    #[serde(default)]
    pub data_model: BTreeMap<String, BTreeMap<String, String>>,
    /// Made from the routes found in an app's code, not a template the app was written
    /// for: probed, but held to no specification.
    #[serde(skip)]
    pub discovered: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requirements {
    #[serde(default)]
    pub backend: Vec<String>,
    #[serde(default)]
    pub frontend: Vec<String>,
    #[serde(default)]
    pub admin: Vec<String>,
}

/// One requirement with its stable id (`backend-1`, `frontend-2`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NumberedRequirement {
    pub id: String,
    /// `backend`, `frontend` or `admin`.
    pub area: String,
    pub text: String,
}

impl Requirements {
    /// Every requirement with its stable id: the area and the 1-based position in it.
    /// Ids stay the same as long as the template's lists are only appended to.
    pub fn numbered(&self) -> Vec<NumberedRequirement> {
        [
            ("backend", &self.backend),
            ("frontend", &self.frontend),
            ("admin", &self.admin),
        ]
        .into_iter()
        .flat_map(|(area, list)| {
            list.iter()
                .enumerate()
                .map(move |(i, text)| NumberedRequirement {
                    id: format!("{area}-{}", i + 1),
                    area: area.to_string(),
                    text: text.clone(),
                })
        })
        .collect()
    }

    pub fn len(&self) -> usize {
        self.backend.len() + self.frontend.len() + self.admin.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    pub method: String,
    /// Starts with `/`; path parameters are written `<id>`.
    pub path: String,
    #[serde(default)]
    pub auth: bool,
    pub description: String,
    /// Query parameter → type; a trailing `?` marks an optional one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<toml::Table>,
    /// JSON body field → type; a trailing `?` marks an optional one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<toml::Table>,
    pub response: Response,
    /// Found in the app's code rather than specified: probed, never held to `response`.
    #[serde(skip)]
    pub found_in_code: bool,
}

impl Endpoint {
    /// Method and path with parameter names dropped (`/a/<id>` and `/a/{todo_id}` agree).
    pub fn shape(&self) -> (String, String) {
        let path = self
            .path
            .split('/')
            .map(|seg| {
                if (seg.starts_with('<') && seg.ends_with('>'))
                    || (seg.starts_with('{') && seg.ends_with('}'))
                    || (seg.starts_with(':') && seg.len() > 1)
                {
                    "{}"
                } else {
                    seg
                }
            })
            .collect::<Vec<_>>()
            .join("/");
        (
            self.method.to_ascii_uppercase(),
            path.trim_end_matches('/').to_string(),
        )
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Response {
    pub status: u16,
    /// A table of field → type, or a data-model type name such as `"Note"` / `"Note[]"`.
    pub body: toml::Value,
}

impl Template {
    /// The rules serde cannot express. Returns every problem found.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.name.trim().is_empty() {
            out.push("`name` is empty".to_string());
        } else if !self
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            out.push(format!(
                "`name` {:?} may only contain ASCII letters, digits, `-` and `_`",
                self.name
            ));
        }
        for (i, e) in self.endpoints.iter().enumerate() {
            let at = format!("endpoints[{i}] ({} {})", e.method, e.path);
            if !METHODS.contains(&e.method.as_str()) {
                out.push(format!(
                    "{at}: method {:?} is not one of {}",
                    e.method,
                    METHODS.join("/")
                ));
            }
            if !e.path.starts_with('/') {
                out.push(format!("{at}: path {:?} must start with `/`", e.path));
            }
            if !(100..=599).contains(&e.response.status) {
                out.push(format!(
                    "{at}: response status {} is not an HTTP status",
                    e.response.status
                ));
            }
        }
        out
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("{}: {}", path.display(), problems.join("; "))]
    Invalid {
        path: PathBuf,
        problems: Vec<String>,
    },
    #[error(
        "template name {name:?} is defined twice: in {} and in {}",
        first.display(),
        second.display()
    )]
    Duplicate {
        name: String,
        first: PathBuf,
        second: PathBuf,
    },
    #[error("{}: no template files (*.toml) found", path.display())]
    Empty { path: PathBuf },
}

/// Read, parse and check one template file.
pub fn load_file(path: &Path) -> Result<Template, CatalogError> {
    let text = std::fs::read_to_string(path).map_err(|source| CatalogError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, path)
}

/// Parse and check a template; `path` is only used in errors.
pub fn parse(text: &str, path: &Path) -> Result<Template, CatalogError> {
    let template: Template = toml::from_str(text).map_err(|e| CatalogError::Parse {
        path: path.to_path_buf(),
        message: e.to_string().trim_end().to_string(),
    })?;
    let problems = template.problems();
    if !problems.is_empty() {
        return Err(CatalogError::Invalid {
            path: path.to_path_buf(),
            problems,
        });
    }
    Ok(template)
}

/// Templates by name, each with the file it came from.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    templates: BTreeMap<String, (Template, PathBuf)>,
}

impl Catalog {
    pub fn get(&self, name: &str) -> Option<&Template> {
        self.templates.get(name).map(|(t, _)| t)
    }

    /// The file a template was loaded from.
    pub fn path_of(&self, name: &str) -> Option<&Path> {
        self.templates.get(name).map(|(_, p)| p.as_path())
    }

    /// Template names in sorted order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.templates.keys().map(String::as_str)
    }

    /// Templates in name order.
    pub fn iter(&self) -> impl Iterator<Item = &Template> {
        self.templates.values().map(|(t, _)| t)
    }

    pub fn len(&self) -> usize {
        self.templates.len()
    }

    pub fn is_empty(&self) -> bool {
        self.templates.is_empty()
    }

    /// Add a template; refuses a second template of the same name.
    pub fn insert(&mut self, template: Template, path: PathBuf) -> Result<(), CatalogError> {
        if let Some((_, first)) = self.templates.get(&template.name) {
            return Err(CatalogError::Duplicate {
                name: template.name,
                first: first.clone(),
                second: path,
            });
        }
        self.templates
            .insert(template.name.clone(), (template, path));
        Ok(())
    }
}

/// Load every `*.toml` file directly inside `dir` (in file-name order). The first bad
/// file stops loading with an error naming it.
pub fn load_dir(dir: &Path) -> Result<Catalog, CatalogError> {
    let io = |source| CatalogError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.extension().is_some_and(|e| e == "toml") && path.is_file() {
            files.push(path);
        }
    }
    if files.is_empty() {
        return Err(CatalogError::Empty {
            path: dir.to_path_buf(),
        });
    }
    files.sort();
    let mut catalog = Catalog::default();
    for path in files {
        let template = load_file(&path)?;
        catalog.insert(template, path)?;
    }
    Ok(catalog)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_is_a_valid_template() {
        let doc = include_str!("../../docs/templates.md");
        let start = doc
            .find("```toml\n")
            .expect("docs/templates.md has a TOML example")
            + 8;
        let end = start + doc[start..].find("```").unwrap();
        let t = parse(&doc[start..end], Path::new("docs/templates.md")).unwrap();
        assert_eq!(t.name, "todo-api");
        assert_eq!(t.requirements.numbered()[1].id, "backend-2");
    }

    const MINIMAL: &str = r#"
name = "mini"
title = "Mini"
description = "A minimal template"
[requirements]
backend = ["GET /health answers 200"]
[[endpoints]]
method = "GET"
path = "/health"
description = "Liveness"
[endpoints.response]
status = 200
body = { status = "string" }
"#;

    #[test]
    fn the_embedded_catalog_matches_the_templates_folder() {
        let embedded = builtin();
        let on_disk = load_dir(&builtin_dir()).unwrap();
        assert_eq!(
            embedded.names().collect::<Vec<_>>(),
            on_disk.names().collect::<Vec<_>>()
        );
        assert!(
            embedded.len() >= 30,
            "the catalog has at least 30 templates"
        );
    }

    #[test]
    fn loads_the_builtin_templates() {
        let catalog = load_dir(&builtin_dir()).unwrap();
        assert!(catalog.len() >= 4, "the repo ships its templates");
        let names: Vec<_> = catalog.names().collect();
        for sample in [
            "notes-auth",
            "todo-api",
            "url-shortener",
            "weather-dashboard",
        ] {
            assert!(
                names.contains(&sample),
                "the sample apps' template {sample} is in the catalog"
            );
        }
        let notes = catalog.get("notes-auth").unwrap();
        assert_eq!(notes.requirements.backend.len(), 6);
        assert!(notes.requirements.frontend.is_empty());
        let login = notes
            .endpoints
            .iter()
            .find(|e| e.path == "/api/login")
            .unwrap();
        assert_eq!(login.method, "POST");
        assert!(!login.auth);
        assert!(login.request.as_ref().unwrap().contains_key("password"));
        assert_eq!(login.response.status, 200);
        assert!(notes.endpoints.iter().any(|e| e.auth));
        assert_eq!(notes.data_model["Note"]["title"], "string");
        let todo = catalog.get("todo-api").unwrap();
        assert!(todo.endpoints.iter().any(|e| e.query.is_some()));
        assert!(catalog.get("nope").is_none());
        assert!(catalog
            .path_of("todo-api")
            .unwrap()
            .ends_with("todo-api.toml"));
        for t in catalog.iter() {
            assert!(!t.requirements.is_empty(), "{} has requirements", t.name);
        }
    }

    #[test]
    fn requirement_ids_are_numbered_per_area() {
        let catalog = load_dir(&builtin_dir()).unwrap();
        let ids: Vec<_> = catalog
            .get("weather-dashboard")
            .unwrap()
            .requirements
            .numbered()
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(ids.first().unwrap(), "backend-1");
        assert!(ids.contains(&"backend-5".to_string()));
        assert!(ids.contains(&"frontend-1".to_string()));
        assert!(!ids.iter().any(|id| id.starts_with("admin")));
    }

    #[test]
    fn a_bad_file_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("good.toml"), MINIMAL).unwrap();
        std::fs::write(
            dir.path().join("broken.toml"),
            "name = \"broken\"\ntitle = \n",
        )
        .unwrap();
        let err = load_dir(dir.path()).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, CatalogError::Parse { .. }), "{text}");
        assert!(text.contains("broken.toml"), "{text}");
        assert!(text.contains("line 2"), "{text}");
    }

    #[test]
    fn a_missing_field_is_named() {
        let err = parse("name = \"x\"\ntitle = \"X\"\n", Path::new("x.toml")).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("x.toml: "), "{text}");
        assert!(text.contains("description"), "{text}");
    }

    #[test]
    fn methods_paths_and_names_are_checked() {
        let bad = MINIMAL
            .replace("\"GET\"", "\"FETCH\"")
            .replace("\"/health\"", "\"health\"");
        let err = parse(&bad, Path::new("t/bad.toml")).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, CatalogError::Invalid { .. }), "{text}");
        assert!(text.contains("t/bad.toml"), "{text}");
        assert!(
            text.contains("\"FETCH\" is not one of GET/POST/PUT/PATCH/DELETE"),
            "{text}"
        );
        assert!(text.contains("must start with `/`"), "{text}");

        let typo = MINIMAL.replace("description = \"Liveness\"", "descripton = \"Liveness\"");
        let text = parse(&typo, Path::new("typo.toml"))
            .unwrap_err()
            .to_string();
        assert!(text.contains("descripton"), "{text}");
    }

    #[test]
    fn duplicate_names_name_both_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.toml"), MINIMAL).unwrap();
        std::fs::write(dir.path().join("b.toml"), MINIMAL).unwrap();
        let err = load_dir(dir.path()).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, CatalogError::Duplicate { .. }), "{text}");
        assert!(text.contains("a.toml") && text.contains("b.toml"), "{text}");
    }

    #[test]
    fn a_missing_or_empty_dir_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            load_dir(dir.path()).unwrap_err(),
            CatalogError::Empty { .. }
        ));
        let missing = dir.path().join("nope");
        let text = load_dir(&missing).unwrap_err().to_string();
        assert!(text.contains("nope"), "{text}");
    }
}
