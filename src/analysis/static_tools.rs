//! The static analyzer: real tools run in parallel over an app folder, each with its own
//! timeout; their outputs are parsed into [`Finding`]s with normalized severities (the
//! mapping is documented in `docs/findings.md`). A tool that is not installed is reported
//! `not_available` with its install command, never as "no findings".

use super::finding::{Finding, Location, Severity, ToolRun, ToolStatus};
use crate::supervise::{output_within, SupervisedCommand};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

const SEMGREP_PYTHON_RULES: &str = include_str!("../../rules/semgrep/python.yml");
const SEMGREP_JS_RULES: &str = include_str!("../../rules/semgrep/javascript.yml");
const VULTURE_IGNORED_DECORATORS: &str = "@*.route,@*.get,@*.post,@*.put,@*.patch,@*.delete,\
@*.errorhandler,@*.before_request,@*.after_request,@*.teardown_appcontext,@*.teardown_request,@*.cli.command";
const ESLINT_CONFIG: &str = include_str!("../../rules/eslint/eslint.config.mjs");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Language {
    Python,
    JavaScript,
    Any,
    /// The app's pinned Python requirements (`requirements.txt`).
    PythonRequirements,
    /// The app's npm lock file (`package-lock.json`).
    NpmLockfile,
}

/// A static analysis tool Assay knows how to run and read.
#[derive(Debug, Clone, Copy)]
pub struct Tool {
    pub name: &'static str,
    pub program: &'static str,
    language: Language,
    pub install: &'static str,
}

pub const TOOLS: &[Tool] = &[
    Tool {
        name: "ruff",
        program: "ruff",
        language: Language::Python,
        install: "pip install ruff==0.17.5",
    },
    Tool {
        name: "bandit",
        program: "bandit",
        language: Language::Python,
        install: "pip install bandit==1.9.4",
    },
    Tool {
        name: "semgrep",
        program: "semgrep",
        language: Language::Any,
        install: "pip install semgrep==1.180.0",
    },
    Tool {
        name: "pylint",
        program: "pylint",
        language: Language::Python,
        install: "pip install pylint==4.1.4",
    },
    Tool {
        name: "vulture",
        program: "vulture",
        language: Language::Python,
        install: "pip install vulture==2.16",
    },
    Tool {
        name: "radon",
        program: "radon",
        language: Language::Python,
        install: "pip install radon==6.0.1",
    },
    Tool {
        name: "detect-secrets",
        program: "detect-secrets",
        language: Language::Any,
        install: "pip install detect-secrets==1.5.0",
    },
    Tool {
        name: "eslint",
        program: "eslint",
        language: Language::JavaScript,
        install: "npm install -g eslint@10.15.0",
    },
    Tool {
        name: "pip-audit",
        program: "pip-audit",
        language: Language::PythonRequirements,
        install: "pip install pip-audit==2.10.1",
    },
    Tool {
        name: "npm-audit",
        program: "npm",
        language: Language::NpmLockfile,
        install: "apt-get install npm",
    },
];

/// The dependency manifest an audit tool reads: the app's shallowest `requirements.txt`
/// or `package-lock.json` outside dependency folders, relative to the app.
fn dependency_manifest(tool: &Tool, app: &Path) -> Option<PathBuf> {
    let file = match tool.language {
        Language::PythonRequirements => "requirements.txt",
        Language::NpmLockfile => "package-lock.json",
        _ => return None,
    };
    super::app_files(app, &[])
        .into_iter()
        .filter(|f| f.file_name().is_some_and(|n| n == file))
        .filter_map(|f| f.strip_prefix(app).ok().map(Path::to_path_buf))
        .min_by_key(|rel| (rel.components().count(), rel.clone()))
}

/// An audit whose vulnerability database could not be reached did not run: said as such
/// (`not_available`), never as "no known vulnerabilities". `None` when it did run.
pub fn audit_unavailable(tool: &str, stdout: &str, stderr: &str) -> Option<String> {
    match tool {
        "pip-audit" => {
            let v: Value = serde_json::from_str(stdout).unwrap_or(Value::Null);
            let deps = v["dependencies"].as_array().cloned().unwrap_or_default();
            let unreachable = |r: &Value| {
                r["skip_reason"]
                    .as_str()
                    .is_some_and(|s| s.contains("not found on PyPI"))
            };
            let network = [
                "ConnectionError",
                "Max retries exceeded",
                "Name or service not known",
                "timed out",
            ];
            if (!deps.is_empty() && deps.iter().all(unreachable))
                || network.iter().any(|n| stderr.contains(n))
            {
                Some("PyPI's vulnerability data (pypi.org/pypi/NAME/VERSION/json) could not be reached from this machine, so no requirement was audited; the dependency audit did not run".into())
            } else {
                None
            }
        }
        "npm-audit" => {
            let v: Value = serde_json::from_str(stdout).unwrap_or(Value::Null);
            let failed = v.get("vulnerabilities").is_none()
                && (v.get("error").is_some()
                    || v.get("statusCode").is_some()
                    || v.get("message").is_some());
            failed.then(|| {
                let why = v["message"]
                    .as_str()
                    .or_else(|| v["error"]["summary"].as_str())
                    .unwrap_or("no answer");
                format!("the npm registry's advisory database could not be queried from this machine ({why}); the dependency audit did not run")
            })
        }
        _ => None,
    }
}

pub fn tool(name: &str) -> Option<&'static Tool> {
    TOOLS.iter().find(|t| t.name == name)
}

/// The project-local tools folder that `scripts/install-tools` fills, relative to the
/// working directory: used when present, after `ASSAY_TOOL_PATH` and before PATH.
pub const LOCAL_TOOL_DIRS: &[&str] = &[".tools/venv/bin", ".tools/node/node_modules/.bin"];

/// Where to look for tool programs: `ASSAY_TOOL_PATH` (colon-separated), then the local
/// `.tools/` folder, then Assay's own toolchain (`crate::toolchain`), then PATH.
pub fn find_program(program: &str) -> Option<PathBuf> {
    let extra = std::env::var_os("ASSAY_TOOL_PATH").unwrap_or_default();
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&extra)
        .chain(LOCAL_TOOL_DIRS.iter().map(PathBuf::from))
        .chain(crate::toolchain::bin_dirs())
        .chain(std::env::split_paths(&path))
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
        // Tools run inside the app folder: a relative program path would point elsewhere.
        .map(|found| std::path::absolute(&found).unwrap_or(found))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// What the app folder holds, to skip tools with nothing to read.
#[derive(Debug, Clone, Copy, Default)]
pub struct Languages {
    pub python: bool,
    pub javascript: bool,
}

pub fn detect_languages(dir: &Path) -> Languages {
    survey(dir).0
}

/// How much code an app has: non-blank lines of its Python and JavaScript/TypeScript
/// sources, so that findings can be counted per thousand lines. Built and minified output
/// (`dist/`, `build/`, `*.min.js`) is not the model's writing and is not counted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CodeSize {
    pub files: u64,
    pub lines: u64,
    pub by_language: BTreeMap<String, u64>,
}

/// The app's languages and the size of its code.
pub fn survey(dir: &Path) -> (Languages, CodeSize) {
    let mut langs = Languages::default();
    let mut size = CodeSize::default();
    for file in super::app_files(dir, &[]) {
        let language = match file.extension().and_then(|e| e.to_str()) {
            Some("py") => {
                langs.python = true;
                "python"
            }
            Some("js" | "mjs" | "cjs" | "jsx" | "ts" | "tsx" | "mts" | "cts") => {
                langs.javascript = true;
                "javascript"
            }
            _ => continue,
        };
        let rel = file.strip_prefix(dir).unwrap_or(&file);
        let generated = rel
            .components()
            .any(|c| matches!(c.as_os_str().to_str(), Some("dist" | "build")))
            || rel.to_string_lossy().contains(".min.");
        if generated {
            continue;
        }
        let Ok(text) = std::fs::read(&file) else {
            continue;
        };
        let lines = text
            .split(|b| *b == b'\n')
            .filter(|l| l.iter().any(|b| !b.is_ascii_whitespace()))
            .count() as u64;
        size.files += 1;
        size.lines += lines;
        *size.by_language.entry(language.to_string()).or_default() += lines;
    }
    (langs, size)
}

pub struct StaticOutcome {
    pub runs: Vec<ToolRun>,
    pub findings: Vec<Finding>,
    pub code: CodeSize,
}

/// Run `tools` over a confined copy of `app_dir` (see [`super::confine`]) in parallel. Raw
/// outputs go to `out_dir` as `static-<tool>.out`; the copy and scratch files (rules,
/// configs) go to `scratch`. What the copy left out is reported as findings.
pub async fn run_all(
    app_dir: &Path,
    tools: &[&'static Tool],
    timeout: Duration,
    out_dir: &Path,
    scratch: &Path,
) -> std::io::Result<StaticOutcome> {
    let (app, into) = (app_dir.to_path_buf(), scratch.join("app"));
    let copy = tokio::task::spawn_blocking(move || super::confine::confined_copy(&app, &into))
        .await
        .map_err(std::io::Error::other)??;
    let root = copy.root.clone();
    let (langs, code) = {
        let root = root.clone();
        tokio::task::spawn_blocking(move || survey(&root))
            .await
            .map_err(std::io::Error::other)?
    };
    let runs = futures::future::join_all(
        tools
            .iter()
            .map(|t| run_one(t, &root, langs, timeout, out_dir, scratch)),
    )
    .await;
    let mut all = copy.findings("static");
    let mut tool_runs = Vec::new();
    for (run, findings) in runs {
        all.extend(findings);
        tool_runs.push(run);
    }
    let findings = tokio::task::spawn_blocking(move || {
        super::confine::attach_snippets(&root, &mut all);
        all
    })
    .await
    .map_err(std::io::Error::other)?;
    Ok(StaticOutcome {
        runs: tool_runs,
        findings,
        code,
    })
}

struct Invocation {
    args: Vec<String>,
    cwd: PathBuf,
    /// Exit codes that mean "ran fine" (several tools exit non-zero when they find issues).
    ok_codes: &'static [i32],
}

fn invocation(tool: &Tool, app: &Path, scratch: &Path) -> std::io::Result<Invocation> {
    let a = app.display().to_string();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    Ok(match tool.name {
        "ruff" => Invocation {
            args: s(&[
                "check",
                "--no-cache",
                "--output-format",
                "json",
                "--exit-zero",
                "--isolated",
                "--select",
                "E,F,B,S,W",
                &a,
            ]),
            cwd: app.to_path_buf(),
            ok_codes: &[0],
        },
        "bandit" => Invocation {
            args: s(&["-f", "json", "-q", "-r", &a]),
            cwd: app.to_path_buf(),
            ok_codes: &[0, 1],
        },
        "semgrep" => {
            let rules = scratch.join("semgrep-rules");
            std::fs::create_dir_all(&rules)?;
            std::fs::write(rules.join("python.yml"), SEMGREP_PYTHON_RULES)?;
            std::fs::write(rules.join("javascript.yml"), SEMGREP_JS_RULES)?;
            Invocation {
                args: s(&[
                    "scan",
                    "--metrics=off",
                    "--disable-version-check",
                    "--quiet",
                    "--json",
                    "--no-git-ignore",
                    "--config",
                    &rules.display().to_string(),
                    &a,
                ]),
                cwd: app.to_path_buf(),
                ok_codes: &[0, 1],
            }
        }
        "pylint" => Invocation {
            args: s(&[
                "--output-format=json",
                "--exit-zero",
                "--recursive=y",
                "--disable=import-error",
                &a,
            ]),
            cwd: app.to_path_buf(),
            ok_codes: &[0],
        },
        "vulture" => Invocation {
            // Framework entry points (routes, hooks) are used by the framework, not by code.
            args: s(&[
                &a,
                "--min-confidence",
                "60",
                "--ignore-decorators",
                VULTURE_IGNORED_DECORATORS,
            ]),
            cwd: app.to_path_buf(),
            ok_codes: &[0, 3],
        },
        "radon" => Invocation {
            args: s(&["cc", "-j", "-s", &a]),
            cwd: app.to_path_buf(),
            ok_codes: &[0],
        },
        "detect-secrets" => Invocation {
            args: s(&["scan", "--all-files", "."]),
            cwd: app.to_path_buf(),
            ok_codes: &[0],
        },
        "eslint" => {
            let config = scratch.join("eslint.config.mjs");
            std::fs::write(&config, eslint_config())?;
            Invocation {
                // With --config the base path is the working directory: run inside the app.
                args: s(&[
                    "--config",
                    &config.display().to_string(),
                    "--format",
                    "json",
                    "--no-warn-ignored",
                    ".",
                ]),
                cwd: app.to_path_buf(),
                ok_codes: &[0, 1],
            }
        }
        "pip-audit" => Invocation {
            args: vec![
                "-r".into(),
                dependency_manifest(tool, app)
                    .ok_or_else(|| std::io::Error::other("no requirements.txt"))?
                    .display()
                    .to_string(),
                "--no-deps".into(),
                "--disable-pip".into(),
                "--format".into(),
                "json".into(),
                "--progress-spinner".into(),
                "off".into(),
            ],
            cwd: app.to_path_buf(),
            ok_codes: &[0, 1],
        },
        "npm-audit" => {
            let lock = dependency_manifest(tool, app)
                .ok_or_else(|| std::io::Error::other("no package-lock.json"))?;
            Invocation {
                // The registry is named here: an app's own .npmrc must not send the
                // audit (and what it tells about the app) elsewhere.
                args: s(&[
                    "audit",
                    "--json",
                    "--package-lock-only",
                    "--registry",
                    "https://registry.npmjs.org/",
                ]),
                cwd: app.join(lock.parent().unwrap_or(Path::new(""))),
                ok_codes: &[0, 1],
            }
        }
        other => unreachable!("unknown tool {other}"),
    })
}

/// The shipped ESLint config, pointed at the TypeScript parser installed beside eslint
/// (a config in a scratch folder cannot import it by name).
fn eslint_config() -> String {
    let parser = find_program("eslint")
        .and_then(|eslint| std::fs::canonicalize(eslint).ok())
        .and_then(|real| {
            // `node_modules/eslint/bin/eslint.js` → `node_modules`
            real.ancestors()
                .find(|a| a.file_name().is_some_and(|n| n == "node_modules"))
                .map(Path::to_path_buf)
        })
        .map(|modules| modules.join("@typescript-eslint/parser/dist/index.js"))
        .filter(|p| p.is_file())
        .map(|p| format!("file://{}", p.display()))
        .unwrap_or_default();
    // A JavaScript string literal either way: no quote or backslash gets in.
    let parser = parser.replace(['"', '\\', '\n'], "");
    ESLINT_CONFIG.replace("__TS_PARSER__", &parser)
}

/// Keep tools from phoning home (there is no network to wait for) or coloring output.
fn quiet_env(cmd: &mut SupervisedCommand) -> &mut SupervisedCommand {
    cmd.env("SEMGREP_ENABLE_VERSION_CHECK", "0")
        .env("SEMGREP_SEND_METRICS", "off")
        .env("NO_COLOR", "1")
}

pub async fn version_of(program: &Path) -> Option<String> {
    let mut cmd = SupervisedCommand::new(program);
    quiet_env(&mut cmd)
        .arg("--version")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let (child, handle) = cmd.spawn_tokio().ok()?;
    let out = output_within(child, handle, Duration::from_secs(30))
        .await
        .ok()??;
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let line = text
        .lines()
        .find(|l| l.chars().any(|c| c.is_ascii_digit()))?;
    // "bandit 1.9.4", "pylint 4.1.4", "v10.15.0", "ruff 0.17.5": keep the first version-like word.
    line.split(|c: char| c.is_whitespace() || c == ',')
        .map(|w| w.trim_start_matches('v'))
        .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()) && w.contains('.'))
        .map(str::to_string)
}

async fn run_one(
    tool: &'static Tool,
    app: &Path,
    langs: Languages,
    timeout: Duration,
    out_dir: &Path,
    scratch: &Path,
) -> (ToolRun, Vec<Finding>) {
    let started = Instant::now();
    let mut run = ToolRun {
        tool: tool.name.into(),
        status: ToolStatus::Skipped,
        version: None,
        duration_ms: 0,
        findings: 0,
        detail: None,
        raw_output: None,
    };
    let relevant = match tool.language {
        Language::Python => langs.python,
        Language::JavaScript => langs.javascript,
        Language::Any => langs.python || langs.javascript,
        Language::PythonRequirements | Language::NpmLockfile => {
            dependency_manifest(tool, app).is_some()
        }
    };
    if !relevant {
        run.detail = Some(match tool.language {
            Language::PythonRequirements => "no requirements.txt in the app".into(),
            Language::NpmLockfile => {
                "no package-lock.json in the app (npm audits locked versions only)".into()
            }
            other => format!("no {other:?} files in the app").to_lowercase(),
        });
        return (run, Vec::new());
    }
    let Some(program) = find_program(tool.program) else {
        run.status = ToolStatus::NotAvailable;
        run.detail = Some(format!(
            "`{}` is not installed; install it with: {}",
            tool.program, tool.install
        ));
        return (run, Vec::new());
    };
    run.version = version_of(&program).await;
    let inv = match invocation(tool, app, scratch) {
        Ok(inv) => inv,
        Err(e) => {
            run.status = ToolStatus::Error;
            run.detail = Some(format!("preparing {}: {e}", tool.name));
            return (run, Vec::new());
        }
    };
    let mut cmd = SupervisedCommand::new(&program);
    quiet_env(&mut cmd)
        .args(&inv.args)
        .current_dir(&inv.cwd)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let (child, handle) = match cmd.spawn_tokio() {
        Ok(started) => started,
        Err(e) => {
            run.status = ToolStatus::Error;
            run.detail = Some(format!("starting {}: {e}", program.display()));
            return (run, Vec::new());
        }
    };
    // Dropped (the job stopped) or out of time: the tool and what it started are killed.
    let output = output_within(child, handle, timeout).await;
    run.duration_ms = started.elapsed().as_millis() as u64;
    let output = match output {
        Ok(Some(o)) => o,
        Err(e) => {
            run.status = ToolStatus::Error;
            run.detail = Some(format!("waiting for {}: {e}", tool.name));
            return (run, Vec::new());
        }
        Ok(None) => {
            run.status = ToolStatus::Timeout;
            run.detail = Some(format!("did not finish within {} s", timeout.as_secs()));
            return (run, Vec::new());
        }
    };
    let raw_name = format!("static-{}.out", tool.name);
    let mut raw = output.stdout.clone();
    if !output.stderr.is_empty() {
        raw.extend_from_slice(b"\n--- stderr ---\n");
        raw.extend_from_slice(&output.stderr);
    }
    if std::fs::write(out_dir.join(&raw_name), &raw).is_ok() {
        run.raw_output = Some(raw_name);
    }
    let code = output.status.code().unwrap_or(-1);
    let (stdout_text, stderr_text) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    if let Some(why) = audit_unavailable(tool.name, &stdout_text, &stderr_text) {
        run.status = ToolStatus::NotAvailable;
        run.detail = Some(why);
        return (run, Vec::new());
    }
    if tool.name == "pip-audit" && stderr_text.contains("is not pinned to an exact version") {
        run.status = ToolStatus::Skipped;
        let which = stderr_text
            .lines()
            .find_map(|l| l.split("requirement ").nth(1))
            .and_then(|l| l.split(" (from").next())
            .unwrap_or("a requirement");
        run.detail = Some(format!(
            "not every requirement is pinned ({which}); the audit checks exact versions only (what the app's environment resolved is in the dynamic result's install.installed)"
        ));
        return (run, Vec::new());
    }
    if !inv.ok_codes.contains(&code) {
        run.status = ToolStatus::Error;
        let stderr = String::from_utf8_lossy(&output.stderr);
        run.detail = Some(format!(
            "exited with {code}: {}",
            stderr
                .lines()
                .last()
                .unwrap_or("")
                .chars()
                .take(300)
                .collect::<String>()
        ));
        return (run, Vec::new());
    }
    match parse(tool.name, &stdout_text, app) {
        Ok(mut findings) => {
            if let Some(manifest) = dependency_manifest(tool, app) {
                point_at_manifest(&mut findings, app, &manifest);
            }
            run.findings = findings.len();
            run.status = if findings.is_empty() {
                ToolStatus::NoIssues
            } else {
                ToolStatus::Success
            };
            (run, findings)
        }
        Err(e) => {
            run.status = ToolStatus::Error;
            run.detail = Some(format!("cannot read {} output: {e}", tool.name));
            (run, Vec::new())
        }
    }
}

/// Audit findings name a package; they are placed on the manifest's line that names it.
fn point_at_manifest(findings: &mut [Finding], app: &Path, manifest: &Path) {
    let text = std::fs::read_to_string(app.join(manifest)).unwrap_or_default();
    let rel = manifest.display().to_string();
    for f in findings.iter_mut() {
        let package = f.location.path.clone();
        f.location.path = rel.clone();
        f.location.line = text
            .lines()
            .position(|l| {
                let l = l.trim().trim_start_matches('"').to_ascii_lowercase();
                l.starts_with(&package.to_ascii_lowercase())
                    || l.starts_with(&format!("node_modules/{}", package.to_ascii_lowercase()))
            })
            .map(|i| i as u32 + 1);
        f.fingerprint = super::finding::fingerprint(f);
    }
}

/// Path relative to the app folder, with `/` separators.
fn relative(app: &Path, path: &str) -> String {
    let p = Path::new(path);
    let rel = p.strip_prefix(app).unwrap_or(p);
    let s = rel.display().to_string();
    s.trim_start_matches("./").to_string()
}

/// A position past `u32` is no position (rather than a wrapped, wrong one).
fn loc(path: String, line: Option<u64>, column: Option<u64>) -> Location {
    Location {
        path,
        line: line.and_then(|l| u32::try_from(l).ok()),
        column: column.and_then(|c| u32::try_from(c).ok()),
        end_line: None,
    }
}

/// CWE of a bandit test (or the ruff `S` rule with the same number).
fn bandit_cwe(number: u32) -> Option<u32> {
    Some(match number {
        101 => 703,
        102 => 78,
        307 => 95,
        103 => 732,
        104 => 605,
        // Hard-coded passwords (CWE-259) are reported as their parent, hard-coded
        // credentials (CWE-798), so they merge with secret scanners' findings.
        105..=107 => 798,
        108 => 377,
        110 | 112 => 703,
        113 => 400,
        // Normalized so that bandit, ruff and semgrep agree and their findings merge.
        201 => 489,
        202 => 94,
        301..=302 | 403 => 502,
        303 | 304 | 305 | 324 => 327,
        311 => 330,
        501 => 295,
        506 => 20,
        601..=607 | 609 => 78,
        608 | 610 | 611 => 89,
        701 | 702 => 79,
        _ => return None,
    })
}

/// A tool's raw output as findings, for an app analyzed at `app`. Public only for the fuzz
/// targets (`fuzz/`), which feed it hostile output.
#[doc(hidden)]
pub fn parse(tool: &str, out: &str, app: &Path) -> Result<Vec<Finding>, String> {
    let json = || serde_json::from_str::<Value>(out.trim()).map_err(|e| e.to_string());
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    let mut findings = Vec::new();
    match tool {
        "ruff" => {
            let mut syntax: BTreeMap<String, (Value, usize)> = BTreeMap::new();
            for r in json()?.as_array().ok_or("not a list")? {
                let code = s(&r["code"]);
                if code.is_empty() || code == "invalid-syntax" || code == "E999" {
                    // One finding per file that is not valid Python, not one per token.
                    let file = relative(app, &s(&r["filename"]));
                    syntax.entry(file).or_insert_with(|| (r.clone(), 0)).1 += 1;
                    continue;
                }
                let number: Option<u32> = code.strip_prefix('S').and_then(|n| n.parse().ok());
                let cwe = number.and_then(bandit_cwe);
                let severity = match (code.chars().next(), number) {
                    (Some('S'), Some(n)) if (600..700).contains(&n) || n == 201 || n == 307 => {
                        Severity::High
                    }
                    (Some('S'), Some(n)) if (100..200).contains(&n) || (300..400).contains(&n) => {
                        Severity::Medium
                    }
                    (Some('S'), _) => Severity::Low,
                    (Some('F'), _) | (Some('B'), _) => Severity::Low,
                    _ => Severity::Info,
                };
                findings.push(Finding::new(
                    "static",
                    "ruff",
                    &code,
                    cwe,
                    severity,
                    &code,
                    &s(&r["message"]),
                    loc(
                        relative(app, &s(&r["filename"])),
                        r["location"]["row"].as_u64(),
                        r["location"]["column"].as_u64(),
                    ),
                ));
            }
            for (file, (first, count)) in syntax {
                findings.push(Finding::new(
                    "static",
                    "ruff",
                    NOT_VALID_SOURCE,
                    None,
                    Severity::High,
                    "syntax error",
                    &format!(
                        "not valid Python: {} ({count} syntax error{} in the file)",
                        s(&first["message"]),
                        if count == 1 { "" } else { "s" }
                    ),
                    loc(
                        file,
                        first["location"]["row"].as_u64(),
                        first["location"]["column"].as_u64(),
                    ),
                ));
            }
        }
        "bandit" => {
            let doc = json()?;
            for e in doc["errors"].as_array().into_iter().flatten() {
                findings.push(unreadable(
                    "bandit",
                    &relative(app, &s(&e["filename"])),
                    &s(&e["reason"]),
                ));
            }
            for r in doc["results"].as_array().ok_or("no results")? {
                let base = match s(&r["issue_severity"]).as_str() {
                    "HIGH" => Severity::High,
                    "MEDIUM" => Severity::Medium,
                    _ => Severity::Low,
                };
                // Low confidence lowers the severity one step.
                let severity = if s(&r["issue_confidence"]) == "LOW" && base > Severity::Low {
                    if base == Severity::High {
                        Severity::Medium
                    } else {
                        Severity::Low
                    }
                } else {
                    base
                };
                let test_id = s(&r["test_id"]);
                let cwe = test_id
                    .strip_prefix('B')
                    .and_then(|n| n.parse().ok())
                    .and_then(bandit_cwe)
                    .or_else(|| r["issue_cwe"]["id"].as_u64().map(|c| c as u32));
                let level = format!("{}/{}", s(&r["issue_severity"]), s(&r["issue_confidence"]));
                findings.push(Finding::new(
                    "static",
                    "bandit",
                    &test_id,
                    cwe,
                    severity,
                    &level,
                    &s(&r["issue_text"]),
                    loc(
                        relative(app, &s(&r["filename"])),
                        r["line_number"].as_u64(),
                        r["col_offset"].as_u64().map(|c| c.saturating_add(1)),
                    ),
                ));
            }
        }
        "semgrep" => {
            for r in json()?["results"].as_array().ok_or("no results")? {
                let extra = &r["extra"];
                let level = s(&extra["severity"]);
                let severity = match extra["metadata"]["assay-severity"].as_str() {
                    Some("critical") => Severity::Critical,
                    Some("high") => Severity::High,
                    Some("medium") => Severity::Medium,
                    Some("low") => Severity::Low,
                    _ => match level.as_str() {
                        "ERROR" => Severity::High,
                        "WARNING" => Severity::Medium,
                        _ => Severity::Low,
                    },
                };
                let cwe = extra["metadata"]["cwe"]
                    .as_array()
                    .and_then(|a| a.first())
                    .and_then(|c| c.as_str())
                    .and_then(parse_cwe);
                let rule = s(&r["check_id"]);
                let rule = rule.rsplit('.').next().unwrap_or(&rule).to_string();
                findings.push(Finding::new(
                    "static",
                    "semgrep",
                    &rule,
                    cwe,
                    severity,
                    &level,
                    &s(&extra["message"]),
                    loc(
                        relative(app, &s(&r["path"])),
                        r["start"]["line"].as_u64(),
                        r["start"]["col"].as_u64(),
                    ),
                ));
            }
        }
        "pylint" => {
            for r in json()?.as_array().ok_or("not a list")? {
                let kind = s(&r["type"]);
                let severity = match kind.as_str() {
                    // ruff's `invalid-syntax` says it once per file, as the model's error.
                    _ if s(&r["symbol"]) == "syntax-error" => Severity::Info,
                    "fatal" | "error" => Severity::Medium,
                    "warning" => Severity::Low,
                    _ => Severity::Info,
                };
                findings.push(Finding::new(
                    "static",
                    "pylint",
                    &s(&r["symbol"]),
                    None,
                    severity,
                    &kind,
                    &s(&r["message"]),
                    loc(
                        relative(app, &s(&r["path"])),
                        r["line"].as_u64(),
                        r["column"].as_u64().map(|c| c.saturating_add(1)),
                    ),
                ));
            }
        }
        "vulture" => {
            // "backend/app.py:42: unused function 'old_helper' (60% confidence)"
            for line in out.lines().filter(|l| !l.trim().is_empty()) {
                let mut parts = line.splitn(3, ':');
                let (Some(file), Some(lineno), Some(msg)) =
                    (parts.next(), parts.next(), parts.next())
                else {
                    return Err(format!("unexpected line `{line}`"));
                };
                let msg = msg.trim();
                let rule = msg
                    .split('\'')
                    .next()
                    .unwrap_or("unused")
                    .trim()
                    .replace(' ', "-");
                findings.push(Finding::new(
                    "static",
                    "vulture",
                    &rule,
                    Some(561),
                    Severity::Info,
                    "unused",
                    msg,
                    loc(relative(app, file), lineno.trim().parse().ok(), None),
                ));
            }
        }
        "radon" => {
            let v = json()?;
            for (file, blocks) in v.as_object().ok_or("not an object")? {
                let Some(blocks) = blocks.as_array() else {
                    if let Some(error) = blocks.get("error").and_then(|e| e.as_str()) {
                        findings.push(unreadable("radon", &relative(app, file), error));
                    }
                    continue;
                };
                for b in blocks {
                    let rank = s(&b["rank"]);
                    let severity = match rank.as_str() {
                        "C" | "D" => Severity::Low,
                        "E" | "F" => Severity::Medium,
                        _ => continue,
                    };
                    let msg = format!(
                        "{} `{}` has cyclomatic complexity {} (rank {rank})",
                        s(&b["type"]),
                        s(&b["name"]),
                        b["complexity"]
                    );
                    findings.push(Finding::new(
                        "static",
                        "radon",
                        &format!("cc-rank-{rank}"),
                        Some(1121),
                        severity,
                        &rank,
                        &msg,
                        loc(relative(app, file), b["lineno"].as_u64(), None),
                    ));
                }
            }
        }
        "detect-secrets" => {
            let v = json()?;
            for (file, secrets) in v["results"].as_object().ok_or("no results")? {
                for sec in secrets.as_array().into_iter().flatten() {
                    let kind = s(&sec["type"]);
                    findings.push(Finding::new(
                        "static",
                        "detect-secrets",
                        &kind.to_lowercase().replace(' ', "-"),
                        Some(798),
                        Severity::High,
                        "secret",
                        &format!("possible secret in source: {kind}"),
                        loc(relative(app, file), sec["line_number"].as_u64(), None),
                    ));
                }
            }
        }
        "eslint" => {
            for file in json()?.as_array().ok_or("not a list")? {
                let path = relative(app, &s(&file["filePath"]));
                for m in file["messages"].as_array().into_iter().flatten() {
                    if m["fatal"].as_bool() == Some(true) {
                        findings.push(Finding::new(
                            "static",
                            "eslint",
                            NOT_VALID_SOURCE,
                            None,
                            Severity::High,
                            "fatal",
                            &format!("not valid JavaScript: {}", s(&m["message"])),
                            loc(path.clone(), m["line"].as_u64(), m["column"].as_u64()),
                        ));
                        continue;
                    }
                    let rule = m["ruleId"].as_str().unwrap_or("parse-error").to_string();
                    let (severity, cwe) = match rule.as_str() {
                        "no-eval" | "no-implied-eval" | "no-new-func" => (Severity::High, Some(95)),
                        "no-script-url" => (Severity::Medium, Some(79)),
                        _ if m["severity"].as_u64() == Some(2) => (Severity::Low, None),
                        _ => (Severity::Info, None),
                    };
                    let level = if m["severity"].as_u64() == Some(2) {
                        "error"
                    } else {
                        "warning"
                    };
                    findings.push(Finding::new(
                        "static",
                        "eslint",
                        &rule,
                        cwe,
                        severity,
                        level,
                        &s(&m["message"]),
                        loc(path.clone(), m["line"].as_u64(), m["column"].as_u64()),
                    ));
                }
            }
        }
        "pip-audit" => {
            // Location: the package's name, moved onto the manifest by `point_at_manifest`.
            for dep in json()?["dependencies"]
                .as_array()
                .ok_or("no dependencies")?
            {
                let (name, version) = (s(&dep["name"]), s(&dep["version"]));
                for v in dep["vulns"].as_array().into_iter().flatten() {
                    let id = s(&v["id"]);
                    let aliases: Vec<String> = v["aliases"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(&s)
                        .collect();
                    let fixes: Vec<String> = v["fix_versions"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(&s)
                        .collect();
                    findings.push(Finding::new(
                        "static",
                        "pip-audit",
                        &id,
                        Some(1395),
                        Severity::High,
                        "vulnerable",
                        &format!(
                            "{name} {version} has a known vulnerability {id}{}{}",
                            if aliases.is_empty() {
                                String::new()
                            } else {
                                format!(" ({})", aliases.join(", "))
                            },
                            if fixes.is_empty() {
                                "; no fixed version yet".to_string()
                            } else {
                                format!("; fixed in {}", fixes.join(", "))
                            }
                        ),
                        loc(name.clone(), None, None),
                    ));
                }
            }
        }
        "npm-audit" => {
            let v = json()?;
            for (name, vuln) in v["vulnerabilities"]
                .as_object()
                .ok_or("no vulnerabilities")?
            {
                let level = s(&vuln["severity"]);
                let severity = match level.as_str() {
                    "critical" => Severity::Critical,
                    "high" => Severity::High,
                    "moderate" => Severity::Medium,
                    "low" => Severity::Low,
                    _ => Severity::Info,
                };
                // `via` holds advisories (objects) or the names of vulnerable dependencies.
                let advisories: Vec<&Value> = vuln["via"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|a| a.is_object())
                    .collect();
                let cwe = advisories
                    .iter()
                    .flat_map(|a| a["cwe"].as_array().into_iter().flatten())
                    .filter_map(|c| c.as_str()?.strip_prefix("CWE-")?.parse::<u32>().ok())
                    .next()
                    .unwrap_or(1395);
                let rule = advisories
                    .first()
                    .and_then(|a| a["url"].as_str().and_then(|u| u.rsplit('/').next()))
                    .unwrap_or("vulnerable-dependency")
                    .to_string();
                let titles: Vec<String> = advisories
                    .iter()
                    .map(|a| s(&a["title"]))
                    .filter(|t| !t.is_empty())
                    .collect();
                let message = if titles.is_empty() {
                    format!(
                        "{name} {} depends on a vulnerable package",
                        s(&vuln["range"])
                    )
                } else {
                    format!("{name} {}: {}", s(&vuln["range"]), titles.join("; "))
                };
                findings.push(Finding::new(
                    "static",
                    "npm-audit",
                    &rule,
                    Some(cwe),
                    severity,
                    &level,
                    &message,
                    loc(name.clone(), None, None),
                ));
            }
        }
        other => return Err(format!("no parser for {other}")),
    }
    Ok(findings)
}

/// The rule of a file that is not valid source in its language: the model's own error,
/// High (the file cannot run), one per file.
pub const NOT_VALID_SOURCE: &str = "not-valid-source";

/// A file a tool could not read: said, so that its silence about the file is never taken
/// for a clean bill (the file's own syntax error is [`NOT_VALID_SOURCE`]).
fn unreadable(tool: &str, file: &str, reason: &str) -> Finding {
    Finding::new(
        "static",
        tool,
        "could-not-parse",
        None,
        Severity::Info,
        "error",
        &format!("{tool} could not read this file: {}", reason.trim()),
        loc(file.to_string(), None, None),
    )
}

/// "CWE-89: SQL Injection" → 89.
fn parse_cwe(text: &str) -> Option<u32> {
    let rest = text.trim().strip_prefix("CWE-")?;
    rest.chars()
        .take_while(|c| c.is_ascii_digit())
        .collect::<String>()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_is_counted_in_non_blank_lines_without_built_or_minified_files() {
        let dir = tempfile::tempdir().unwrap();
        let write = |rel: &str, text: &str| {
            let p = dir.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        write("backend/app.py", "import os\n\n\nprint(1)\n   \n");
        write("frontend/src/App.jsx", "export default () => <p/>;\n");
        write("frontend/dist/assets/index.js", "a\nb\nc\n");
        write("frontend/public/vendor.min.js", "x\n");
        write("frontend/node_modules/react/index.js", "y\n");
        write("README.md", "# hi\n");
        let (langs, size) = survey(dir.path());
        assert!(langs.python && langs.javascript);
        assert_eq!((size.files, size.lines), (2, 3));
        assert_eq!(size.by_language["python"], 2);
    }

    /// A file that is not valid Python is one High finding, and every tool that could not
    /// read it says so, instead of reporting it clean.
    #[test]
    fn a_file_no_tool_can_parse_is_said_once_as_the_models_error() {
        let app = Path::new("/apps/x");
        let ruff = r#"[{"code": null, "filename": "/apps/x/app.py", "message": "SyntaxError: Expected an expression", "location": {"row": 1, "column": 5}},
            {"code": "invalid-syntax", "filename": "/apps/x/app.py", "message": "Got unexpected token", "location": {"row": 3, "column": 1}}]"#;
        let f = parse("ruff", ruff, app).unwrap();
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].rule, NOT_VALID_SOURCE);
        assert_eq!(f[0].severity, Severity::High);
        assert_eq!(f[0].location.line, Some(1));
        assert!(f[0].message.contains("2 syntax errors"), "{}", f[0].message);
        let bandit = r#"{"errors": [{"filename": "/apps/x/app.py", "reason": "syntax error while parsing AST from file"}], "results": []}"#;
        let f = parse("bandit", bandit, app).unwrap();
        assert_eq!(
            (f[0].rule.as_str(), f[0].location.path.as_str()),
            ("could-not-parse", "app.py")
        );
        let radon = r#"{"/apps/x/app.py": {"error": "unterminated string literal (line 1)"}}"#;
        assert_eq!(
            parse("radon", radon, app).unwrap()[0].rule,
            "could-not-parse"
        );
        let eslint = r#"[{"filePath": "/apps/x/src/App.jsx", "messages": [{"ruleId": null, "fatal": true, "severity": 2, "message": "Parsing error: Unexpected token <", "line": 4, "column": 10}]}]"#;
        let f = parse("eslint", eslint, app).unwrap();
        assert_eq!(
            (f[0].rule.as_str(), f[0].severity),
            (NOT_VALID_SOURCE, Severity::High)
        );
    }

    #[test]
    fn the_eslint_config_points_at_the_installed_typescript_parser_or_at_nothing() {
        let config = eslint_config();
        assert!(!config.contains("__TS_PARSER__"));
        assert!(config.contains("sourceType: \"module\""));
    }

    #[test]
    fn parses_each_tools_output() {
        let app = Path::new("/apps/x");
        let bandit = r#"{"results": [{"filename": "/apps/x/backend/app.py", "line_number": 12, "col_offset": 4,
            "issue_severity": "MEDIUM", "issue_confidence": "LOW", "issue_cwe": {"id": 89},
            "issue_text": "Possible SQL injection", "test_id": "B608"}]}"#;
        let f = parse("bandit", bandit, app).unwrap();
        assert_eq!(
            (f[0].location.path.as_str(), f[0].location.line, f[0].cwe),
            ("backend/app.py", Some(12), Some(89))
        );
        assert_eq!(
            f[0].severity,
            Severity::Low,
            "low confidence lowers medium to low"
        );

        let ruff = r#"[{"code": "S608", "message": "SQL", "filename": "/apps/x/backend/app.py", "location": {"row": 12, "column": 5}}]"#;
        let f = parse("ruff", ruff, app).unwrap();
        assert_eq!((f[0].cwe, f[0].severity), (Some(89), Severity::High));

        let vulture = "backend/app.py:40: unused function 'old_helper' (60% confidence)\n";
        let f = parse("vulture", vulture, app).unwrap();
        assert_eq!(
            (f[0].rule.as_str(), f[0].location.line),
            ("unused-function", Some(40))
        );

        let secrets =
            r#"{"results": {"backend/config.py": [{"type": "Secret Keyword", "line_number": 3}]}}"#;
        let f = parse("detect-secrets", secrets, app).unwrap();
        assert_eq!(
            (f[0].cwe, f[0].severity, f[0].rule.as_str()),
            (Some(798), Severity::High, "secret-keyword")
        );

        let semgrep = r#"{"results": [{"check_id": "tmp.rules.python-sql-string-building", "path": "/apps/x/backend/app.py",
            "start": {"line": 12, "col": 5}, "extra": {"severity": "ERROR", "message": "SQL",
            "metadata": {"cwe": ["CWE-89: SQL Injection"], "assay-severity": "critical"}}}]}"#;
        let f = parse("semgrep", semgrep, app).unwrap();
        assert_eq!(
            (f[0].rule.as_str(), f[0].cwe, f[0].severity),
            ("python-sql-string-building", Some(89), Severity::Critical)
        );

        let eslint = r#"[{"filePath": "/apps/x/frontend/app.js", "messages": [{"ruleId": "no-eval", "severity": 2, "message": "eval can be harmful.", "line": 7, "column": 3}]}]"#;
        let f = parse("eslint", eslint, app).unwrap();
        assert_eq!(
            (f[0].location.path.as_str(), f[0].cwe, f[0].severity),
            ("frontend/app.js", Some(95), Severity::High)
        );

        let radon = r#"{"/apps/x/backend/app.py": [{"type": "function", "name": "route", "rank": "D", "complexity": 23, "lineno": 50}, {"rank": "A", "name": "ok", "type": "function", "complexity": 1, "lineno": 1}]}"#;
        assert_eq!(parse("radon", radon, app).unwrap().len(), 1);

        assert!(
            parse("bandit", "Traceback (most recent call last):", app).is_err(),
            "garbage is an error, not zero findings"
        );

        // Met while writing fuzz/tool_output (now one of its seeds): a 0-based column of
        // u64::MAX overflowed turning 1-based, and positions past u32 wrapped into wrong ones.
        let huge = r#"{"results": [{"filename": "a.py", "line_number": 4294967297, "col_offset": 18446744073709551615}]}"#;
        let f = parse("bandit", huge, app).unwrap();
        assert_eq!((f[0].location.line, f[0].location.column), (None, None));
        let pylint = r#"[{"path": "a.py", "line": 3, "column": 18446744073709551615}]"#;
        assert_eq!(
            parse("pylint", pylint, app).unwrap()[0].location.column,
            None
        );
    }

    /// pip-audit's and npm audit's JSON, as their documentation shows it.
    #[test]
    fn audit_reports_become_findings_on_the_manifest_line() {
        let pip = r#"{"dependencies": [{"name": "flask", "version": "2.2.2", "vulns": [{"id": "GHSA-m2qf-hxjv-5gpq", "fix_versions": ["2.2.5", "2.3.2"], "aliases": ["CVE-2023-30861"], "description": "cookie"}]}, {"name": "click", "version": "8.1.7", "vulns": []}], "fixes": []}"#;
        let app = Path::new("/apps/x");
        let mut found = parse("pip-audit", pip, app).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].cwe, Some(1395));
        assert!(found[0].message.contains("CVE-2023-30861") && found[0].message.contains("2.2.5"));
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("backend")).unwrap();
        std::fs::write(
            dir.path().join("backend/requirements.txt"),
            "# deps\nFlask==2.2.2\n",
        )
        .unwrap();
        point_at_manifest(
            &mut found,
            dir.path(),
            Path::new("backend/requirements.txt"),
        );
        assert_eq!(
            (found[0].location.path.as_str(), found[0].location.line),
            ("backend/requirements.txt", Some(2))
        );
        let npm = r#"{"auditReportVersion": 2, "vulnerabilities": {"lodash": {"name": "lodash", "severity": "critical", "isDirect": true,
            "via": [{"source": 1096305, "name": "lodash", "title": "Prototype Pollution in lodash", "url": "https://github.com/advisories/GHSA-jf85-cpcp-j695", "severity": "critical", "cwe": ["CWE-1321"], "range": "<4.17.12"}],
            "effects": [], "range": "<=4.17.20", "nodes": ["node_modules/lodash"], "fixAvailable": true}}, "metadata": {}}"#;
        let found = parse("npm-audit", npm, app).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(
            (found[0].severity, found[0].cwe),
            (Severity::Critical, Some(1321))
        );
        assert_eq!(found[0].rule, "GHSA-jf85-cpcp-j695");
        assert_eq!(audit_unavailable("npm-audit", npm, ""), None);
        assert_eq!(audit_unavailable("pip-audit", pip, ""), None);
    }

    /// The audits against the real databases: where they answer, the planted old versions
    /// are found; where they cannot be reached (as on machines whose PyPI and npm are
    /// mirrors without the vulnerability APIs), the run says so and claims nothing.
    #[tokio::test]
    async fn the_audits_find_old_pins_or_say_their_database_is_out_of_reach() {
        // Found in `.tools/` (the tests run in the crate's folder) once scripts/setup ran.
        assert!(find_program("pip-audit").is_some(), "run scripts/setup");
        let dir = tempfile::tempdir().unwrap();
        let app = dir.path().join("app");
        std::fs::create_dir_all(app.join("frontend")).unwrap();
        let write = |rel: &str, text: &str| std::fs::write(app.join(rel), text).unwrap();
        write("app.py", "import flask\n");
        write("requirements.txt", "flask==2.2.2\nwerkzeug==2.2.2\n");
        write("frontend/index.js", "console.log(1);\n");
        write(
            "frontend/package.json",
            r#"{"name":"f","version":"1.0.0","dependencies":{"lodash":"4.17.15"}}"#,
        );
        write(
            "frontend/package-lock.json",
            r#"{"name":"f","version":"1.0.0","lockfileVersion":3,"requires":true,"packages":{"":{"name":"f","version":"1.0.0","dependencies":{"lodash":"4.17.15"}},"node_modules/lodash":{"version":"4.17.15","resolved":"https://registry.npmjs.org/lodash/-/lodash-4.17.15.tgz","integrity":"sha512-8xOcRHvCjnocdS5cpwXQXVzmmh5e5+saE2QGoeQmbKmRS6J3VQppPOIt0MpmE+O2jZ3bbIvX0ZsaFWGibNjJXg=="}}}"#,
        );
        let tools: Vec<&'static Tool> = ["pip-audit", "npm-audit"]
            .iter()
            .map(|n| tool(n).unwrap())
            .collect();
        let scratch = tempfile::tempdir().unwrap();
        let out = run_all(
            &app,
            &tools,
            Duration::from_secs(120),
            scratch.path(),
            scratch.path(),
        )
        .await
        .unwrap();
        for (run, package, manifest) in [
            (&out.runs[0], "flask", "requirements.txt"),
            (&out.runs[1], "lodash", "frontend/package-lock.json"),
        ] {
            match run.status {
                ToolStatus::Success => assert!(
                    out.findings.iter().any(|f| f.tool == run.tool
                        && f.location.path == manifest
                        && f.message.contains(package)),
                    "{run:?} {:?}",
                    out.findings
                ),
                ToolStatus::NotAvailable => {
                    let why = run.detail.as_deref().unwrap();
                    assert!(
                        why.contains("could not be") && why.contains("did not run"),
                        "{why}"
                    );
                    assert!(out.findings.iter().all(|f| f.tool != run.tool));
                }
                other => panic!("{}: {other:?}: {:?}", run.tool, run.detail),
            }
        }
        // Unpinned requirements are not audited, and the run says why.
        write("requirements.txt", "flask>=2\n");
        let scratch = tempfile::tempdir().unwrap();
        let out = run_all(
            &app,
            &tools[..1],
            Duration::from_secs(120),
            scratch.path(),
            scratch.path(),
        )
        .await
        .unwrap();
        let run = &out.runs[0];
        assert_eq!(run.status, ToolStatus::Skipped, "{run:?}");
        assert!(run
            .detail
            .as_deref()
            .unwrap()
            .contains("not every requirement is pinned"));
    }

    #[tokio::test]
    async fn a_missing_tool_is_not_available_with_its_install_command() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.py"), "x = 1\n").unwrap();
        let fake = Tool {
            name: "ruff",
            program: "definitely-not-installed-ruff",
            language: Language::Python,
            install: "pip install ruff==0.17.5",
        };
        let leaked: &'static Tool = Box::leak(Box::new(fake));
        let out = run_all(
            dir.path(),
            &[leaked],
            Duration::from_secs(5),
            dir.path(),
            dir.path(),
        )
        .await
        .unwrap();
        assert_eq!(out.runs[0].status, ToolStatus::NotAvailable);
        assert!(out.runs[0]
            .detail
            .as_ref()
            .unwrap()
            .contains("pip install ruff"));
        assert!(out.findings.is_empty());
    }
}
