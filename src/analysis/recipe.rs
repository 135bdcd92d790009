//! How to start an app that came without a run recipe: the way a person would read a
//! folder an LLM wrote. Compose's `command` and build contexts, a Dockerfile's `CMD` or
//! `ENTRYPOINT`, `package.json`'s `start`, and the usual entry files of Flask, FastAPI and
//! Django, in that order, in the app's root and its usual backend folders. Every guess is
//! written down (`because`), so a result says how its app was started.
//!
//! Reads only regular files, never through a link, at most [`MAX_READ`] bytes of each.
//! Pure apart from those reads: nothing is run.

use std::path::{Component, Path};

/// The most of one file the inference reads.
pub const MAX_READ: u64 = 256 * 1024;

/// Where a backend usually lives, after the app's root.
pub const SERVICE_DIRS: &[&str] = &["backend", "server", "api", "src", "app", "web"];
/// Entry files, in the order they are tried.
const PYTHON_ENTRIES: &[&str] = &[
    "app.py",
    "main.py",
    "run.py",
    "server.py",
    "wsgi.py",
    "application.py",
    "api.py",
];
const COMPOSE_FILES: &[&str] = &[
    "docker-compose.yml",
    "docker-compose.yaml",
    "compose.yml",
    "compose.yaml",
];

/// A recipe found by looking, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Inferred {
    /// Program and arguments; `${PORT}` stands for the allocated port.
    pub command: Vec<String>,
    /// The folder, relative to the app's root, the command runs in (`""`: the root).
    pub workdir: String,
    /// Extra environment the framework reads its port or host from.
    pub env: Vec<(String, String)>,
    /// `python`, `node`.
    pub runtime: &'static str,
    /// `flask`, `fastapi`, `django`, `node`, or `python` when no framework was recognized.
    pub framework: &'static str,
    /// What was read and concluded, in order.
    pub because: Vec<String>,
}

/// Why no recipe could be found: what was looked for.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("no way to start this app was found: {looked}")]
pub struct NoEntry {
    pub looked: String,
}

/// A regular file's text, never through a link, at most [`MAX_READ`] bytes; `None` when
/// absent or not a regular file. Not UTF-8 is read lossily.
pub fn read_small(path: &Path) -> Option<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut bytes = Vec::new();
    file.take(MAX_READ).read_to_end(&mut bytes).ok()?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// A relative folder inside the app: no `..`, not absolute.
pub fn is_inside(rel: &str) -> bool {
    Path::new(rel)
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

fn join(workdir: &str, name: &str) -> String {
    if workdir.is_empty() {
        name.to_string()
    } else {
        format!("{workdir}/{name}")
    }
}

/// Look at `app` and say how to start it.
pub fn infer(app: &Path) -> Result<Inferred, NoEntry> {
    let mut because = Vec::new();
    // 1. Compose: a service's `command`, or its build context's Dockerfile and files.
    for name in COMPOSE_FILES {
        let Some(text) = read_small(&app.join(name)) else {
            continue;
        };
        match compose_services(&text) {
            Ok(services) => {
                let mut ordered = services;
                ordered.sort_by_key(|s| service_rank(&s.name));
                for service in ordered {
                    let Some(context) = service.context.as_deref() else {
                        continue;
                    };
                    let context = context.trim_start_matches("./").trim_end_matches('/');
                    let context = if context == "." { "" } else { context };
                    if !is_inside(context) || !app.join(context).is_dir() {
                        continue;
                    }
                    if let Some(command) = &service.command {
                        because.push(format!(
                            "{name}: service `{}` builds `{}` and runs `{}`",
                            service.name,
                            if context.is_empty() { "." } else { context },
                            command.join(" ")
                        ));
                        if let Some(found) = from_command(app, context, command, &mut because) {
                            return Ok(found);
                        }
                    }
                    if let Some(mut found) = in_folder(app, context, &mut because) {
                        found.because.insert(
                            0,
                            format!(
                                "{name}: service `{}` builds `{}`",
                                service.name,
                                if context.is_empty() { "." } else { context }
                            ),
                        );
                        return Ok(found);
                    }
                }
            }
            Err(e) => because.push(format!("{name} is not readable YAML ({e}); ignored")),
        }
    }
    // 2. The root, then the usual backend folders.
    for dir in std::iter::once("").chain(SERVICE_DIRS.iter().copied()) {
        if dir.is_empty() || app.join(dir).is_dir() {
            if let Some(found) = in_folder(app, dir, &mut because) {
                return Ok(found);
            }
        }
    }
    Err(NoEntry {
        looked: format!(
            "no compose service, Dockerfile CMD, package.json `start` or Python entry file \
             ({}) with a web framework or a `__main__` block, in the app's root or {}",
            PYTHON_ENTRIES.join(", "),
            SERVICE_DIRS
                .iter()
                .map(|d| format!("{d}/"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    })
}

/// The backend is usually the service with one of these names.
fn service_rank(name: &str) -> usize {
    let name = name.to_ascii_lowercase();
    ["backend", "api", "server", "app", "web"]
        .iter()
        .position(|n| name.contains(n))
        .unwrap_or(10)
}

/// One folder: its Dockerfile, its package.json, its entry files.
fn in_folder(app: &Path, dir: &str, because: &mut Vec<String>) -> Option<Inferred> {
    let folder = app.join(dir);
    if let Some(docker) = read_small(&folder.join("Dockerfile")) {
        if let Some(command) = dockerfile_command(&docker) {
            because.push(format!(
                "{}: CMD `{}`",
                join(dir, "Dockerfile"),
                command.join(" ")
            ));
            if let Some(found) = from_command(app, dir, &command, because) {
                return Some(found);
            }
        }
    }
    if let Some(found) = django(app, dir, because) {
        return Some(found);
    }
    for entry in PYTHON_ENTRIES {
        if let Some(found) = python_entry(app, dir, entry, because) {
            return Some(found);
        }
    }
    // A package whose `__init__.py` makes the app (`flask --app app run`).
    for package in ["app", "src"] {
        let init = folder.join(package).join("__init__.py");
        if let Some(code) = read_small(&init) {
            if let Some(found) = python_module(dir, package, &code, false, because) {
                return Some(found);
            }
        }
    }
    node(app, dir, because)
}

fn django(app: &Path, dir: &str, because: &mut Vec<String>) -> Option<Inferred> {
    let manage = read_small(&app.join(dir).join("manage.py"))?;
    if !manage.contains("django") {
        return None;
    }
    because.push(format!(
        "{}: a Django project; run with its development server",
        join(dir, "manage.py")
    ));
    Some(Inferred {
        command: vec![
            "python3".into(),
            "manage.py".into(),
            "runserver".into(),
            "0.0.0.0:${PORT}".into(),
            "--noreload".into(),
        ],
        workdir: dir.into(),
        env: vec![],
        runtime: "python",
        framework: "django",
        because: std::mem::take(because),
    })
}

fn python_entry(app: &Path, dir: &str, file: &str, because: &mut Vec<String>) -> Option<Inferred> {
    let code = read_small(&app.join(dir).join(file))?;
    let module = file.trim_end_matches(".py");
    python_module(dir, module, &code, true, because)
}

/// What starts a Python module: itself when it starts a server under `__main__`; else the
/// framework's runner pointed at its app object.
fn python_module(
    dir: &str,
    module: &str,
    code: &str,
    is_file: bool,
    because: &mut Vec<String>,
) -> Option<Inferred> {
    let shown = if is_file {
        join(dir, &format!("{module}.py"))
    } else {
        join(dir, &format!("{module}/__init__.py"))
    };
    let has_main = code.contains("__name__") && code.contains("__main__");
    let fastapi = code.contains("FastAPI(");
    let flask = code.contains("Flask(") || code.contains("create_app");
    let framework = if fastapi {
        "fastapi"
    } else if flask {
        "flask"
    } else {
        "python"
    };
    let starts_server =
        code.contains(".run(") || code.contains("uvicorn.run") || code.contains("serve(");
    let at_top_level = server_started_at_top_level(code);
    if is_file && ((has_main && (starts_server || framework == "python")) || at_top_level) {
        because.push(if has_main {
            format!("{shown}: {framework} app started under `__main__`; run it as it is")
        } else {
            format!("{shown}: {framework} app that starts its server when run; run it as it is")
        });
        return Some(Inferred {
            command: vec!["python3".into(), format!("{module}.py")],
            workdir: dir.into(),
            env: port_env(framework),
            runtime: "python",
            framework,
            because: std::mem::take(because),
        });
    }
    match framework {
        "fastapi" => {
            let var = assigned_name(code, "FastAPI(").unwrap_or_else(|| "app".into());
            because.push(format!(
                "{shown}: FastAPI app `{var}` with no server of its own; run with uvicorn"
            ));
            Some(Inferred {
                command: vec![
                    "python3".into(),
                    "-m".into(),
                    "uvicorn".into(),
                    format!("{module}:{var}"),
                    "--host".into(),
                    "0.0.0.0".into(),
                    "--port".into(),
                    "${PORT}".into(),
                ],
                workdir: dir.into(),
                env: vec![],
                runtime: "python",
                framework,
                because: std::mem::take(because),
            })
        }
        "flask" => {
            let target = match assigned_name(code, "Flask(") {
                Some(var) => format!("{module}:{var}"),
                None => module.to_string(),
            };
            because.push(format!(
                "{shown}: Flask app with no server of its own; run with `flask --app {target} run`"
            ));
            Some(Inferred {
                command: vec![
                    "python3".into(),
                    "-m".into(),
                    "flask".into(),
                    "--app".into(),
                    target,
                    "run".into(),
                    "--host".into(),
                    "0.0.0.0".into(),
                    "--port".into(),
                    "${PORT}".into(),
                ],
                workdir: dir.into(),
                env: vec![],
                runtime: "python",
                framework,
                because: std::mem::take(because),
            })
        }
        _ => None,
    }
}

/// A server started by the module's own top-level code, with no `__main__` guard
/// (`HTTPServer(...).serve_forever()`, `app.run(...)` at column 0), as models write.
fn server_started_at_top_level(code: &str) -> bool {
    code.lines().any(|line| {
        let top = !line.starts_with([' ', '\t', '#']);
        let skipped = ["def ", "class ", "import ", "from ", "@"]
            .iter()
            .any(|k| line.starts_with(k));
        top && !skipped
            && [
                "serve_forever(",
                ".run(",
                "uvicorn.run(",
                "run_app(",
                "serve(",
            ]
            .iter()
            .any(|call| line.contains(call))
    })
}

/// What Flask's and uvicorn's runners read when the app does not pass a port itself.
fn port_env(framework: &str) -> Vec<(String, String)> {
    match framework {
        "flask" => vec![
            ("FLASK_RUN_PORT".into(), "${PORT}".into()),
            ("FLASK_RUN_HOST".into(), "0.0.0.0".into()),
        ],
        _ => vec![],
    }
}

/// `app` in `app = Flask(__name__)`.
fn assigned_name(code: &str, constructor: &str) -> Option<String> {
    code.lines().find_map(|line| {
        let at = line.find(constructor)?;
        let (lhs, _) = line[..at].split_once('=')?;
        let name = lhs.trim().trim_end_matches(':').trim();
        let name = name.split(':').next()?.trim();
        (!name.is_empty() && name.chars().all(|c| c.is_alphanumeric() || c == '_'))
            .then(|| name.to_string())
    })
}

fn node(app: &Path, dir: &str, because: &mut Vec<String>) -> Option<Inferred> {
    let text = read_small(&app.join(dir).join("package.json"))?;
    let package: serde_json::Value = serde_json::from_str(&text).ok()?;
    let scripts = package.get("scripts");
    let script = |name: &str| scripts.and_then(|s| s.get(name)).and_then(|s| s.as_str());
    // A frontend's dev server (vite, react-scripts) is not the app's backend.
    let is_frontend = |s: &str| {
        [
            "vite",
            "react-scripts",
            "next dev",
            "webpack",
            "parcel",
            "ng serve",
        ]
        .iter()
        .any(|f| s.contains(f))
    };
    let shown = join(dir, "package.json");
    if let Some(start) = script("start").filter(|s| !is_frontend(s)) {
        because.push(format!(
            "{shown}: `start` script `{start}`; run with npm start"
        ));
        return Some(Inferred {
            command: vec!["npm".into(), "start".into(), "--silent".into()],
            workdir: dir.into(),
            env: vec![],
            runtime: "node",
            framework: "node",
            because: std::mem::take(because),
        });
    }
    let main = package
        .get("main")
        .and_then(|m| m.as_str())
        .unwrap_or("index.js");
    let main_path = app.join(dir).join(main);
    if is_inside(main) && main_path.is_file() && !is_frontend(&text) {
        because.push(format!("{shown}: no `start` script; run `node {main}`"));
        return Some(Inferred {
            command: vec!["node".into(), main.into()],
            workdir: dir.into(),
            env: vec![],
            runtime: "node",
            framework: "node",
            because: std::mem::take(because),
        });
    }
    None
}

/// A command from a Dockerfile or compose file, made to run here: `python` is whatever
/// Python the app's environment has; a relative script is checked to exist.
fn from_command(
    app: &Path,
    dir: &str,
    command: &[String],
    because: &mut Vec<String>,
) -> Option<Inferred> {
    let program = command.first()?;
    let base = Path::new(program)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (runtime, framework) = match base.as_str() {
        p if p.starts_with("python") => {
            let script = command.get(1).filter(|a| a.ends_with(".py"));
            if let Some(script) = script {
                let code = read_small(&app.join(dir).join(script.as_str()));
                if code.is_none() {
                    because.push(format!(
                        "`{script}` is not a file in `{}`; ignored",
                        if dir.is_empty() { "." } else { dir }
                    ));
                    return None;
                }
                let code = code.unwrap_or_default();
                (
                    "python",
                    if code.contains("FastAPI(") {
                        "fastapi"
                    } else if code.contains("Flask(") {
                        "flask"
                    } else {
                        "python"
                    },
                )
            } else if command.iter().any(|a| a == "uvicorn") {
                ("python", "fastapi")
            } else if command.iter().any(|a| a == "flask") {
                ("python", "flask")
            } else {
                ("python", "python")
            }
        }
        "flask" => ("python", "flask"),
        "uvicorn" | "hypercorn" => ("python", "fastapi"),
        "gunicorn" | "waitress-serve" => ("python", "flask"),
        "node" | "npm" | "yarn" | "npx" => ("node", "node"),
        _ => {
            because.push(format!(
                "`{program}` is not a program Assay knows how to run; ignored"
            ));
            return None;
        }
    };
    let mut command: Vec<String> = command.to_vec();
    if base.starts_with("python") {
        command[0] = "python3".into();
    }
    because.push("run the image's command as it is (its port is found where it listens)".into());
    Some(Inferred {
        env: port_env(framework),
        command,
        workdir: dir.into(),
        runtime,
        framework,
        because: std::mem::take(because),
    })
}

/// The command a Dockerfile runs: `ENTRYPOINT` then `CMD`, the last of each, in exec
/// (`["python", "app.py"]`) or shell form (`python app.py`, run by `sh -c`).
pub fn dockerfile_command(text: &str) -> Option<Vec<String>> {
    let mut entrypoint: Option<Vec<String>> = None;
    let mut cmd: Option<Vec<String>> = None;
    // Continuation lines joined first.
    let joined = text.replace("\\\r\n", " ").replace("\\\n", " ");
    for line in joined.lines() {
        let line = line.trim();
        let Some((instruction, rest)) = line.split_once(char::is_whitespace) else {
            continue;
        };
        let target = match instruction.to_ascii_uppercase().as_str() {
            "CMD" => &mut cmd,
            "ENTRYPOINT" => &mut entrypoint,
            // A new stage starts over.
            "FROM" => {
                entrypoint = None;
                cmd = None;
                continue;
            }
            _ => continue,
        };
        *target = Some(command_words(rest.trim()));
    }
    let mut words = entrypoint.unwrap_or_default();
    words.extend(cmd.unwrap_or_default());
    (!words.is_empty()).then_some(words)
}

/// Exec form as JSON; shell form split on whitespace when it is plain words, else handed
/// to `sh -c`.
fn command_words(text: &str) -> Vec<String> {
    if text.starts_with('[') {
        if let Ok(words) = serde_json::from_str::<Vec<String>>(text) {
            return words;
        }
    }
    if text
        .chars()
        .any(|c| matches!(c, '&' | '|' | ';' | '$' | '>' | '<' | '`' | '"' | '\''))
    {
        return vec!["sh".into(), "-c".into(), text.into()];
    }
    text.split_whitespace().map(str::to_string).collect()
}

#[derive(Debug)]
struct ComposeService {
    name: String,
    context: Option<String>,
    command: Option<Vec<String>>,
}

fn compose_services(text: &str) -> Result<Vec<ComposeService>, String> {
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
    let Some(services) = doc.get("services").and_then(|s| s.as_mapping()) else {
        return Ok(vec![]);
    };
    let mut out = Vec::new();
    for (name, service) in services {
        let name = name.as_str().unwrap_or("").to_string();
        let context = match service.get("build") {
            Some(serde_yaml_ng::Value::String(s)) => Some(s.clone()),
            Some(b) => b
                .get("context")
                .and_then(|c| c.as_str())
                .map(str::to_string),
            None => None,
        };
        let command = match service.get("command") {
            Some(serde_yaml_ng::Value::String(s)) => Some(command_words(s)),
            Some(serde_yaml_ng::Value::Sequence(words)) => Some(
                words
                    .iter()
                    .filter_map(|w| w.as_str().map(str::to_string))
                    .collect(),
            ),
            _ => None,
        };
        out.push(ComposeService {
            name,
            context,
            command,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::analysis::tree_of as app;

    #[test]
    fn a_flask_app_with_its_own_main_runs_as_it_is_from_its_backend_folder() {
        let dir = app(&[
            ("backend/app.py", "from flask import Flask\napp = Flask(__name__)\nif __name__ == '__main__':\n    app.run(host='0.0.0.0', port=5000, debug=True)\n"),
            ("frontend/package.json", r#"{"scripts": {"dev": "vite", "start": "vite"}}"#),
        ]);
        let found = infer(dir.path()).unwrap();
        assert_eq!(found.command, ["python3", "app.py"]);
        assert_eq!(found.workdir, "backend");
        assert_eq!(found.framework, "flask");
        assert!(
            found.because.iter().any(|b| b.contains("backend/app.py")),
            "{:?}",
            found.because
        );
    }

    #[test]
    fn the_compose_file_and_dockerfile_say_which_service_and_command() {
        let dir = app(&[
            ("docker-compose.yml", "services:\n  frontend:\n    build: ./frontend\n  backend:\n    build:\n      context: ./backend\n    ports: ['5000:5000']\n"),
            ("backend/Dockerfile", "FROM python:3.11\nWORKDIR /app\nCOPY . .\nCMD [\"python\", \"server.py\"]\n"),
            ("backend/server.py", "from flask import Flask\napp = Flask(__name__)\napp.run(port=5000)\n"),
            ("backend/app.py", "print('not me')\n"),
            ("frontend/package.json", r#"{"scripts": {"start": "react-scripts start"}}"#),
        ]);
        let found = infer(dir.path()).unwrap();
        assert_eq!(found.command, ["python3", "server.py"]);
        assert_eq!(found.workdir, "backend");
        assert!(
            found.because[0].contains("service `backend`"),
            "{:?}",
            found.because
        );
    }

    #[test]
    fn a_fastapi_module_without_a_server_runs_under_uvicorn() {
        let dir = app(&[("main.py", "from fastapi import FastAPI\napi = FastAPI()\n@api.get('/')\ndef root():\n    return {}\n")]);
        let found = infer(dir.path()).unwrap();
        assert_eq!(
            found.command,
            ["python3", "-m", "uvicorn", "main:api", "--host", "0.0.0.0", "--port", "${PORT}"]
        );
    }

    #[test]
    fn a_flask_factory_runs_under_flask_run_and_django_under_runserver() {
        let dir = app(&[(
            "app/__init__.py",
            "from flask import Flask\ndef create_app():\n    return Flask(__name__)\n",
        )]);
        let found = infer(dir.path()).unwrap();
        assert_eq!(
            found.command[..5],
            ["python3", "-m", "flask", "--app", "app"]
        );
        let dir = app(&[("manage.py", "import django\n")]);
        assert_eq!(infer(dir.path()).unwrap().framework, "django");
    }

    #[test]
    fn a_shell_form_cmd_goes_to_sh_and_a_missing_script_is_passed_over() {
        assert_eq!(
            dockerfile_command("FROM x\nCMD gunicorn -b 0.0.0.0:$PORT app:app\n").unwrap(),
            ["sh", "-c", "gunicorn -b 0.0.0.0:$PORT app:app"]
        );
        assert_eq!(
            dockerfile_command("ENTRYPOINT [\"python\"]\nCMD [\"app.py\"]\n").unwrap(),
            ["python", "app.py"]
        );
        let dir = app(&[
            ("Dockerfile", "CMD [\"python\", \"missing.py\"]\n"),
            ("run.py", "from flask import Flask\napp = Flask('x')\nif __name__ == '__main__':\n    app.run()\n"),
        ]);
        let found = infer(dir.path()).unwrap();
        assert_eq!(found.command, ["python3", "run.py"]);
        assert!(found.because.iter().any(|b| b.contains("missing.py")));
    }

    #[test]
    fn nothing_to_run_says_what_was_looked_for() {
        let dir = app(&[
            ("README.md", "# An app\n"),
            ("frontend/package.json", r#"{"scripts":{"dev":"vite"}}"#),
        ]);
        let e = infer(dir.path()).unwrap_err();
        assert!(e.to_string().contains("app.py"), "{e}");
    }

    #[test]
    fn a_module_that_starts_its_server_at_top_level_runs_as_it_is() {
        let dir = app(&[(
            "app.py",
            "import os\nfrom http.server import HTTPServer, BaseHTTPRequestHandler\nclass H(BaseHTTPRequestHandler):\n    def do_GET(self):\n        self.send_response(200)\n\nHTTPServer(('0.0.0.0', 8000), H).serve_forever()\n",
        )]);
        let found = infer(dir.path()).unwrap();
        assert_eq!(found.command, ["python3", "app.py"]);
        assert!(found
            .because
            .last()
            .unwrap()
            .contains("starts its server when run"));
        // A server started only inside a function is not started by importing it.
        let dir = app(&[(
            "app.py",
            "from http.server import HTTPServer\ndef main():\n    HTTPServer(('', 8000), None).serve_forever()\n",
        )]);
        assert!(infer(dir.path()).is_err());
    }

    #[test]
    fn a_link_is_never_read() {
        let dir = app(&[("elsewhere.py", "from flask import Flask\napp = Flask('x')\nif __name__ == '__main__':\n    app.run()\n")]);
        std::os::unix::fs::symlink("elsewhere.py", dir.path().join("app.py")).unwrap();
        assert!(read_small(&dir.path().join("app.py")).is_none());
    }
}
