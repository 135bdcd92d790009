//! Route discovery: the HTTP routes an app really serves, read from its source code
//! (Flask, FastAPI and Express route registrations) or from an OpenAPI document it
//! serves. When an app's template is unknown, the dynamic analyzer and the load test use
//! these routes instead of guessing endpoints.
//!
//! What a route carries besides method and path is a guess from what the handler's code
//! reads: path parameters with a type (`Int` or `Str`), the JSON/form fields and query
//! parameters it reads, and whether it looks guarded by authentication.
//!
//! Limits, on purpose:
//! - It scans text; it does not run or fully parse the code. A path must be a plain
//!   string literal: f-strings, variables and concatenations are skipped with a note, and
//!   routes made in loops or by plugins are not seen.
//! - Prefixes (Blueprint `url_prefix`, `register_blueprint`, `APIRouter(prefix=)`,
//!   `include_router`, `app.use('/api', router)`) are followed by variable name and
//!   import, best effort; a router that cannot be found keeps its own prefix only.
//! - Field names and `auth_hint` are hints: a missing field or a false `auth_hint`
//!   proves nothing.
//! - Client code is not a route: for Express only calls on an Express app or router
//!   (`const app = express()`, `express.Router()`, or `app`/`router` in server code)
//!   count, so `fetch('/api/x')` and `axios.get('/api/x')` never do; `.jsx`/`.tsx` files
//!   are not read.
//! - Bounded and confined: at most [`MAX_FILES_READ`] files of at most
//!   [`MAX_FILE_BYTES`] each, at most [`MAX_ROUTES`] routes; symbolic links are never
//!   followed; dependency, virtualenv, build and hidden folders are not entered. Nothing
//!   is executed and no network is used.

use serde::Serialize;
use serde_json::Value;
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The most source files one discovery reads.
pub const MAX_FILES_READ: usize = 2_000;
/// Larger source files are skipped: a model writes kilobytes; more is bundled or generated.
pub const MAX_FILE_BYTES: u64 = 512 * 1024;
/// The most routes one discovery (or one OpenAPI document) yields.
pub const MAX_ROUTES: usize = 1_000;

/// All files read together stay under this, so a hostile folder cannot exhaust memory.
const MAX_TOTAL_BYTES: u64 = 64 * 1024 * 1024;
/// Folder entries looked at before the walk gives up (a typo can point at a whole disk).
const MAX_ENTRIES_VISITED: usize = 100_000;
const MAX_DEPTH: usize = 32;
const MAX_NOTES: usize = 100;
/// Route registrations collected before prefixes are applied (each can fan out).
const MAX_PENDING_ROUTES: usize = 20 * MAX_ROUTES;
/// How far a closing bracket is looked for before the text is taken as malformed.
const MAX_BRACKET_SCAN: usize = 200_000;
/// The same for a short argument such as `['name']` or `.get('name', 1)`.
const MAX_SHORT_SCAN: usize = 4_096;
/// How much of one handler's code is read for fields and auth checks.
const MAX_HANDLER_BYTES: usize = 16 * 1024;
/// Route registrations read per file (a file with more is generated, not written).
const MAX_ROUTES_PER_FILE: usize = MAX_ROUTES;
/// How many lines one Python statement (a decorator, a signature) may span.
const MAX_STATEMENT_LINES: usize = 200;
/// How many lines at the start of a handler body are read for an auth check.
const AUTH_CHECK_LINES: usize = 15;
/// How many statements of a Python handler body are read for field names.
const MAX_BODY_STATEMENTS: usize = 400;
/// How deep prefixes are followed through mounts (a router in a router in an app ...).
const MAX_MOUNT_DEPTH: usize = 8;
/// How many prefixes one router may end up under (mounted at several places).
const MAX_PREFIXES_PER_OWNER: usize = 16;
/// How deep pydantic model inheritance is followed.
const MAX_MODEL_DEPTH: usize = 8;
/// Field names kept per route, and the longest one.
const MAX_FIELDS: usize = 200;
const MAX_FIELD_LEN: usize = 100;
/// How many `$ref` hops one OpenAPI reference may take.
const MAX_REF_HOPS: usize = 4;

/// Folders that hold dependencies, virtualenvs, caches or build output, not the app's code.
const SKIPPED_DIRS: &[&str] = &[
    "node_modules",
    "venv",
    ".venv",
    "__pycache__",
    "site-packages",
    "dist",
    "build",
];
const SCRIPT_EXTENSIONS: &[&str] = &["js", "mjs", "cjs", "ts"];
const HTTP_METHODS: &[&str] = &["get", "post", "put", "patch", "delete"];
/// Python decorators that register a route: `@app.route`, `@router.get`, ...
const PY_ROUTE_DECORATORS: &[&str] = &[
    "route",
    "api_route",
    "get",
    "post",
    "put",
    "patch",
    "delete",
];
/// Parts of a decorator, middleware or dependency name that say it guards the route.
const AUTH_WORDS: &[&str] = &[
    "auth",
    "login",
    "logged_in",
    "loggedin",
    "signed_in",
    "jwt",
    "token",
    "oauth",
    "protect",
    "guard",
    "admin",
    "permission",
    "role",
    "verify",
    "credential",
    "api_key",
    "apikey",
    "current_user",
];
/// Annotations FastAPI reads from the query string when not in the path.
const SCALAR_TYPES: &[&str] = &[
    "int",
    "str",
    "float",
    "bool",
    "bytes",
    "Optional",
    "Union",
    "None",
    "List",
    "list",
    "Set",
    "set",
    "Tuple",
    "tuple",
    "Sequence",
    "Literal",
    "Annotated",
    "date",
    "datetime",
    "time",
    "UUID",
    "uuid",
    "Decimal",
    "EmailStr",
    "HttpUrl",
    "typing",
];

/// The type a path parameter most likely has: enough to build a request that the route's
/// converter accepts (`/items/1` rather than `/items/x` for `<int:item_id>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamKind {
    Int,
    Str,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Route {
    /// `GET`, `POST`, ... (uppercase).
    pub method: String,
    /// With `{name}` parameters whatever the framework's syntax: Flask `<int:item_id>`,
    /// FastAPI `{item_id}` and Express `:item_id` all become `{item_id}`.
    pub path: String,
    /// The path parameters in order, with a type guess: `Int` from `<int:..>`, a FastAPI
    /// `item_id: int`, an Express `:id(\\d+)`, or a name ending in `id`; `Str` otherwise.
    pub params: Vec<(String, ParamKind)>,
    /// Relative to the app folder, `/`-separated (`openapi` for [`from_openapi`]).
    pub file: String,
    /// 1-based line of the decorator or call (0 for [`from_openapi`]).
    pub line: u32,
    /// `flask`, `fastapi`, `express` or `openapi`.
    pub framework: &'static str,
    /// The handler looks guarded: an auth decorator, middleware or dependency, or a check
    /// of the session, the `Authorization` header or the current user early in its body.
    pub auth_hint: bool,
    /// JSON or form fields the handler reads (for FastAPI: the fields of its pydantic
    /// body model, when the model is defined in the scanned files).
    pub body_fields: Vec<String>,
    /// Query parameters the handler reads (FastAPI: plain parameters not in the path).
    pub query_fields: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Discovered {
    /// Sorted by (path, method); one per (method, path).
    pub routes: Vec<Route>,
    pub files_read: usize,
    /// What was skipped or could not be followed, e.g. `skipped node_modules`,
    /// `file too large: static/app.js`.
    pub notes: Vec<String>,
}

/// The routes registered in the source files under `app_dir` (see the module doc for
/// what is read and what is not).
pub fn discover(app_dir: &Path) -> Discovered {
    let mut notes = Notes::default();
    let sources = read_sources(app_dir, &mut notes);
    let files_read = sources.len();
    let project = Project::new(sources);
    let mut collected = Collected::default();
    for idx in 0..project.files.len() {
        match project.files[idx].lang {
            Lang::Python => project.scan_python(idx, &mut collected, &mut notes),
            Lang::Script => project.scan_script(idx, &mut collected, &mut notes),
        }
    }
    if collected.dropped > 0 {
        notes.add(format!(
            "too many route registrations: {} were not looked at",
            collected.dropped
        ));
    }
    let routes = project.finish(&collected, &mut notes);
    Discovered {
        routes,
        files_read,
        notes: notes.into_list(),
    }
}

/// The routes an OpenAPI 3 or Swagger 2 document (JSON) declares: `paths` and their
/// operations, path parameters typed from their schema (`type: integer` is `Int`),
/// query parameters, and the properties of a JSON (or form) request body, following
/// local `$ref`s a few hops. A Swagger `basePath` or a server URL's path prefixes every
/// path. `file` is `openapi`, `line` 0, `framework` `openapi`.
pub fn from_openapi(doc: &Value) -> Vec<Route> {
    let Some(paths) = doc.get("paths").and_then(Value::as_object) else {
        return Vec::new();
    };
    let base = openapi_base_path(doc);
    let default_auth = doc.get("security").is_some_and(security_requires_auth);
    let mut routes = Vec::new();
    let mut seen = HashSet::new();
    'paths: for (raw_path, item) in paths {
        let item = resolve_ref(doc, item);
        let shared_params = item.get("parameters").and_then(Value::as_array);
        for method in ["get", "post", "put", "patch", "delete", "head", "options"] {
            let Some(operation) = item.get(method).filter(|o| o.is_object()) else {
                continue;
            };
            if routes.len() >= MAX_ROUTES {
                break 'paths;
            }
            let mut kinds = HashMap::new();
            let mut query_fields = Vec::new();
            let mut body_fields = Vec::new();
            let own_params = operation.get("parameters").and_then(Value::as_array);
            for param in shared_params.into_iter().chain(own_params).flatten() {
                let param = resolve_ref(doc, param);
                let Some(name) = param.get("name").and_then(Value::as_str) else {
                    continue;
                };
                match param.get("in").and_then(Value::as_str) {
                    Some("path") => {
                        kinds.insert(name.to_string(), openapi_param_kind(doc, param, name));
                    }
                    Some("query") => push_unique(&mut query_fields, name),
                    // Swagger 2 form fields and body schemas.
                    Some("formData") => push_unique(&mut body_fields, name),
                    Some("body") => {
                        for field in schema_property_names(doc, param.get("schema"), 0) {
                            push_unique(&mut body_fields, &field);
                        }
                    }
                    _ => {}
                }
            }
            if let Some(request_body) = operation.get("requestBody") {
                let request_body = resolve_ref(doc, request_body);
                if let Some(schema) = request_body_schema(request_body) {
                    for field in schema_property_names(doc, Some(schema), 0) {
                        push_unique(&mut body_fields, &field);
                    }
                }
            }
            // An operation's own `security` replaces the document's (`[]` opts out).
            let auth_hint = match operation.get("security") {
                Some(security) => security_requires_auth(security),
                None => default_auth,
            };
            let joined = join_paths(&base, raw_path);
            let (path, params) = normalize_path(&joined, PathStyle::OpenApi, &kinds);
            let method = method.to_ascii_uppercase();
            if !seen.insert((method.clone(), path.clone())) {
                continue;
            }
            routes.push(Route {
                method,
                path,
                params,
                file: "openapi".to_string(),
                line: 0,
                framework: "openapi",
                auth_hint,
                body_fields,
                query_fields,
            });
        }
    }
    sort_routes(&mut routes);
    routes
}

// ---------------------------------------------------------------------------------------
// Reading the app folder
// ---------------------------------------------------------------------------------------

/// Notes for the caller, each once, at most [`MAX_NOTES`] (then a count of the rest).
#[derive(Default)]
struct Notes {
    list: Vec<String>,
    left_out: usize,
}

impl Notes {
    fn add(&mut self, note: String) {
        if self.list.contains(&note) {
            return;
        }
        if self.list.len() >= MAX_NOTES {
            self.left_out += 1;
        } else {
            self.list.push(note);
        }
    }

    fn into_list(mut self) -> Vec<String> {
        if self.left_out > 0 {
            self.list
                .push(format!("{} more notes were left out", self.left_out));
        }
        self.list
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lang {
    Python,
    /// JavaScript or TypeScript (server code is Express).
    Script,
}

/// A source file as scanned: comments blanked out (same offsets, so line numbers hold).
struct SourceFile {
    /// Relative to the app folder, `/`-separated.
    rel: String,
    /// `rel` without its extension: what an import of this file names.
    module_path: String,
    /// The folder of `rel` (`""` at the top).
    dir: String,
    lang: Lang,
    text: String,
    line_starts: Vec<usize>,
    /// Python only: the logical statements (a decorator over three lines is one).
    statements: Vec<Stmt>,
}

impl SourceFile {
    fn new(rel: String, lang: Lang, raw: &str) -> SourceFile {
        let text = match lang {
            Lang::Python => blank_python_comments(raw),
            Lang::Script => blank_script_comments(raw),
        };
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        let statements = match lang {
            Lang::Python => python_statements(&text),
            Lang::Script => Vec::new(),
        };
        let module_path = match rel.rsplit_once('.') {
            Some((stem, _)) if !stem.is_empty() && !stem.ends_with('/') => stem.to_string(),
            _ => rel.clone(),
        };
        let dir = rel.rsplit_once('/').map_or("", |(d, _)| d).to_string();
        SourceFile {
            rel,
            module_path,
            dir,
            lang,
            text,
            line_starts,
            statements,
        }
    }

    /// The 1-based line holding byte `offset`.
    fn line_of(&self, offset: usize) -> u32 {
        self.line_starts.partition_point(|&start| start <= offset) as u32
    }

    fn stmt_text(&self, stmt: &Stmt) -> &str {
        self.text[stmt.start..stmt.end].trim()
    }
}

/// The source files under `root` (sorted by relative path), read within the bounds.
fn read_sources(root: &Path, notes: &mut Notes) -> Vec<SourceFile> {
    let candidates = list_source_files(root, notes);
    if candidates.len() > MAX_FILES_READ {
        notes.add(format!(
            "{} source files found; only the first {MAX_FILES_READ} were read",
            candidates.len()
        ));
    }
    let mut files = Vec::new();
    let mut total_bytes = 0u64;
    for (path, rel, lang) in candidates {
        if files.len() >= MAX_FILES_READ {
            break;
        }
        match read_bounded(&path) {
            Ok(Some(text)) => {
                total_bytes += text.len() as u64;
                if total_bytes > MAX_TOTAL_BYTES {
                    notes.add(format!(
                        "stopped reading at {rel}: the files read reached {MAX_TOTAL_BYTES} bytes"
                    ));
                    break;
                }
                files.push(SourceFile::new(rel, lang, &text));
            }
            Ok(None) => notes.add(format!("file too large: {rel}")),
            Err(e) => notes.add(format!("cannot read {rel}: {e}")),
        }
    }
    files
}

/// Python and script files under `root`, never through a symbolic link, outside
/// dependency, virtualenv, build and hidden folders.
fn list_source_files(root: &Path, notes: &mut Notes) -> Vec<(PathBuf, String, Lang)> {
    let mut found = Vec::new();
    let mut visited = 0usize;
    let mut stack = vec![(root.to_path_buf(), String::new(), 0usize)];
    'walk: while let Some((dir, rel_dir, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            notes.add(format!("cannot list the folder `{rel_dir}`"));
            continue;
        };
        let mut entries: Vec<_> = entries.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            visited += 1;
            if visited > MAX_ENTRIES_VISITED {
                notes.add(format!(
                    "stopped after looking at {MAX_ENTRIES_VISITED} folder entries"
                ));
                break 'walk;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = if rel_dir.is_empty() {
                name.clone()
            } else {
                format!("{rel_dir}/{name}")
            };
            // `DirEntry::file_type` does not follow links: a link is neither entered nor read.
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_symlink() {
                notes.add(format!("skipped symbolic link: {rel}"));
            } else if kind.is_dir() {
                if name.starts_with('.') {
                    continue; // VCS data, editor and tool caches, hidden virtualenvs
                }
                if SKIPPED_DIRS.contains(&name.as_str()) {
                    notes.add(format!("skipped {rel}"));
                } else if std::fs::symlink_metadata(entry.path().join("pyvenv.cfg")).is_ok() {
                    notes.add(format!("skipped {rel} (a virtualenv)"));
                } else if depth + 1 > MAX_DEPTH {
                    notes.add(format!(
                        "skipped {rel}: nested deeper than {MAX_DEPTH} folders"
                    ));
                } else {
                    stack.push((entry.path(), rel, depth + 1));
                }
            } else if kind.is_file() && !name.starts_with('.') {
                if let Some(lang) = source_lang(&name) {
                    found.push((entry.path(), rel, lang));
                }
            }
        }
    }
    found.sort_by(|a, b| a.1.cmp(&b.1));
    found
}

/// Which scanner reads a file, by its name; None for files no route is registered in
/// (client `.jsx`/`.tsx`, type declarations, minified bundles, everything else).
fn source_lang(name: &str) -> Option<Lang> {
    let (_, ext) = name.rsplit_once('.')?;
    if ext == "py" {
        return Some(Lang::Python);
    }
    let is_script =
        SCRIPT_EXTENSIONS.contains(&ext) && !name.ends_with(".d.ts") && !name.ends_with(".min.js");
    is_script.then_some(Lang::Script)
}

/// The file's text; Ok(None) when it is larger than [`MAX_FILE_BYTES`]. Opened without
/// following a link, in case the file was swapped for one after the listing.
fn read_bounded(path: &Path) -> std::io::Result<Option<String>> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Ok(None);
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Ok(None);
    }
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

// ---------------------------------------------------------------------------------------
// Text scanning helpers (no regex crate: small hand scanners)
// ---------------------------------------------------------------------------------------

fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$'
}

fn is_identifier(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty() && !bytes[0].is_ascii_digit() && bytes.iter().all(|&b| is_ident_byte(b))
}

fn is_dotted_identifier(s: &str) -> bool {
    s.split('.').all(is_identifier)
}

fn leading_identifier(s: &str) -> &str {
    let len = s.bytes().take_while(|&b| is_ident_byte(b)).count();
    &s[..len]
}

fn trailing_identifier(s: &str) -> &str {
    let len = s.bytes().rev().take_while(|&b| is_ident_byte(b)).count();
    &s[s.len() - len..]
}

/// `s` without a trailing whole word `word` (and the space before it).
fn strip_word_suffix<'a>(s: &'a str, word: &str) -> Option<&'a str> {
    let rest = s.strip_suffix(word)?;
    if rest.bytes().last().is_some_and(is_ident_byte) {
        return None;
    }
    Some(rest.trim_end())
}

/// The start of the line holding `pos`.
fn line_start(text: &str, pos: usize) -> usize {
    text[..pos].rfind('\n').map_or(0, |i| i + 1)
}

/// At most the first `max` bytes of `text`, cut at a character boundary.
fn prefix_within(text: &str, max: usize) -> &str {
    let mut end = max.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The first `n` non-blank lines of `text`.
fn first_lines(text: &str, n: usize) -> String {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .take(n)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Where `word` occurs as a whole name: not inside a longer identifier and not as the
/// attribute of something else (`db.session` is not `session`).
fn word_positions<'a>(text: &'a str, word: &'a str) -> impl Iterator<Item = usize> + 'a {
    let bytes = text.as_bytes();
    text.match_indices(word).map(|(i, _)| i).filter(move |&i| {
        let before_ok = i == 0 || !(is_ident_byte(bytes[i - 1]) || bytes[i - 1] == b'.');
        let end = i + word.len();
        before_ok && (end >= bytes.len() || !is_ident_byte(bytes[end]))
    })
}

/// The index just past the string literal opening at `start` (or the end of its line
/// when unterminated; template literals may span lines).
fn skip_string(bytes: &[u8], start: usize, multiline: bool) -> usize {
    let quote = bytes[start];
    let mut i = start + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b if b == quote => return i + 1,
            b'\n' if !multiline => return i,
            _ => i += 1,
        }
    }
    bytes.len()
}

/// Blanks a range with spaces, keeping newlines so offsets and line numbers hold.
fn blank(range: &mut [u8]) {
    for b in range {
        if *b != b'\n' {
            *b = b' ';
        }
    }
}

/// Python source with `#` comments and triple-quoted strings (docstrings) blanked, so a
/// commented-out route or an example in a docstring is not taken for code.
fn blank_python_comments(src: &str) -> String {
    let bytes = src.as_bytes();
    let mut out = bytes.to_vec();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'#' => {
                let start = i;
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                blank(&mut out[start..i]);
            }
            q @ (b'\'' | b'"') => {
                if bytes[i..].starts_with(&[q, q, q]) {
                    let start = i;
                    i += 3;
                    while i < bytes.len() && !bytes[i..].starts_with(&[q, q, q]) {
                        i += if bytes[i] == b'\\' { 2 } else { 1 };
                    }
                    let end = (i + 3).min(bytes.len());
                    blank(&mut out[start..end]);
                    i = end;
                } else {
                    i = skip_string(bytes, i, false);
                }
            }
            _ => i += 1,
        }
    }
    // Whole characters were blanked, so this is still UTF-8.
    String::from_utf8(out).unwrap_or_else(|_| src.to_string())
}

/// JavaScript/TypeScript source with `//` and `/* */` comments blanked.
fn blank_script_comments(src: &str) -> String {
    let bytes = src.as_bytes();
    let mut out = bytes.to_vec();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                let start = i;
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                blank(&mut out[start..i]);
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                let start = i;
                i += 2;
                while i < bytes.len() && !bytes[i..].starts_with(b"*/") {
                    i += 1;
                }
                let end = (i + 2).min(bytes.len());
                blank(&mut out[start..end]);
                i = end;
            }
            q @ (b'\'' | b'"' | b'`') => i = skip_string(bytes, i, q == b'`'),
            // An escape outside a string belongs to a regex literal: `/\/\//` is no comment.
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
    String::from_utf8(out).unwrap_or_else(|_| src.to_string())
}

/// The index of the bracket closing the one at `open` (any of `([{`), skipping string
/// literals; None when it is not closed within [`MAX_BRACKET_SCAN`] bytes.
fn matching_close(text: &str, open: usize) -> Option<usize> {
    close_within(text, open, MAX_BRACKET_SCAN)
}

/// [`matching_close`] for a short argument (`['name']`, `.get('name', 1)`): looking
/// further on unbalanced text would make every lookup scan the rest of the file.
fn short_close(text: &str, open: usize) -> Option<usize> {
    close_within(text, open, MAX_SHORT_SCAN)
}

fn close_within(text: &str, open: usize, max_scan: usize) -> Option<usize> {
    let bytes = text.as_bytes();
    let limit = open.saturating_add(max_scan).min(bytes.len());
    let mut depth = 0usize;
    let mut i = open;
    while i < limit {
        match bytes[i] {
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(i);
                }
            }
            q @ (b'\'' | b'"' | b'`') => {
                i = skip_string(bytes, i, q == b'`');
                continue;
            }
            b'\\' => i += 1,
            _ => {}
        }
        i += 1;
    }
    None
}

/// Every bracket pair of a text, found in one pass. A script file is looked up at many
/// calls; scanning from each call would be quadratic on unbalanced input.
struct Brackets {
    /// (open, close), sorted by open.
    pairs: Vec<(usize, usize)>,
}

impl Brackets {
    fn new(text: &str) -> Brackets {
        let bytes = text.as_bytes();
        let mut open_stack = Vec::new();
        let mut pairs = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'(' | b'[' | b'{' => open_stack.push(i),
                b')' | b']' | b'}' => {
                    if let Some(open) = open_stack.pop() {
                        pairs.push((open, i));
                    }
                }
                q @ (b'\'' | b'"' | b'`') => {
                    i = skip_string(bytes, i, q == b'`');
                    continue;
                }
                b'\\' => i += 1,
                _ => {}
            }
            i += 1;
        }
        pairs.sort_unstable();
        Brackets { pairs }
    }

    /// The bracket closing the one at `open` (None inside a string or when unclosed).
    fn close_of(&self, open: usize) -> Option<usize> {
        let k = self.pairs.binary_search_by_key(&open, |p| p.0).ok()?;
        Some(self.pairs[k].1)
    }
}

/// The first index of byte `target` outside brackets and string literals.
fn find_top_level(s: &str, target: u8) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b if b == target && depth == 0 => return Some(i),
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            q @ (b'\'' | b'"' | b'`') => {
                i = skip_string(bytes, i, q == b'`');
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// An argument list split at its top-level commas, each part trimmed, empty ones dropped.
fn split_top_level(inner: &str) -> Vec<&str> {
    let bytes = inner.as_bytes();
    let mut parts = Vec::new();
    let (mut depth, mut start, mut i) = (0usize, 0usize, 0usize);
    while i < bytes.len() {
        match bytes[i] {
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            q @ (b'\'' | b'"' | b'`') => {
                i = skip_string(bytes, i, q == b'`');
                continue;
            }
            b',' if depth == 0 => {
                parts.push(inner[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    parts.push(inner[start..].trim());
    parts.retain(|p| !p.is_empty());
    parts
}

/// The text of a plain string literal: `'x'`, `"x"`, Python `r'x'`, a JS template
/// without `${`. None for anything else (f-strings, variables, concatenations), which
/// cannot be known without running the code.
fn string_literal(expr: &str) -> Option<String> {
    let expr = expr.trim();
    let prefix_len = expr.bytes().take_while(u8::is_ascii_alphabetic).count();
    if prefix_len > 2 || !expr[..prefix_len].chars().all(|c| "rRbBuU".contains(c)) {
        return None;
    }
    let body = &expr[prefix_len..];
    let quote = *body.as_bytes().first()?;
    if !matches!(quote, b'\'' | b'"' | b'`') {
        return None;
    }
    let end = skip_string(body.as_bytes(), 0, quote == b'`');
    if end < 2 || end != body.len() || body.as_bytes()[end - 1] != quote {
        return None;
    }
    let content = &body[1..end - 1];
    if quote == b'`' && content.contains("${") {
        return None;
    }
    Some(content.to_string())
}

/// `key = value` in an argument list: (key, value).
fn split_keyword(arg: &str) -> Option<(&str, &str)> {
    let eq = arg.find('=')?;
    let (key, rest) = (arg[..eq].trim(), &arg[eq + 1..]);
    if !is_identifier(key) || rest.starts_with(['=', '>']) {
        return None;
    }
    Some((key, rest.trim()))
}

fn keyword_value<'a>(args: &[&'a str], key: &str) -> Option<&'a str> {
    args.iter()
        .find_map(|a| split_keyword(a).filter(|(k, _)| *k == key).map(|(_, v)| v))
}

fn positional<'a>(args: &[&'a str]) -> Vec<&'a str> {
    args.iter()
        .copied()
        .filter(|a| split_keyword(a).is_none() && !a.starts_with('*'))
        .collect()
}

/// `['GET', 'POST']`, `("POST",)`, `{'GET'}` or a lone `'GET'`: the strings.
fn string_list(value: &str) -> Option<Vec<String>> {
    let value = value.trim();
    if let Some(single) = string_literal(value) {
        return Some(vec![single]);
    }
    let inner = value
        .strip_prefix(['[', '(', '{'])?
        .strip_suffix([']', ')', '}'])?;
    split_top_level(inner)
        .into_iter()
        .map(string_literal)
        .collect()
}

/// Identifiers in `s` outside string literals, in order.
fn identifiers_in(s: &str) -> Vec<&str> {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if matches!(b, b'\'' | b'"' | b'`') {
            i = skip_string(bytes, i, b == b'`');
        } else if is_ident_byte(b) {
            let start = i;
            while i < bytes.len() && is_ident_byte(bytes[i]) {
                i += 1;
            }
            if !bytes[start].is_ascii_digit() {
                out.push(&s[start..i]);
            }
        } else {
            i += 1;
        }
    }
    out
}

/// `name = value` (Python, with an optional annotation) or `const name = value` (JS):
/// (name, value). None for comparisons, augmented assignments and destructuring.
fn simple_assignment(line: &str) -> Option<(&str, &str)> {
    let mut line = line.trim();
    for keyword in ["export ", "const ", "let ", "var "] {
        line = line.strip_prefix(keyword).unwrap_or(line).trim_start();
    }
    let eq = find_top_level(line, b'=')?;
    let (lhs, rhs) = (&line[..eq], &line[eq + 1..]);
    let operator_before = [
        '!', '<', '>', '+', '-', '*', '/', '%', '|', '&', ':', '^', '@',
    ];
    if rhs.starts_with(['=', '>']) || lhs.ends_with(operator_before) {
        return None;
    }
    let name = lhs.split(':').next()?.trim();
    is_identifier(name).then(|| (name, rhs.trim()))
}

fn is_assignment(after: &str) -> bool {
    after.starts_with('=') && !after.starts_with("==") && !after.starts_with("=>")
}

fn push_unique(list: &mut Vec<String>, item: &str) {
    if !item.is_empty()
        && item.len() <= MAX_FIELD_LEN
        && list.len() < MAX_FIELDS
        && !list.iter().any(|x| x == item)
    {
        list.push(item.to_string());
    }
}

fn looks_like_auth_guard(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    AUTH_WORDS.iter().any(|w| lower.contains(w))
}

/// `Depends(get_current_user)`, `Depends(verify_token)` or any `Security(...)`.
/// (`Depends(get_db)` and `Depends(get_session)` are not about who calls.)
fn has_auth_dependency(text: &str) -> bool {
    if text.contains("Security(") {
        return true;
    }
    text.match_indices("Depends(").any(|(pos, marker)| {
        let open = pos + marker.len() - 1;
        let close = short_close(text, open).unwrap_or(text.len());
        let inner = &text[open + 1..close.max(open + 1)];
        looks_like_auth_guard(inner) || inner.to_ascii_lowercase().contains("user")
    })
}

// ---------------------------------------------------------------------------------------
// Paths
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PathStyle {
    /// Flask `<conv:name>` and FastAPI `{name}` / `{name:path}`.
    Python,
    /// `:name`, `:name?`, `:name(\\d+)`.
    Express,
    /// `{name}`.
    OpenApi,
}

/// A prefix and a path joined with one `/` between them.
fn join_paths(prefix: &str, path: &str) -> String {
    if prefix.is_empty() {
        return path.to_string();
    }
    if path.is_empty() {
        return prefix.to_string();
    }
    format!(
        "{}/{}",
        prefix.trim_end_matches('/'),
        path.trim_start_matches('/')
    )
}

/// A path with `{name}` parameters whatever its syntax, and the parameters with their
/// kinds (`declared` gives kinds known from elsewhere, e.g. a FastAPI signature).
fn normalize_path(
    raw: &str,
    style: PathStyle,
    declared: &HashMap<String, ParamKind>,
) -> (String, Vec<(String, ParamKind)>) {
    let mut path = String::with_capacity(raw.len());
    let mut params: Vec<(String, ParamKind)> = Vec::new();
    let mut rest = raw;
    while let Some(c) = rest.chars().next() {
        let placeholder = match (style, c) {
            (PathStyle::Python, '<') => flask_placeholder(rest, declared),
            (PathStyle::Python | PathStyle::OpenApi, '{') => brace_placeholder(rest, declared),
            (PathStyle::Express, ':') => express_placeholder(rest),
            _ => None,
        };
        match placeholder {
            Some((name, kind, consumed)) => {
                path.push('{');
                path.push_str(&name);
                path.push('}');
                if !params.iter().any(|(n, _)| *n == name) {
                    params.push((name, kind));
                }
                rest = &rest[consumed..];
            }
            None => {
                path.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
    }
    (tidy_path(&path, style), params)
}

/// `<int:item_id>` at the start of `rest`: (name, kind, bytes consumed).
fn flask_placeholder(
    rest: &str,
    declared: &HashMap<String, ParamKind>,
) -> Option<(String, ParamKind, usize)> {
    let end = rest.find('>')?;
    let inner = &rest[1..end];
    let (converter, name) = match inner.rsplit_once(':') {
        // `<int(signed=True):x>`: the converter is the name before its arguments
        Some((conv, name)) => (
            Some(conv.split('(').next().unwrap_or(conv).trim()),
            name.trim(),
        ),
        None => (None, inner.trim()),
    };
    if !is_identifier(name) {
        return None;
    }
    let kind = match converter {
        Some("int") => ParamKind::Int,
        Some(_) => ParamKind::Str,
        None => declared
            .get(name)
            .copied()
            .unwrap_or_else(|| kind_from_name(name)),
    };
    Some((name.to_string(), kind, end + 1))
}

/// `{item_id}` or `{file_path:path}` at the start of `rest`.
fn brace_placeholder(
    rest: &str,
    declared: &HashMap<String, ParamKind>,
) -> Option<(String, ParamKind, usize)> {
    let end = rest.find('}')?;
    let name = rest[1..end].split(':').next()?.trim();
    if !is_identifier(name) {
        return None;
    }
    let kind = declared
        .get(name)
        .copied()
        .unwrap_or_else(|| kind_from_name(name));
    Some((name.to_string(), kind, end + 1))
}

/// `:id`, `:id?`, `:id(\\d+)` at the start of `rest`.
fn express_placeholder(rest: &str) -> Option<(String, ParamKind, usize)> {
    let name = leading_identifier(&rest[1..]);
    if !is_identifier(name) {
        return None;
    }
    let mut consumed = 1 + name.len();
    let mut kind = kind_from_name(name);
    if rest[consumed..].starts_with('(') {
        // A regex constraint: digits only means an integer.
        if let Some(close) = short_close(&rest[consumed..], 0) {
            let pattern = &rest[consumed + 1..consumed + close];
            kind = if pattern.contains("\\d") {
                ParamKind::Int
            } else {
                ParamKind::Str
            };
            consumed += close + 1;
        }
    }
    if rest[consumed..].starts_with(['?', '*', '+']) {
        consumed += 1;
    }
    Some((name.to_string(), kind, consumed))
}

/// A parameter without a declared type: ids are numbers more often than not.
fn kind_from_name(name: &str) -> ParamKind {
    let lower = name.to_ascii_lowercase();
    if lower.ends_with("id") && !lower.ends_with("uuid") && !lower.ends_with("guid") {
        ParamKind::Int
    } else {
        ParamKind::Str
    }
}

/// One leading `/`, no `//`; Express also ignores a trailing `/`.
fn tidy_path(path: &str, style: PathStyle) -> String {
    let mut out = String::with_capacity(path.len() + 1);
    if !path.starts_with('/') {
        out.push('/');
    }
    for c in path.chars() {
        if c == '/' && out.ends_with('/') {
            continue;
        }
        out.push(c);
    }
    if style == PathStyle::Express {
        while out.len() > 1 && out.ends_with('/') {
            out.pop();
        }
    }
    out
}

fn path_param_names(raw: &str, style: PathStyle) -> Vec<String> {
    normalize_path(raw, style, &HashMap::new())
        .1
        .into_iter()
        .map(|(name, _)| name)
        .collect()
}

fn sort_routes(routes: &mut [Route]) {
    routes.sort_by(|a, b| (&a.path, &a.method).cmp(&(&b.path, &b.method)));
}

// ---------------------------------------------------------------------------------------
// What the scanners collect, and how prefixes are resolved
// ---------------------------------------------------------------------------------------

/// A variable routes are registered on: (file index, variable name).
type OwnerId = (usize, String);

/// A variable that is a Flask/FastAPI app, a Blueprint, an APIRouter, an Express app or
/// router.
#[derive(Debug, Clone)]
struct OwnerDecl {
    framework: &'static str,
    is_app: bool,
    /// `Blueprint(url_prefix=)`, `APIRouter(prefix=)`, a restx `Namespace` path.
    own_prefix: String,
    /// Every route on it is guarded (`APIRouter(dependencies=[Depends(get_current_user)])`).
    auth: bool,
}

/// What a local name imports: a module (as a path without extension) and maybe a
/// variable in it.
#[derive(Debug, Clone)]
struct ImportTarget {
    module: String,
    /// Resolved from a relative import; otherwise the module may sit below the app folder
    /// (`app.routers.items` is `backend/app/routers/items.py`).
    exact: bool,
    var: Option<String>,
}

#[derive(Default)]
struct FileFacts {
    owners: HashMap<String, OwnerDecl>,
    imports: HashMap<String, Vec<ImportTarget>>,
    /// Python: `api = Api(app)` / `ns = api.namespace(...)`: (child, parent expression).
    declared_mounts: Vec<(String, String)>,
    uses_fastapi: bool,
    uses_flask: bool,
    /// Script: the file imports express or has `(req, res)` handlers.
    server_like: bool,
}

/// What a handler's code reveals.
#[derive(Debug, Clone, Default)]
struct HandlerFacts {
    auth: bool,
    body_fields: Vec<String>,
    query_fields: Vec<String>,
}

#[derive(Debug)]
struct ModelClass {
    bases: Vec<String>,
    fields: Vec<String>,
}

/// A route as registered, before its owner's prefixes are known.
struct PendingRoute {
    methods: Vec<String>,
    raw_path: String,
    style: PathStyle,
    declared_kinds: HashMap<String, ParamKind>,
    file: usize,
    line: u32,
    framework: &'static str,
    owner: OwnerId,
    facts: HandlerFacts,
    /// A Flask handler serving GET and POST: its body reads belong to the writes.
    body_only_for_writes: bool,
}

/// `app.register_blueprint(bp, url_prefix='/api')`, `app.include_router(router,
/// prefix='/v1')`, `app.use('/api', router)`.
struct Mount {
    parent: OwnerId,
    children: Vec<OwnerId>,
    prefix: String,
    /// Flask's `register_blueprint(url_prefix=)` replaces the blueprint's own prefix;
    /// FastAPI and Express add to it.
    replaces_own_prefix: bool,
    auth: bool,
}

#[derive(Default)]
struct Collected {
    routes: Vec<PendingRoute>,
    mounts: Vec<Mount>,
    /// Owners whose every route is guarded (`@bp.before_request` checking the session).
    guarded_owners: HashSet<OwnerId>,
    dropped: usize,
}

impl Collected {
    fn push(&mut self, route: PendingRoute) {
        if self.routes.len() < MAX_PENDING_ROUTES {
            self.routes.push(route);
        } else {
            self.dropped += 1;
        }
    }
}

/// All files read, with what pass one learnt from each (variables, imports, models,
/// named handlers), so pass two can follow names across files.
struct Project {
    files: Vec<SourceFile>,
    facts: Vec<FileFacts>,
    models: HashMap<String, ModelClass>,
    /// Express handlers defined by name (`exports.createItem = async (req, res) => ..`).
    script_handlers: HashMap<String, Vec<(usize, HandlerFacts)>>,
    /// Python `def` and `class` statements by name: (file, statement) in file order.
    python_defs: HashMap<String, Vec<(usize, usize)>>,
    python_classes: HashMap<String, Vec<(usize, usize)>>,
    uses_flask: bool,
    uses_fastapi: bool,
    /// [`Project::resolve_owner_ref`] answers: every route on an imported app asks again.
    owner_cache: RefCell<HashMap<(usize, String), Vec<OwnerId>>>,
}

impl Project {
    fn new(files: Vec<SourceFile>) -> Project {
        let mut facts = Vec::with_capacity(files.len());
        let mut models = HashMap::new();
        let mut script_handlers: HashMap<String, Vec<(usize, HandlerFacts)>> = HashMap::new();
        let mut python_defs: HashMap<String, Vec<(usize, usize)>> = HashMap::new();
        let mut python_classes: HashMap<String, Vec<(usize, usize)>> = HashMap::new();
        for (idx, file) in files.iter().enumerate() {
            match file.lang {
                Lang::Python => {
                    facts.push(python_file_facts(file));
                    collect_python_models(file, &mut models);
                    for (k, stmt) in file.statements.iter().enumerate() {
                        let text = file.stmt_text(stmt);
                        if let Some(def) = parse_python_def(text) {
                            python_defs
                                .entry(def.name.to_string())
                                .or_default()
                                .push((idx, k));
                        } else if let Some((name, _)) = parse_python_class(text) {
                            python_classes
                                .entry(name.to_string())
                                .or_default()
                                .push((idx, k));
                        }
                    }
                }
                Lang::Script => {
                    let brackets = Brackets::new(&file.text);
                    facts.push(script_file_facts(file, &brackets));
                    for (name, handler) in script_named_handlers(&file.text, &brackets) {
                        script_handlers
                            .entry(name)
                            .or_default()
                            .push((idx, handler));
                    }
                }
            }
        }
        let uses_flask = facts.iter().any(|f| f.uses_flask);
        let uses_fastapi = facts.iter().any(|f| f.uses_fastapi);
        Project {
            files,
            facts,
            models,
            script_handlers,
            python_defs,
            python_classes,
            uses_flask,
            uses_fastapi,
            owner_cache: RefCell::new(HashMap::new()),
        }
    }

    fn decl(&self, owner: &OwnerId) -> Option<&OwnerDecl> {
        self.facts.get(owner.0)?.owners.get(&owner.1)
    }

    /// The app or router variables an expression in file `idx` names: a local variable,
    /// an imported one (`from routes.items import items_bp`, `const r =
    /// require('./routes/items')`), a module's variable (`items.router`), or, failing
    /// those, the only variable of that name in the files of the same language.
    fn resolve_owner_ref(&self, idx: usize, expr: &str) -> Vec<OwnerId> {
        let key = (idx, expr.to_string());
        if let Some(known) = self.owner_cache.borrow().get(&key) {
            return known.clone();
        }
        let found = self.resolve_owner_ref_uncached(idx, expr);
        self.owner_cache.borrow_mut().insert(key, found.clone());
        found
    }

    fn resolve_owner_ref_uncached(&self, idx: usize, expr: &str) -> Vec<OwnerId> {
        let segments: Vec<&str> = expr.split('.').map(str::trim).collect();
        if segments.iter().any(|s| !is_identifier(s)) {
            return Vec::new();
        }
        let facts = &self.facts[idx];
        let Some((last, init)) = segments.split_last() else {
            return Vec::new();
        };
        if init.is_empty() {
            if facts.owners.contains_key(*last) {
                return vec![(idx, last.to_string())];
            }
            for target in facts.imports.get(*last).into_iter().flatten() {
                let found =
                    self.owners_in_module(&target.module, target.exact, target.var.as_deref());
                if !found.is_empty() {
                    return found;
                }
            }
            return self.unique_owner_named(idx, last);
        }
        // `items.router`, `routes.items.bp`: a variable of an imported module.
        let middle = init[1..].join("/");
        let mut modules = Vec::new();
        for target in facts.imports.get(init[0]).into_iter().flatten() {
            let base = match &target.var {
                Some(var) => join_module(&target.module, var),
                None => target.module.clone(),
            };
            modules.push((join_module(&base, &middle), target.exact));
        }
        modules.push((init.join("/"), false));
        for (module, exact) in modules {
            let found = self.owners_in_module(&module, exact, Some(last));
            if !found.is_empty() {
                return found;
            }
        }
        Vec::new()
    }

    /// The variable `var` of the files `module` names, or (no variable: a default
    /// export) every router those files declare.
    fn owners_in_module(&self, module: &str, exact: bool, var: Option<&str>) -> Vec<OwnerId> {
        let mut found = Vec::new();
        for (i, file) in self.files.iter().enumerate() {
            if !module_matches(&file.module_path, module, exact) {
                continue;
            }
            let owners = &self.facts[i].owners;
            match var {
                Some(var) if owners.contains_key(var) => found.push((i, var.to_string())),
                Some(_) => {}
                None => {
                    let mut routers: Vec<&String> = owners
                        .iter()
                        .filter(|(_, d)| !d.is_app)
                        .map(|(name, _)| name)
                        .collect();
                    routers.sort();
                    found.extend(routers.into_iter().map(|name| (i, name.clone())));
                }
            }
        }
        found
    }

    fn unique_owner_named(&self, idx: usize, name: &str) -> Vec<OwnerId> {
        let lang = self.files[idx].lang;
        let declaring: Vec<usize> = (0..self.files.len())
            .filter(|&i| self.files[i].lang == lang && self.facts[i].owners.contains_key(name))
            .collect();
        match declaring.as_slice() {
            [only] => vec![(*only, name.to_string())],
            _ => Vec::new(),
        }
    }

    /// The owner an expression names, or the expression itself as a variable of the file
    /// (an app passed in as a parameter, say: no prefix is known for it).
    fn canonical_owner(&self, idx: usize, expr: &str) -> OwnerId {
        self.resolve_owner_ref(idx, expr)
            .into_iter()
            .next()
            .unwrap_or_else(|| (idx, expr.to_string()))
    }

    fn is_model(&self, name: &str, depth: usize) -> bool {
        let Some(model) = self.models.get(name) else {
            return false;
        };
        depth < MAX_MODEL_DEPTH
            && model.bases.iter().any(|base| {
                base == "BaseModel" || base == "SQLModel" || self.is_model(base, depth + 1)
            })
    }

    /// A pydantic model's fields, inherited ones first.
    fn model_fields(&self, name: &str, depth: usize) -> Vec<String> {
        let mut fields = Vec::new();
        let Some(model) = self.models.get(name) else {
            return fields;
        };
        if depth < MAX_MODEL_DEPTH {
            for base in model.bases.iter().filter(|b| self.is_model(b, 0)) {
                for field in self.model_fields(base, depth + 1) {
                    push_unique(&mut fields, &field);
                }
            }
        }
        for field in &model.fields {
            push_unique(&mut fields, field);
        }
        fields
    }

    /// The routes with their prefixes applied: one per (method, path), the first kept, at
    /// most [`MAX_ROUTES`], sorted.
    fn finish(&self, collected: &Collected, notes: &mut Notes) -> Vec<Route> {
        let mut mounts_by_child: HashMap<&OwnerId, Vec<&Mount>> = HashMap::new();
        for mount in &collected.mounts {
            for child in &mount.children {
                mounts_by_child.entry(child).or_default().push(mount);
            }
        }
        let mut prefixes = PrefixResolver {
            project: self,
            mounts_by_child,
            guarded: &collected.guarded_owners,
            memo: HashMap::new(),
            visiting: HashSet::new(),
        };
        let mut seen = HashSet::new();
        let mut routes = Vec::new();
        let mut left_out = 0usize;
        for pending in &collected.routes {
            for (prefix, inherited_auth) in prefixes.of(&pending.owner, 0) {
                let joined = join_paths(&prefix, &pending.raw_path);
                let (path, params) =
                    normalize_path(&joined, pending.style, &pending.declared_kinds);
                for method in &pending.methods {
                    if !seen.insert((method.clone(), path.clone())) {
                        continue;
                    }
                    if routes.len() >= MAX_ROUTES {
                        left_out += 1;
                        continue;
                    }
                    let is_write = matches!(method.as_str(), "POST" | "PUT" | "PATCH");
                    let body_fields = if pending.body_only_for_writes && !is_write {
                        Vec::new()
                    } else {
                        pending.facts.body_fields.clone()
                    };
                    routes.push(Route {
                        method: method.clone(),
                        path: path.clone(),
                        params: params.clone(),
                        file: self.files[pending.file].rel.clone(),
                        line: pending.line,
                        framework: pending.framework,
                        auth_hint: pending.facts.auth || inherited_auth,
                        body_fields,
                        query_fields: pending.facts.query_fields.clone(),
                    });
                }
            }
        }
        if left_out > 0 {
            notes.add(format!(
                "route limit reached: kept {MAX_ROUTES} routes, left out {left_out} more"
            ));
        }
        sort_routes(&mut routes);
        routes
    }
}

/// Whether a file (by its module path) is the module an import names.
fn module_matches(file_module: &str, module: &str, exact: bool) -> bool {
    if module.is_empty() {
        return false;
    }
    let names = |candidate: &str| {
        candidate == module
            || (!exact
                && candidate
                    .strip_suffix(module)
                    .is_some_and(|head| head.ends_with('/')))
    };
    // A package is also its `__init__.py`, a script folder its `index.js`.
    let package = file_module
        .strip_suffix("/__init__")
        .or_else(|| file_module.strip_suffix("/index"));
    names(file_module) || package.is_some_and(names)
}

fn join_module(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_string(),
        (_, true) => a.to_string(),
        _ => format!("{a}/{b}"),
    }
}

/// The prefixes every route of an owner gets, through the mounts above it (memoized:
/// each owner is resolved once; a cycle stops at the owner's own prefix).
struct PrefixResolver<'a> {
    project: &'a Project,
    mounts_by_child: HashMap<&'a OwnerId, Vec<&'a Mount>>,
    guarded: &'a HashSet<OwnerId>,
    memo: HashMap<OwnerId, Vec<(String, bool)>>,
    visiting: HashSet<OwnerId>,
}

impl PrefixResolver<'_> {
    /// (prefix, guarded) pairs: one per place the owner is mounted.
    fn of(&mut self, owner: &OwnerId, depth: usize) -> Vec<(String, bool)> {
        if let Some(done) = self.memo.get(owner) {
            return done.clone();
        }
        let decl = self.project.decl(owner);
        let own_prefix = decl.map_or(String::new(), |d| d.own_prefix.clone());
        let own_auth = decl.is_some_and(|d| d.auth) || self.guarded.contains(owner);
        let mounts = self.mounts_by_child.get(owner).cloned().unwrap_or_default();
        if mounts.is_empty() || depth >= MAX_MOUNT_DEPTH || !self.visiting.insert(owner.clone()) {
            return vec![(own_prefix, own_auth)];
        }
        let mut out: Vec<(String, bool)> = Vec::new();
        for mount in mounts.iter().take(MAX_PREFIXES_PER_OWNER) {
            let own = if mount.replaces_own_prefix {
                ""
            } else {
                own_prefix.as_str()
            };
            for (parent_prefix, parent_auth) in self.of(&mount.parent, depth + 1) {
                let full = join_paths(&join_paths(&parent_prefix, &mount.prefix), own);
                let entry = (full, parent_auth || mount.auth || own_auth);
                if !out.contains(&entry) && out.len() < MAX_PREFIXES_PER_OWNER {
                    out.push(entry);
                }
            }
        }
        self.visiting.remove(owner);
        self.memo.insert(owner.clone(), out.clone());
        out
    }
}

// ---------------------------------------------------------------------------------------
// Python: Flask and FastAPI
// ---------------------------------------------------------------------------------------

/// A logical Python statement: a line, or lines joined while brackets are open.
#[derive(Debug, Clone, Copy)]
struct Stmt {
    start: usize,
    end: usize,
    indent: usize,
}

fn python_statements(text: &str) -> Vec<Stmt> {
    let bytes = text.as_bytes();
    let mut statements = Vec::new();
    let mut line = 0;
    while line < bytes.len() {
        let mut i = line;
        while i < bytes.len() && matches!(bytes[i], b' ' | b'\t' | b'\r') {
            i += 1;
        }
        if i >= bytes.len() {
            break;
        }
        if bytes[i] == b'\n' {
            line = i + 1;
            continue;
        }
        let (start, indent) = (i, i - line);
        let mut depth = 0usize;
        let mut lines = 1;
        while i < bytes.len() {
            match bytes[i] {
                b'(' | b'[' | b'{' => depth += 1,
                b')' | b']' | b'}' => depth = depth.saturating_sub(1),
                b'\'' | b'"' => {
                    i = skip_string(bytes, i, false);
                    continue;
                }
                // An explicit line continuation.
                b'\\' if bytes.get(i + 1) == Some(&b'\n') => {
                    i += 2;
                    lines += 1;
                    continue;
                }
                b'\n' => {
                    if depth == 0 || lines >= MAX_STATEMENT_LINES {
                        break;
                    }
                    lines += 1;
                }
                _ => {}
            }
            i += 1;
        }
        statements.push(Stmt {
            start,
            end: i.min(bytes.len()),
            indent,
        });
        line = i + 1;
    }
    statements
}

/// The statements of the block a `def` or `class` at `k` opens.
fn block_range(statements: &[Stmt], k: usize) -> std::ops::Range<usize> {
    let indent = statements[k].indent;
    let end = statements[k + 1..]
        .iter()
        .position(|s| s.indent <= indent)
        .map_or(statements.len(), |p| k + 1 + p);
    k + 1..end
}

struct PyDef<'a> {
    name: &'a str,
    params: Vec<&'a str>,
    /// `def health(): return 'ok'`: the body on the header's line.
    inline_body: &'a str,
}

fn parse_python_def(stmt: &str) -> Option<PyDef<'_>> {
    let rest = stmt.strip_prefix("async ").map_or(stmt, str::trim_start);
    let rest = rest.strip_prefix("def ")?;
    let open = rest.find('(')?;
    let name = rest[..open].trim();
    if !is_identifier(name) {
        return None;
    }
    let close = matching_close(rest, open)?;
    let after = &rest[close + 1..];
    let inline_body = after
        .find(':')
        .map_or("", |colon| after[colon + 1..].trim());
    Some(PyDef {
        name,
        params: split_top_level(&rest[open + 1..close]),
        inline_body,
    })
}

/// `class Name(Base1, Base2):`: (name, bases).
fn parse_python_class(stmt: &str) -> Option<(&str, Vec<&str>)> {
    let rest = stmt.strip_prefix("class ")?;
    let name_len = rest.bytes().take_while(|&b| is_ident_byte(b)).count();
    let name = &rest[..name_len];
    if !is_identifier(name) {
        return None;
    }
    let after = rest[name_len..].trim_start();
    let bases = match after.strip_prefix('(') {
        Some(_) => {
            let open = rest.len() - after.len();
            let close = matching_close(rest, open)?;
            split_top_level(&rest[open + 1..close])
        }
        None => Vec::new(),
    };
    Some((name, bases))
}

/// A parameter of a signature: (name, annotation).
fn parse_python_param(param: &str) -> Option<(&str, Option<&str>)> {
    let param = param.trim();
    if param.starts_with('*') || param == "/" {
        return None;
    }
    let head = find_top_level(param, b'=').map_or(param, |eq| &param[..eq]);
    let (name, annotation) = match head.split_once(':') {
        Some((name, annotation)) => (name.trim(), Some(annotation.trim())),
        None => (head.trim(), None),
    };
    is_identifier(name).then_some((name, annotation))
}

/// A call expression `receiver.attr(args)`.
struct Call<'a> {
    receiver: &'a str,
    attr: &'a str,
    args: Vec<&'a str>,
}

fn parse_call(expr: &str) -> Option<Call<'_>> {
    let open = expr.find('(')?;
    let (receiver, attr) = expr[..open].trim().rsplit_once('.')?;
    if !is_dotted_identifier(receiver) || !is_identifier(attr) {
        return None;
    }
    let close = matching_close(expr, open)?;
    Some(Call {
        receiver,
        attr,
        args: split_top_level(&expr[open + 1..close]),
    })
}

fn python_file_facts(file: &SourceFile) -> FileFacts {
    let text = &file.text;
    let mut facts = FileFacts {
        uses_fastapi: text.contains("from fastapi") || text.contains("import fastapi"),
        uses_flask: text.contains("from flask") || text.contains("import flask"),
        ..FileFacts::default()
    };
    for stmt in &file.statements {
        let stmt = file.stmt_text(stmt);
        if stmt.starts_with("from ") || stmt.starts_with("import ") {
            for (local, target) in parse_python_import(stmt, &file.dir) {
                facts.imports.entry(local).or_default().push(target);
            }
        } else if let Some((var, decl, mounted_on)) = python_owner_declaration(stmt) {
            if let Some(parent) = mounted_on {
                facts.declared_mounts.push((var.clone(), parent));
            }
            facts.owners.entry(var).or_insert(decl);
        }
    }
    facts
}

/// `from a.b import c, d as e`, `from . import routes`, `import a.b as m`: the local
/// names bound, each with the modules (or module variables) it may be.
fn parse_python_import(stmt: &str, file_dir: &str) -> Vec<(String, ImportTarget)> {
    let mut out = Vec::new();
    if let Some(rest) = stmt.strip_prefix("from ") {
        let Some((module, names)) = rest.split_once(" import ") else {
            return out;
        };
        let (module, exact) = python_module_path(module.trim(), file_dir);
        let names = names.trim().trim_start_matches('(').trim_end_matches(')');
        for item in names.split(',').map(str::trim) {
            let (name, local) = match item.split_once(" as ") {
                Some((name, alias)) => (name.trim(), alias.trim()),
                None => (item, item),
            };
            if !is_identifier(name) || !is_identifier(local) {
                continue;
            }
            // `name` is a variable of the module, or a submodule of it.
            out.push((
                local.to_string(),
                ImportTarget {
                    module: module.clone(),
                    exact,
                    var: Some(name.to_string()),
                },
            ));
            out.push((
                local.to_string(),
                ImportTarget {
                    module: join_module(&module, name),
                    exact,
                    var: None,
                },
            ));
        }
    } else if let Some(rest) = stmt.strip_prefix("import ") {
        for item in rest.split(',').map(str::trim) {
            let (module, local) = match item.split_once(" as ") {
                Some((dotted, alias)) => (dotted.trim().replace('.', "/"), alias.trim()),
                // `import a.b` binds `a`.
                None => {
                    let head = item.split('.').next().unwrap_or(item);
                    (head.to_string(), head)
                }
            };
            if is_identifier(local) {
                out.push((
                    local.to_string(),
                    ImportTarget {
                        module,
                        exact: false,
                        var: None,
                    },
                ));
            }
        }
    }
    out
}

/// A module name as a path: `app.routers` → (`app/routers`, not exact); `..schemas`
/// in `app/routers/items.py` → (`app/schemas`, exact).
fn python_module_path(module: &str, file_dir: &str) -> (String, bool) {
    let dots = module.bytes().take_while(|&b| b == b'.').count();
    let rest = module[dots..].replace('.', "/");
    if dots == 0 {
        return (rest, false);
    }
    let mut base: Vec<&str> = file_dir.split('/').filter(|s| !s.is_empty()).collect();
    for _ in 1..dots {
        base.pop();
    }
    (join_module(&base.join("/"), &rest), true)
}

/// `app = Flask(__name__)`, `bp = Blueprint('items', __name__, url_prefix='/api')`,
/// `router = APIRouter(prefix='/items')`, `api = Api(app)`, `ns = api.namespace('x')`:
/// (variable, declaration, what it is mounted on).
fn python_owner_declaration(stmt: &str) -> Option<(String, OwnerDecl, Option<String>)> {
    let (var, rhs) = simple_assignment(stmt)?;
    let open = rhs.find('(')?;
    let callee = rhs[..open].trim();
    if !is_dotted_identifier(callee) {
        return None;
    }
    let close = matching_close(rhs, open)?;
    let args = split_top_level(&rhs[open + 1..close]);
    let (receiver, kind) = match callee.rsplit_once('.') {
        Some((receiver, kind)) => (Some(receiver), kind),
        None => (None, callee),
    };
    let literal_kwarg = |key: &str| keyword_value(&args, key).and_then(string_literal);
    let dependencies_guard =
        has_auth_dependency(keyword_value(&args, "dependencies").unwrap_or(""));
    let owner = |framework, is_app, own_prefix: Option<String>, auth| OwnerDecl {
        framework,
        is_app,
        own_prefix: own_prefix.unwrap_or_default(),
        auth,
    };
    let first_positional = positional(&args).first().copied();
    let (decl, mounted_on) = match kind {
        "Flask" => (owner("flask", true, None, false), None),
        "Blueprint" => (
            owner("flask", false, literal_kwarg("url_prefix"), false),
            None,
        ),
        "FastAPI" => (owner("fastapi", true, None, dependencies_guard), None),
        "APIRouter" => (
            owner(
                "fastapi",
                false,
                literal_kwarg("prefix"),
                dependencies_guard,
            ),
            None,
        ),
        // Flask-RESTful / flask-restx `Api(app)` or `Api(bp, prefix='/v1')`.
        "Api" => (
            owner("flask", false, literal_kwarg("prefix"), false),
            first_positional
                .filter(|a| is_dotted_identifier(a))
                .map(str::to_string),
        ),
        // A flask-restx namespace's path defaults to `/<name>`.
        "Namespace" | "namespace" => {
            let prefix = literal_kwarg("path").or_else(|| {
                first_positional
                    .and_then(string_literal)
                    .map(|name| format!("/{name}"))
            });
            let parent = (kind == "namespace")
                .then(|| receiver.map(str::to_string))
                .flatten();
            (owner("flask", false, prefix, false), parent)
        }
        _ => return None,
    };
    Some((var.to_string(), decl, mounted_on))
}

/// Pydantic models (`class Item(BaseModel): name: str`), and classes that may inherit
/// from one, with their annotated fields.
fn collect_python_models(file: &SourceFile, models: &mut HashMap<String, ModelClass>) {
    let statements = &file.statements;
    for (k, stmt) in statements.iter().enumerate() {
        let Some((name, bases)) = parse_python_class(file.stmt_text(stmt)) else {
            continue;
        };
        let bases: Vec<String> = bases
            .iter()
            .filter(|b| !b.contains('='))
            .map(|b| leading_identifier(b.rsplit('.').next().unwrap_or(b)).to_string())
            .filter(|b| !b.is_empty())
            .collect();
        if bases.is_empty() {
            continue;
        }
        let block = &statements[block_range(statements, k)];
        let Some(field_indent) = block.first().map(|s| s.indent) else {
            continue;
        };
        let fields = block
            .iter()
            .filter(|s| s.indent == field_indent)
            .filter_map(|s| annotated_field(file.stmt_text(s)))
            .collect();
        models
            .entry(name.to_string())
            .or_insert(ModelClass { bases, fields });
    }
}

/// `name: str = ...` in a class body: `name`.
fn annotated_field(stmt: &str) -> Option<String> {
    let colon = stmt.find(':')?;
    let name = stmt[..colon].trim();
    let not_fields = ["model_config", "else", "try", "finally"];
    if !is_identifier(name) || name.starts_with('_') || not_fields.contains(&name) {
        return None;
    }
    if stmt[colon + 1..].trim_start().starts_with("ClassVar") {
        return None;
    }
    Some(name.to_string())
}

enum Decorator<'a> {
    Route {
        receiver: &'a str,
        attr: &'a str,
        raw_path: String,
        methods: Vec<String>,
        args: Vec<&'a str>,
    },
    /// A route whose path is an f-string or a variable.
    DynamicPath,
    Other,
}

/// `@app.route('/x', methods=['GET', 'POST'])`, `@router.get("/x")`, ...
fn parse_route_decorator(expr: &str) -> Decorator<'_> {
    let Some(call) = parse_call(expr) else {
        return Decorator::Other;
    };
    if !PY_ROUTE_DECORATORS.contains(&call.attr) {
        return Decorator::Other;
    }
    let path_arg = positional(&call.args)
        .first()
        .copied()
        .or_else(|| keyword_value(&call.args, "rule"))
        .or_else(|| keyword_value(&call.args, "path"));
    let Some(path_arg) = path_arg else {
        return Decorator::Other;
    };
    let Some(raw_path) = string_literal(path_arg) else {
        return Decorator::DynamicPath;
    };
    // `@cache.get('key')` is no route: a route's path is absolute (or `""` under a prefix).
    if !(raw_path.is_empty() || raw_path.starts_with('/')) {
        return Decorator::Other;
    }
    let methods = if matches!(call.attr, "route" | "api_route") {
        keyword_value(&call.args, "methods")
            .and_then(string_list)
            .map(|list| upper_methods(&list))
            .filter(|list| !list.is_empty())
            .unwrap_or_else(|| vec!["GET".to_string()])
    } else {
        vec![call.attr.to_ascii_uppercase()]
    };
    Decorator::Route {
        receiver: call.receiver,
        attr: call.attr,
        raw_path,
        methods,
        args: call.args,
    }
}

fn upper_methods(list: &[String]) -> Vec<String> {
    let mut methods = Vec::new();
    for m in list {
        let m = m.trim().to_ascii_uppercase();
        if !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase()) {
            push_unique(&mut methods, &m);
        }
    }
    methods
}

fn decorator_is_auth_guard(expr: &str) -> bool {
    let name = expr.split('(').next().unwrap_or(expr);
    looks_like_auth_guard(name)
}

/// What a Flask/FastAPI handler body reads, and whether it is guarded.
fn python_handler_facts(body: &str, decorators: &[&str]) -> HandlerFacts {
    let body = prefix_within(body, MAX_HANDLER_BYTES);
    let auth = decorators.iter().any(|d| decorator_is_auth_guard(d))
        || python_body_checks_auth(&first_lines(body, AUTH_CHECK_LINES));
    let mut body_sources: Vec<&str> = vec![
        "request.json",
        "request.get_json",
        "request.form",
        "request.values",
    ];
    let mut query_sources: Vec<&str> = vec!["request.args", "request.query_params"];
    // `data = request.get_json()`: what is read from `data` is read from the body.
    for line in body.lines() {
        let Some((name, rhs)) = simple_assignment(line) else {
            continue;
        };
        match python_request_source(rhs) {
            Some(true) => body_sources.push(name),
            Some(false) => query_sources.push(name),
            None => {}
        }
    }
    HandlerFacts {
        auth,
        body_fields: keys_read(body, &body_sources, Lang::Python),
        query_fields: keys_read(body, &query_sources, Lang::Python),
    }
}

/// Whether `rhs` is the request's body (Some(true)) or its query string (Some(false)):
/// `request.get_json()`, `request.json or {}`, `await request.json()`, `request.args`.
fn python_request_source(rhs: &str) -> Option<bool> {
    let rhs = rhs.trim();
    let rhs = rhs.strip_prefix("await ").map_or(rhs, str::trim_start);
    let sources = [
        ("request.get_json", true),
        ("request.json", true),
        ("request.form", true),
        ("request.values", true),
        ("request.args", false),
        ("request.query_params", false),
    ];
    for (source, is_body) in sources {
        let Some(mut rest) = rhs.strip_prefix(source) else {
            continue;
        };
        if rest.bytes().next().is_some_and(is_ident_byte) {
            continue;
        }
        for call in ["", ".to_dict", ".copy"] {
            if let Some(after) = rest.strip_prefix(call).filter(|a| a.starts_with('(')) {
                match short_close(after, 0) {
                    Some(close) => rest = &after[close + 1..],
                    None => return None,
                }
            }
        }
        let rest = rest.trim();
        if rest.is_empty() || rest.starts_with("or ") || rest == "or{}" {
            return Some(is_body);
        }
    }
    None
}

fn python_body_checks_auth(head: &str) -> bool {
    let lower = head.to_ascii_lowercase();
    (lower.contains("request.headers") && lower.contains("authorization"))
        || lower.contains("request.authorization")
        || word_positions(head, "current_user").next().is_some()
        || word_positions(head, "g.user").next().is_some()
        || head.contains("get_jwt_identity(")
        || head.contains("verify_jwt_in_request(")
        || python_session_check(head)
}

/// Reading the session (`session['user_id']`, `session.get(..)`, `'user_id' in
/// session`); writing it (`session['user_id'] = user.id`) is logging in, not a check.
fn python_session_check(text: &str) -> bool {
    word_positions(text, "session").any(|pos| {
        let rest = &text[pos + "session".len()..];
        if rest.starts_with('[') {
            return short_close(rest, 0)
                .is_some_and(|close| !is_assignment(rest[close + 1..].trim_start()));
        }
        rest.starts_with(".get(") || strip_word_suffix(text[..pos].trim_end(), "in").is_some()
    })
}

/// The keys read from any of `sources` in `text`, in the order they appear.
fn keys_read(text: &str, sources: &[&str], lang: Lang) -> Vec<String> {
    let mut found: Vec<(usize, String)> = Vec::new();
    for source in sources {
        for start in word_positions(text, source) {
            let mut rest = &text[start + source.len()..];
            // A call such as `request.get_json(force=True)`: its result is what is read.
            if rest.starts_with('(') {
                let Some(close) = short_close(rest, 0) else {
                    continue;
                };
                rest = &rest[close + 1..];
            }
            if lang == Lang::Script {
                rest = rest.strip_prefix(['?', '!']).unwrap_or(rest);
            }
            if let Some(key) = key_after(rest, lang) {
                found.push((start, key));
            }
            let before = &text[..start];
            match lang {
                Lang::Python => {
                    if let Some(key) = membership_key(before) {
                        found.push((start, key));
                    }
                }
                Lang::Script => {
                    found.extend(destructured_keys(before).into_iter().map(|k| (start, k)));
                }
            }
        }
    }
    found.sort_by_key(|(pos, _)| *pos);
    let mut keys = Vec::new();
    for (_, key) in found {
        push_unique(&mut keys, &key);
    }
    keys
}

/// `['k']`, `.get('k', ...)`, `.getlist('k')`, and in scripts `.k`.
fn key_after(rest: &str, lang: Lang) -> Option<String> {
    if rest.starts_with('[') {
        let close = short_close(rest, 0)?;
        return string_literal(&rest[1..close]);
    }
    for accessor in [".get(", ".getlist("] {
        if rest.starts_with(accessor) {
            let open = accessor.len() - 1;
            let close = short_close(rest, open)?;
            return split_top_level(&rest[open + 1..close])
                .first()
                .and_then(|a| string_literal(a));
        }
    }
    if lang == Lang::Script {
        let prop = rest.strip_prefix('.')?;
        let name = leading_identifier(prop);
        if is_identifier(name) && !prop[name.len()..].starts_with('(') {
            return Some(name.to_string());
        }
    }
    None
}

/// `'k' in data` / `'k' not in data` just before `data`: `k`.
fn membership_key(before: &str) -> Option<String> {
    let s = strip_word_suffix(before.trim_end(), "in")?;
    let s = strip_word_suffix(s, "not").unwrap_or(s);
    let quote = s.chars().last().filter(|c| matches!(c, '\'' | '"'))?;
    let inner = &s[..s.len() - 1];
    let open = inner.rfind(quote)?;
    Some(inner[open + 1..].to_string())
}

/// `const { a, b: c, d = 1 } = ` just before a source: `a`, `b`, `d`.
fn destructured_keys(before: &str) -> Vec<String> {
    let s = before.trim_end();
    let Some(s) = s.strip_suffix('=') else {
        return Vec::new();
    };
    if s.ends_with(['=', '!', '<', '>']) {
        return Vec::new();
    }
    let s = s.trim_end();
    if !s.ends_with('}') {
        return Vec::new();
    }
    let bytes = s.as_bytes();
    let close = s.len() - 1;
    let mut depth = 0usize;
    let mut open = None;
    for i in (close.saturating_sub(4_000)..=close).rev() {
        match bytes[i] {
            b'}' => depth += 1,
            b'{' => {
                depth -= 1;
                if depth == 0 {
                    open = Some(i);
                    break;
                }
            }
            _ => {}
        }
    }
    let Some(open) = open else {
        return Vec::new();
    };
    split_top_level(&s[open + 1..close])
        .into_iter()
        .filter(|entry| !entry.starts_with("..."))
        .filter_map(|entry| {
            let key = entry.split([':', '=']).next()?.trim();
            if is_identifier(key) {
                Some(key.to_string())
            } else {
                string_literal(key)
            }
        })
        .collect()
}

/// A FastAPI signature read: path parameter kinds, body and query fields, auth.
#[derive(Default)]
struct SignatureFacts {
    kinds: HashMap<String, ParamKind>,
    body_fields: Vec<String>,
    query_fields: Vec<String>,
    auth: bool,
}

fn kind_from_annotation(annotation: &str, name: &str) -> ParamKind {
    const WRAPPERS: &[&str] = &["Annotated", "Optional", "Union", "None", "Path", "typing"];
    match identifiers_in(annotation)
        .into_iter()
        .find(|t| !WRAPPERS.contains(t))
    {
        Some("int") => ParamKind::Int,
        Some(_) => ParamKind::Str,
        None => kind_from_name(name),
    }
}

impl Project {
    fn scan_python(&self, idx: usize, out: &mut Collected, notes: &mut Notes) {
        let file = &self.files[idx];
        let statements = &file.statements;
        let routes_before = out.routes.len();
        let mut k = 0;
        while k < statements.len() {
            if out.routes.len() - routes_before >= MAX_ROUTES_PER_FILE {
                notes.add(too_many_routes_in(&file.rel));
                break;
            }
            if file.stmt_text(&statements[k]).starts_with('@') {
                let indent = statements[k].indent;
                let mut end = k;
                while end < statements.len()
                    && statements[end].indent == indent
                    && file.stmt_text(&statements[end]).starts_with('@')
                {
                    end += 1;
                }
                let target =
                    (end < statements.len() && statements[end].indent == indent).then_some(end);
                self.python_decorated(idx, k..end, target, out, notes);
                k = end;
                continue;
            }
            self.python_call_statement(idx, k, out, notes);
            k += 1;
        }
        for (child, parent) in &self.facts[idx].declared_mounts {
            out.mounts.push(Mount {
                parent: self.canonical_owner(idx, parent),
                children: vec![(idx, child.clone())],
                prefix: String::new(),
                replaces_own_prefix: false,
                auth: false,
            });
        }
    }

    /// `@app.get` means Flask 2 or FastAPI: the variable's declaration decides, then the
    /// file's imports, then the path syntax, then the project.
    fn python_framework(
        &self,
        idx: usize,
        receiver: &str,
        attr: &str,
        raw_path: &str,
    ) -> &'static str {
        if attr == "route" {
            return "flask";
        }
        if attr == "api_route" {
            return "fastapi";
        }
        if let Some(decl) = self.decl(&self.canonical_owner(idx, receiver)) {
            return decl.framework;
        }
        let facts = &self.facts[idx];
        match (facts.uses_fastapi, facts.uses_flask) {
            (true, false) => return "fastapi",
            (false, true) => return "flask",
            _ => {}
        }
        if raw_path.contains('<') {
            return "flask";
        }
        if raw_path.contains('{') {
            return "fastapi";
        }
        if self.uses_flask && !self.uses_fastapi {
            "flask"
        } else {
            "fastapi"
        }
    }

    fn python_body(&self, file: &SourceFile, def_k: usize, inline_body: &str) -> String {
        let range = block_range(&file.statements, def_k);
        let block = &file.statements[range];
        let block = &block[..block.len().min(MAX_BODY_STATEMENTS)];
        let mut body = inline_body.to_string();
        if let (Some(first), Some(last)) = (block.first(), block.last()) {
            body.push('\n');
            body.push_str(prefix_within(
                &file.text[first.start..last.end],
                MAX_HANDLER_BYTES,
            ));
        }
        body
    }

    /// A decorated `def` or `class`: its routes, or an owner-wide guard
    /// (`@bp.before_request` checking the session).
    fn python_decorated(
        &self,
        idx: usize,
        decorators: std::ops::Range<usize>,
        target: Option<usize>,
        out: &mut Collected,
        notes: &mut Notes,
    ) {
        let file = &self.files[idx];
        let Some(target) = target else {
            return;
        };
        let target_text = file.stmt_text(&file.statements[target]);
        let mut routes = Vec::new();
        let mut others = Vec::new();
        for k in decorators {
            let stmt = &file.statements[k];
            let expr = &file.stmt_text(stmt)[1..];
            let line = file.line_of(stmt.start);
            match parse_route_decorator(expr) {
                Decorator::Route {
                    receiver,
                    attr,
                    raw_path,
                    methods,
                    args,
                } => routes.push((receiver, attr, raw_path, methods, args, line)),
                Decorator::DynamicPath => notes.add(format!(
                    "{}:{line}: skipped a route whose path is not a plain string (f-string or variable)",
                    file.rel
                )),
                Decorator::Other => others.push(expr),
            }
        }
        if routes.is_empty() {
            self.python_before_request(idx, target, target_text, &others, out);
            return;
        }
        if let Some(def) = parse_python_def(target_text) {
            let body = self.python_body(file, target, def.inline_body);
            let base_facts = python_handler_facts(&body, &others);
            for (receiver, attr, raw_path, methods, args, line) in routes {
                let framework = self.python_framework(idx, receiver, attr, &raw_path);
                let mut facts = base_facts.clone();
                let mut kinds = HashMap::new();
                if framework == "fastapi" {
                    let signature = self.fastapi_signature(
                        &def.params,
                        &path_param_names(&raw_path, PathStyle::Python),
                    );
                    facts.auth |= signature.auth
                        || has_auth_dependency(keyword_value(&args, "dependencies").unwrap_or(""));
                    facts.body_fields = merged(signature.body_fields, facts.body_fields);
                    facts.query_fields = merged(signature.query_fields, facts.query_fields);
                    kinds = signature.kinds;
                }
                out.push(PendingRoute {
                    body_only_for_writes: methods.len() > 1,
                    methods,
                    raw_path,
                    style: PathStyle::Python,
                    declared_kinds: kinds,
                    file: idx,
                    line,
                    framework,
                    owner: self.canonical_owner(idx, receiver),
                    facts,
                });
            }
        } else if parse_python_class(target_text).is_some() {
            // A flask-restx `@ns.route('/x')` over a `Resource` class: one route per
            // method the class defines.
            let class_guarded = others.iter().any(|d| decorator_is_auth_guard(d));
            let methods = self.python_resource_methods(idx, target);
            for (receiver, _, raw_path, _, _, line) in routes {
                for (method, facts) in &methods {
                    let mut facts = facts.clone();
                    facts.auth |= class_guarded;
                    out.push(PendingRoute {
                        methods: vec![method.clone()],
                        raw_path: raw_path.clone(),
                        style: PathStyle::Python,
                        declared_kinds: HashMap::new(),
                        file: idx,
                        line,
                        framework: "flask",
                        owner: self.canonical_owner(idx, receiver),
                        facts,
                        body_only_for_writes: false,
                    });
                }
            }
        }
    }

    fn python_before_request(
        &self,
        idx: usize,
        target: usize,
        target_text: &str,
        decorators: &[&str],
        out: &mut Collected,
    ) {
        let Some(def) = parse_python_def(target_text) else {
            return;
        };
        for expr in decorators {
            let Some((receiver, hook)) = expr.trim().rsplit_once('.') else {
                continue;
            };
            if !matches!(hook, "before_request" | "before_app_request") {
                continue;
            }
            let body = self.python_body(&self.files[idx], target, def.inline_body);
            if python_body_checks_auth(&first_lines(&body, AUTH_CHECK_LINES)) {
                out.guarded_owners
                    .insert(self.canonical_owner(idx, receiver));
            }
        }
    }

    /// FastAPI parameters: path ones give kinds; pydantic models, `Body()`, `Form()` and
    /// `File()` the body; `Query()` and plain scalars the query string; dependencies
    /// and headers neither.
    fn fastapi_signature(&self, params: &[&str], path_names: &[String]) -> SignatureFacts {
        let mut sig = SignatureFacts::default();
        for whole in params {
            if has_auth_dependency(whole) {
                sig.auth = true;
            }
            let Some((name, annotation)) = parse_python_param(whole) else {
                continue;
            };
            if matches!(name, "self" | "cls") {
                continue;
            }
            let annotation = annotation.unwrap_or("");
            if path_names.iter().any(|n| n == name) {
                sig.kinds
                    .insert(name.to_string(), kind_from_annotation(annotation, name));
                continue;
            }
            let has = |markers: &[&str]| markers.iter().any(|m| whole.contains(m));
            if has(&["Depends(", "Security(", "Header(", "Cookie("]) {
                continue;
            }
            if has(&["Body(", "Form(", "File("]) {
                push_unique(&mut sig.body_fields, name);
                continue;
            }
            let type_names = identifiers_in(annotation);
            if let Some(model) = type_names.iter().find(|t| self.is_model(t, 0)) {
                for field in self.model_fields(model, 0) {
                    push_unique(&mut sig.body_fields, &field);
                }
                continue;
            }
            // An unannotated parameter is read from the query string too.
            let scalar = type_names.iter().all(|t| SCALAR_TYPES.contains(t));
            if has(&["Query("]) || scalar {
                push_unique(&mut sig.query_fields, name);
            }
        }
        sig
    }

    /// `app.register_blueprint(..)`, `app.include_router(..)`, `app.add_url_rule(..)`, ...
    fn python_call_statement(&self, idx: usize, k: usize, out: &mut Collected, notes: &mut Notes) {
        let file = &self.files[idx];
        let stmt = &file.statements[k];
        let Some(call) = parse_call(file.stmt_text(stmt)) else {
            return;
        };
        let line = file.line_of(stmt.start);
        match call.attr {
            "register_blueprint" | "include_router" | "add_namespace" | "mount" => {
                self.python_mount(idx, &call, line, out, notes)
            }
            "add_url_rule" | "add_api_route" => self.python_rule(idx, &call, line, out, notes),
            "add_resource" => self.python_add_resource(idx, &call, line, out, notes),
            _ => {}
        }
    }

    fn python_mount(
        &self,
        idx: usize,
        call: &Call,
        line: u32,
        out: &mut Collected,
        notes: &mut Notes,
    ) {
        let rel = &self.files[idx].rel;
        let args = &call.args;
        let pos = positional(args);
        let (child, prefix_arg, replaces_own_prefix, auth) = match call.attr {
            "register_blueprint" => {
                let prefix = keyword_value(args, "url_prefix");
                (pos.first().copied(), prefix, prefix.is_some(), false)
            }
            "include_router" => (
                pos.first()
                    .copied()
                    .or_else(|| keyword_value(args, "router")),
                keyword_value(args, "prefix"),
                false,
                has_auth_dependency(keyword_value(args, "dependencies").unwrap_or("")),
            ),
            "add_namespace" => {
                let prefix = keyword_value(args, "path").or_else(|| pos.get(1).copied());
                (pos.first().copied(), prefix, prefix.is_some(), false)
            }
            // FastAPI `app.mount('/v2', sub_app)`; StaticFiles and the like resolve to nothing.
            _ => (
                pos.get(1).copied().or_else(|| keyword_value(args, "app")),
                pos.first().copied(),
                false,
                false,
            ),
        };
        let Some(child) = child else {
            return;
        };
        let prefix = match prefix_arg {
            None => String::new(),
            Some(p) => match string_literal(p) {
                Some(prefix) => prefix,
                None => {
                    notes.add(format!(
                        "{rel}:{line}: the prefix of `{child}` is not a plain string; it was not applied"
                    ));
                    String::new()
                }
            },
        };
        let children = self.resolve_owner_ref(idx, child);
        if children.is_empty() {
            if call.attr != "mount" {
                notes.add(format!(
                    "{rel}:{line}: could not find the blueprint or router `{child}`; its prefix was not applied"
                ));
            }
            return;
        }
        out.mounts.push(Mount {
            parent: self.canonical_owner(idx, call.receiver),
            children,
            prefix,
            replaces_own_prefix,
            auth,
        });
    }

    /// `app.add_url_rule('/x', view_func=f, methods=[..])` (Flask, also with a
    /// `MethodView.as_view(..)`) and `router.add_api_route('/x', f, methods=[..])` (FastAPI).
    fn python_rule(
        &self,
        idx: usize,
        call: &Call,
        line: u32,
        out: &mut Collected,
        notes: &mut Notes,
    ) {
        let is_flask = call.attr == "add_url_rule";
        let args = &call.args;
        let pos = positional(args);
        let Some(path_arg) = pos
            .first()
            .copied()
            .or_else(|| keyword_value(args, if is_flask { "rule" } else { "path" }))
        else {
            return;
        };
        let Some(raw_path) = string_literal(path_arg) else {
            notes.add(format!(
                "{}:{line}: skipped a route whose path is not a plain string (f-string or variable)",
                self.files[idx].rel
            ));
            return;
        };
        let view = if is_flask {
            keyword_value(args, "view_func").or_else(|| pos.get(2).copied())
        } else {
            keyword_value(args, "endpoint").or_else(|| pos.get(1).copied())
        };
        let Some(view) = view else {
            return;
        };
        let declared_methods = keyword_value(args, "methods")
            .and_then(string_list)
            .map(|list| upper_methods(&list))
            .filter(|list| !list.is_empty());
        let owner = self.canonical_owner(idx, call.receiver);
        let framework = if is_flask { "flask" } else { "fastapi" };
        let route = |methods: Vec<String>, facts: HandlerFacts, kinds| PendingRoute {
            body_only_for_writes: methods.len() > 1,
            methods,
            raw_path: raw_path.clone(),
            style: PathStyle::Python,
            declared_kinds: kinds,
            file: idx,
            line,
            framework,
            owner: owner.clone(),
            facts,
        };
        if let Some((class_expr, _)) = view.split_once(".as_view") {
            let class_name = trailing_identifier(class_expr);
            for (method, facts) in self.resource_methods_named(idx, class_name) {
                if declared_methods
                    .as_ref()
                    .is_none_or(|d| d.contains(&method))
                {
                    out.push(route(vec![method], facts, HashMap::new()));
                }
            }
            return;
        }
        let function = trailing_identifier(view);
        let mut facts = HandlerFacts::default();
        let mut kinds = HashMap::new();
        if let Some((file_idx, def_k)) = self.find_python_statement(idx, function, "def") {
            let file = &self.files[file_idx];
            if let Some(def) = parse_python_def(file.stmt_text(&file.statements[def_k])) {
                facts = python_handler_facts(&self.python_body(file, def_k, def.inline_body), &[]);
                if !is_flask {
                    let signature = self.fastapi_signature(
                        &def.params,
                        &path_param_names(&raw_path, PathStyle::Python),
                    );
                    facts.auth |= signature.auth;
                    facts.body_fields = merged(signature.body_fields, facts.body_fields);
                    facts.query_fields = merged(signature.query_fields, facts.query_fields);
                    kinds = signature.kinds;
                }
            }
        }
        let methods = declared_methods.unwrap_or_else(|| vec!["GET".to_string()]);
        out.push(route(methods, facts, kinds));
    }

    /// Flask-RESTful `api.add_resource(Item, '/items', '/items/<int:id>')`.
    fn python_add_resource(
        &self,
        idx: usize,
        call: &Call,
        line: u32,
        out: &mut Collected,
        notes: &mut Notes,
    ) {
        let pos = positional(&call.args);
        let Some((class_expr, paths)) = pos.split_first() else {
            return;
        };
        let class_name = trailing_identifier(class_expr);
        let mut methods = self.resource_methods_named(idx, class_name);
        if methods.is_empty() {
            notes.add(format!(
                "{}:{line}: resource class `{class_name}` not found; assumed GET",
                self.files[idx].rel
            ));
            methods.push(("GET".to_string(), HandlerFacts::default()));
        }
        let owner = self.canonical_owner(idx, call.receiver);
        for path in paths {
            let Some(raw_path) = string_literal(path) else {
                notes.add(format!(
                    "{}:{line}: skipped a resource path that is not a plain string",
                    self.files[idx].rel
                ));
                continue;
            };
            for (method, facts) in &methods {
                out.push(PendingRoute {
                    methods: vec![method.clone()],
                    raw_path: raw_path.clone(),
                    style: PathStyle::Python,
                    declared_kinds: HashMap::new(),
                    file: idx,
                    line,
                    framework: "flask",
                    owner: owner.clone(),
                    facts: facts.clone(),
                    body_only_for_writes: false,
                });
            }
        }
    }

    fn resource_methods_named(&self, idx: usize, class_name: &str) -> Vec<(String, HandlerFacts)> {
        self.find_python_statement(idx, class_name, "class")
            .map(|(file_idx, k)| self.python_resource_methods(file_idx, k))
            .unwrap_or_default()
    }

    /// The statement defining `name` (`def` or `class`), in file `idx` first, then in
    /// the other Python files.
    fn find_python_statement(
        &self,
        idx: usize,
        name: &str,
        keyword: &str,
    ) -> Option<(usize, usize)> {
        let index = match keyword {
            "def" => &self.python_defs,
            _ => &self.python_classes,
        };
        let places = index.get(name)?;
        places
            .iter()
            .find(|(file, _)| *file == idx)
            .or_else(|| places.first())
            .copied()
    }

    /// The HTTP methods a `Resource`/`MethodView` class defines (`def get(self)`), each
    /// with what its body reads. Guarded when the class lists auth decorators
    /// (`decorators = [auth.login_required]`, `method_decorators = [...]`).
    fn python_resource_methods(
        &self,
        file_idx: usize,
        class_k: usize,
    ) -> Vec<(String, HandlerFacts)> {
        let file = &self.files[file_idx];
        let statements = &file.statements;
        let range = block_range(statements, class_k);
        let Some(indent) = statements.get(range.start).map(|s| s.indent) else {
            return Vec::new();
        };
        let mut methods = Vec::new();
        let mut class_guarded = false;
        let mut decorators: Vec<&str> = Vec::new();
        for k in range.filter(|&k| statements[k].indent == indent) {
            let text = file.stmt_text(&statements[k]);
            if let Some(decorator) = text.strip_prefix('@') {
                decorators.push(decorator);
                continue;
            }
            if let Some((name, rhs)) = simple_assignment(text) {
                if matches!(name, "decorators" | "method_decorators") {
                    class_guarded |= looks_like_auth_guard(rhs);
                }
            }
            if let Some(def) = parse_python_def(text) {
                if HTTP_METHODS.contains(&def.name) {
                    let body = self.python_body(file, k, def.inline_body);
                    methods.push((
                        def.name.to_ascii_uppercase(),
                        python_handler_facts(&body, &decorators),
                    ));
                }
            }
            decorators.clear();
        }
        if class_guarded {
            for (_, facts) in &mut methods {
                facts.auth = true;
            }
        }
        methods
    }
}

fn too_many_routes_in(rel: &str) -> String {
    format!("{rel}: more than {MAX_ROUTES_PER_FILE} route registrations; the rest were not read")
}

/// `first` then what `second` adds.
fn merged(first: Vec<String>, second: Vec<String>) -> Vec<String> {
    let mut all = first;
    for item in &second {
        push_unique(&mut all, item);
    }
    all
}

// ---------------------------------------------------------------------------------------
// Scripts: Express
// ---------------------------------------------------------------------------------------

fn script_file_facts(file: &SourceFile, brackets: &Brackets) -> FileFacts {
    let text = &file.text;
    let server_markers = [
        "require('express')",
        "require(\"express\")",
        "from 'express'",
        "from \"express\"",
        "(req, res",
        "req: Request",
    ];
    FileFacts {
        owners: script_owners(text),
        imports: script_imports(file, brackets),
        server_like: server_markers.iter().any(|m| text.contains(m)),
        ..FileFacts::default()
    }
}

/// `const app = express()`, `const router = express.Router()`, `const router =
/// Router()`, `const app: Express = express()`.
fn script_owners(text: &str) -> HashMap<String, OwnerDecl> {
    let mut owners = HashMap::new();
    for (constructor, is_app) in [("express(", true), ("Router(", false)] {
        for (pos, _) in text.match_indices(constructor) {
            if pos > 0 && is_ident_byte(text.as_bytes()[pos - 1]) {
                continue; // `makeRouter(`: some other function
            }
            let before = text[line_start(text, pos)..pos].trim_end();
            let Some(eq) = before.rfind('=') else {
                continue;
            };
            let between: String = before[eq + 1..]
                .chars()
                .filter(|c| !c.is_whitespace())
                .collect();
            let allowed = [
                "",
                "express.",
                "new",
                "require('express').",
                "require(\"express\").",
            ];
            if !allowed.contains(&between.as_str()) {
                continue;
            }
            let lhs = &before[..eq];
            if lhs.ends_with(['=', '!', '<', '>']) {
                continue;
            }
            // `const app: Express`: the name is before the type.
            let name = trailing_identifier(lhs.split(':').next().unwrap_or(lhs).trim_end());
            if is_identifier(name) {
                owners.entry(name.to_string()).or_insert(OwnerDecl {
                    framework: "express",
                    is_app,
                    own_prefix: String::new(),
                    auth: false,
                });
            }
        }
    }
    owners
}

/// A relative import (`./routes/items`, `../x.js`) as a module path from the app folder.
fn resolve_script_module(dir: &str, spec: &str) -> Option<String> {
    if !(spec.starts_with("./") || spec.starts_with("../") || spec == "." || spec == "..") {
        return None;
    }
    let mut parts: Vec<&str> = dir.split('/').filter(|s| !s.is_empty()).collect();
    for segment in spec.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    let mut module = parts.join("/");
    for ext in SCRIPT_EXTENSIONS {
        if let Some(stem) = module.strip_suffix(&format!(".{ext}")) {
            module = stem.to_string();
            break;
        }
    }
    Some(module)
}

/// Local names bound by relative `require(..)` and `import .. from ..`.
fn script_imports(file: &SourceFile, brackets: &Brackets) -> HashMap<String, Vec<ImportTarget>> {
    let text = &file.text;
    let mut imports: HashMap<String, Vec<ImportTarget>> = HashMap::new();
    let mut bind = |local: &str, module: &str, var: Option<&str>| {
        if is_identifier(local) {
            imports
                .entry(local.to_string())
                .or_default()
                .push(ImportTarget {
                    module: module.to_string(),
                    exact: true,
                    var: var.map(str::to_string),
                });
        }
    };
    // `const x = require('./x')`, `const { a, b: c } = require('./x')`,
    // `const r = require('./x').router`.
    for pos in word_positions(text, "require") {
        let open = pos + "require".len();
        if text.as_bytes().get(open) != Some(&b'(') {
            continue;
        }
        let Some(close) = brackets.close_of(open) else {
            continue;
        };
        let Some(spec) = string_literal(&text[open + 1..close]) else {
            continue;
        };
        let Some(module) = resolve_script_module(&file.dir, &spec) else {
            continue;
        };
        let property = text[close + 1..]
            .strip_prefix('.')
            .map(leading_identifier)
            .filter(|p| !p.is_empty());
        let before = text[line_start(text, pos)..pos].trim_end();
        let Some(lhs) = before.strip_suffix('=') else {
            continue;
        };
        let mut lhs = lhs.trim();
        for keyword in ["export ", "const ", "let ", "var "] {
            lhs = lhs.strip_prefix(keyword).unwrap_or(lhs).trim_start();
        }
        if let Some(inner) = lhs.strip_prefix('{').and_then(|l| l.strip_suffix('}')) {
            for entry in split_top_level(inner) {
                match entry.split_once(':') {
                    Some((key, local)) => bind(local.trim(), &module, Some(key.trim())),
                    None => bind(entry, &module, Some(entry)),
                }
            }
        } else {
            bind(lhs, &module, property);
        }
    }
    // `import x from './x'`, `import { a, b as c } from './x'`, `import * as m from './x'`.
    for (pos, _) in text.match_indices("import ") {
        if !text[line_start(text, pos)..pos].trim().is_empty() {
            continue;
        }
        let window = prefix_within(&text[pos + "import ".len()..], 1_000);
        let from = window.match_indices("from").map(|(i, _)| i).find(|&i| {
            let before_ok =
                i > 0 && matches!(window.as_bytes()[i - 1], b' ' | b'\n' | b'\t' | b'}');
            before_ok && window[i + 4..].trim_start().starts_with(['\'', '"'])
        });
        let Some(from) = from else {
            continue;
        };
        let clause = window[..from].trim();
        if clause.starts_with("type ") || clause.contains("import ") {
            continue;
        }
        let spec_text = window[from + 4..].trim_start();
        let spec_end = skip_string(spec_text.as_bytes(), 0, false);
        let Some(spec) = string_literal(&spec_text[..spec_end]) else {
            continue;
        };
        let Some(module) = resolve_script_module(&file.dir, &spec) else {
            continue;
        };
        for part in split_top_level(clause) {
            if let Some(inner) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                for entry in split_top_level(inner) {
                    match entry.split_once(" as ") {
                        Some((name, local)) => bind(local.trim(), &module, Some(name.trim())),
                        None => bind(entry, &module, Some(entry)),
                    }
                }
            } else if let Some(local) = part.strip_prefix("* as ") {
                bind(local.trim(), &module, None);
            } else {
                bind(part, &module, None);
            }
        }
    }
    imports
}

/// Handlers defined by name: `function getItems(req, res) {..}`, `exports.getItems =
/// async (req, res) => {..}`, `const createItem = asyncHandler(async (req, res) => ..)`,
/// `getItems: async (req, res) => ..`, with what each reads.
fn script_named_handlers(text: &str, brackets: &Brackets) -> Vec<(String, HandlerFacts)> {
    let mut handlers = Vec::new();
    for (pos, _) in text.match_indices("(req") {
        // `(req, res ...` or `(req: Request ...`: a handler's parameter list.
        if !matches!(text.as_bytes().get(pos + 4), Some(b',' | b':')) {
            continue;
        }
        let Some(close) = brackets.close_of(pos) else {
            continue;
        };
        let Some(body) = script_function_body(text, brackets, close + 1) else {
            continue;
        };
        let Some(name) = definition_name(&text[line_start(text, pos)..pos]) else {
            continue;
        };
        handlers.push((name, script_handler_facts(body)));
        if handlers.len() >= MAX_ROUTES {
            break;
        }
    }
    handlers
}

/// The body of a function whose parameter list ends just before `after`: `=> {..}`,
/// `=> expr`, `{..}`, with an optional TypeScript return type before it. None for a
/// call (`next(req, res);`).
fn script_function_body<'a>(text: &'a str, brackets: &Brackets, after: usize) -> Option<&'a str> {
    let rest = &text[after..];
    let trimmed = rest.trim_start();
    let mut start = after + (rest.len() - trimmed.len());
    if trimmed.starts_with(':') {
        let line = &rest[..rest.find('\n').unwrap_or(rest.len())];
        start = after + line.find("=>").or_else(|| line.find('{'))?;
    } else if !(trimmed.starts_with("=>") || trimmed.starts_with('{')) {
        return None;
    }
    if text[start..].starts_with("=>") {
        start += 2;
        let t = &text[start..];
        start += t.len() - t.trim_start().len();
    }
    if text[start..].starts_with('{') {
        let close = brackets.close_of(start)?;
        return Some(&text[start..=close]);
    }
    let end = text[start..].find('\n').map_or(text.len(), |e| start + e);
    Some(&text[start..end])
}

/// The name a handler is defined under, from the text before its parameter list on
/// its line; None for an inline handler (`router.get('/', (req, res) => ..)`).
fn definition_name(prefix: &str) -> Option<String> {
    let mut s = prefix.trim_end();
    s = strip_word_suffix(s, "async").unwrap_or(s);
    s = strip_word_suffix(s, "function").unwrap_or(s);
    // `const createItem = asyncHandler(`: the wrapper is not the name.
    if let Some(inner) = s.strip_suffix('(') {
        let inner = inner.trim_end();
        s = inner[..inner.len() - trailing_identifier(inner).len()].trim_end();
    }
    if let Some(rest) = s.strip_suffix('=') {
        if rest.ends_with(['=', '!', '<', '>']) {
            return None;
        }
        // `const getItems: RequestHandler =`: the name is before the type.
        s = rest.rsplit_once(':').map_or(rest, |(l, _)| l).trim_end();
    } else if let Some(rest) = s.strip_suffix(':') {
        s = rest.trim_end();
    } else if !s.bytes().last().is_some_and(is_ident_byte) {
        return None;
    }
    let name = trailing_identifier(s);
    let keywords = [
        "if", "for", "while", "switch", "catch", "return", "function", "await", "typeof", "new",
    ];
    (is_identifier(name) && !keywords.contains(&name)).then(|| name.to_string())
}

/// What an Express handler reads (`req.body.x`, `const { a } = req.body`,
/// `req.query.q`) and whether it checks who calls.
fn script_handler_facts(body: &str) -> HandlerFacts {
    let body = prefix_within(body, MAX_HANDLER_BYTES);
    let mut body_sources = vec!["req.body"];
    let mut query_sources = vec!["req.query"];
    for line in body.lines() {
        let Some((name, rhs)) = simple_assignment(line) else {
            continue;
        };
        let rhs = rhs.trim_end_matches(';').trim();
        let aliases = |source: &str| {
            rhs.strip_prefix(source).is_some_and(|rest| {
                let rest = rest.trim();
                rest.is_empty()
                    || rest.starts_with("||")
                    || rest.starts_with("??")
                    || rest.starts_with("as ")
            })
        };
        if aliases("req.body") {
            body_sources.push(name);
        } else if aliases("req.query") {
            query_sources.push(name);
        }
    }
    HandlerFacts {
        auth: script_body_checks_auth(&first_lines(body, AUTH_CHECK_LINES)),
        body_fields: keys_read(body, &body_sources, Lang::Script),
        query_fields: keys_read(body, &query_sources, Lang::Script),
    }
}

fn script_body_checks_auth(head: &str) -> bool {
    let lower = head.to_ascii_lowercase();
    ((lower.contains("req.header") || lower.contains("req.get("))
        && lower.contains("authorization"))
        || word_positions(head, "req.user").next().is_some()
        || script_session_check(head)
}

/// Reading `req.session` (`if (!req.session.userId)`); setting it is logging in.
fn script_session_check(text: &str) -> bool {
    word_positions(text, "req.session").any(|pos| {
        let rest = &text[pos + "req.session".len()..];
        let rest = rest.strip_prefix('?').unwrap_or(rest);
        let Some(prop) = rest.strip_prefix('.') else {
            return true;
        };
        let name = leading_identifier(prop);
        let after = prop[name.len()..].trim_start();
        !(after.starts_with('(') || is_assignment(after))
    })
}

impl Project {
    /// Whether calls on `receiver` in file `idx` register routes: a declared Express app
    /// or router, or `app`/`router`/`*Router` in server code. This keeps client code
    /// (`axios.get('/api/x')`, `api.post('/items', item)`) out.
    fn accepts_script_receiver(&self, idx: usize, receiver: &str) -> bool {
        let facts = &self.facts[idx];
        facts.owners.contains_key(receiver)
            || (facts.server_like
                && (receiver == "app"
                    || receiver == "router"
                    || receiver.ends_with("Router")
                    || receiver.ends_with("router")))
    }

    fn scan_script(&self, idx: usize, out: &mut Collected, notes: &mut Notes) {
        let file = &self.files[idx];
        let text = &file.text;
        let bytes = text.as_bytes();
        let brackets = Brackets::new(text);
        // `router.use(requireAuth)` / `app.use('/api/admin', requireAuth)`: routes on
        // that receiver (under that path) registered after it are guarded.
        let mut guards: Vec<(String, String)> = Vec::new();
        let routes_before = out.routes.len();
        for (dot, _) in text.match_indices('.') {
            if out.routes.len() - routes_before >= MAX_ROUTES_PER_FILE {
                notes.add(too_many_routes_in(&file.rel));
                break;
            }
            let name = leading_identifier(&text[dot + 1..]);
            let open = dot + 1 + name.len();
            if bytes.get(open) != Some(&b'(') {
                continue;
            }
            if !(HTTP_METHODS.contains(&name) || name == "route" || name == "use") {
                continue;
            }
            let receiver = trailing_identifier(&text[..dot]);
            if !is_identifier(receiver) || !self.accepts_script_receiver(idx, receiver) {
                continue;
            }
            let Some(close) = brackets.close_of(open) else {
                continue;
            };
            // Only the path, the middleware names and the start of the handler matter.
            let args = split_top_level(prefix_within(&text[open + 1..close], MAX_HANDLER_BYTES));
            let line = file.line_of(dot - receiver.len());
            let owner = self.canonical_owner(idx, receiver);
            let guarded = |path: &str| {
                guards
                    .iter()
                    .any(|(r, prefix)| r == receiver && path.starts_with(prefix.as_str()))
            };
            match name {
                "use" => self.script_use(idx, owner, receiver, &args, &mut guards, out),
                "route" => {
                    let Some(raw_path) = args.first().and_then(|a| string_literal(a)) else {
                        notes.add(format!(
                            "{}:{line}: skipped a route whose path is not a plain string",
                            file.rel
                        ));
                        continue;
                    };
                    let guarded = guarded(&raw_path);
                    // `.route('/x').get(..).post(..)`, possibly over several lines.
                    let mut pos = close + 1;
                    loop {
                        let rest = &text[pos..];
                        let Some(chained) = rest.trim_start().strip_prefix('.') else {
                            break;
                        };
                        let method = leading_identifier(chained);
                        let method_open = pos + (rest.len() - chained.len()) + method.len();
                        if !HTTP_METHODS.contains(&method) || bytes.get(method_open) != Some(&b'(')
                        {
                            break;
                        }
                        let Some(method_close) = brackets.close_of(method_open) else {
                            break;
                        };
                        let handlers = split_top_level(prefix_within(
                            &text[method_open + 1..method_close],
                            MAX_HANDLER_BYTES,
                        ));
                        if !handlers.is_empty() {
                            let method_line = file.line_of(method_open);
                            let route = self.script_route(
                                idx,
                                owner.clone(),
                                method,
                                &raw_path,
                                &handlers,
                                method_line,
                                guarded,
                            );
                            out.push(route);
                        }
                        pos = method_close + 1;
                    }
                }
                method => {
                    // `app.get('port')` reads a setting; a route has a path and a handler.
                    if args.len() < 2 {
                        continue;
                    }
                    let Some(raw_path) = string_literal(args[0]) else {
                        notes.add(format!(
                            "{}:{line}: skipped a route whose path is not a plain string",
                            file.rel
                        ));
                        continue;
                    };
                    if !raw_path.starts_with('/') {
                        continue;
                    }
                    let guarded = guarded(&raw_path);
                    let route =
                        self.script_route(idx, owner, method, &raw_path, &args[1..], line, guarded);
                    out.push(route);
                }
            }
        }
    }

    /// One Express route: `handlers` are the middleware then the handler.
    #[allow(clippy::too_many_arguments)]
    fn script_route(
        &self,
        idx: usize,
        owner: OwnerId,
        method: &str,
        raw_path: &str,
        handlers: &[&str],
        line: u32,
        guarded: bool,
    ) -> PendingRoute {
        let (handler, middleware) = handlers.split_last().unwrap_or((&"", &[]));
        let mut facts = self.script_handler_facts_for(idx, handler);
        facts.auth |= guarded || middleware.iter().any(|m| looks_like_auth_guard(m));
        PendingRoute {
            methods: vec![method.to_ascii_uppercase()],
            raw_path: raw_path.to_string(),
            style: PathStyle::Express,
            declared_kinds: HashMap::new(),
            file: idx,
            line,
            framework: "express",
            owner,
            facts,
            body_only_for_writes: false,
        }
    }

    /// An inline handler's facts, or a named one's (`itemController.createItem`,
    /// `asyncHandler(createItem)`) from where it is defined, this file first.
    fn script_handler_facts_for(&self, idx: usize, handler: &str) -> HandlerFacts {
        let handler = handler.trim();
        if handler.contains("=>") || handler.starts_with("function") || handler.starts_with("async")
        {
            return script_handler_facts(handler);
        }
        let mut name = handler;
        if let Some((_, inner)) = handler.split_once('(') {
            name = inner.trim_end().trim_end_matches(')').trim();
        }
        let name = trailing_identifier(name);
        let Some(defined) = self.script_handlers.get(name) else {
            return HandlerFacts::default();
        };
        defined
            .iter()
            .find(|(file, _)| *file == idx)
            .or_else(|| defined.first())
            .map(|(_, facts)| facts.clone())
            .unwrap_or_default()
    }

    /// `app.use('/api', router)`, `app.use('/api/users', require('./routes/users'))`,
    /// `router.use(protect)`.
    fn script_use(
        &self,
        idx: usize,
        owner: OwnerId,
        receiver: &str,
        args: &[&str],
        guards: &mut Vec<(String, String)>,
        out: &mut Collected,
    ) {
        let (prefix, rest) = match args.first().and_then(|a| string_literal(a)) {
            Some(prefix) if prefix.starts_with('/') => (prefix, &args[1..]),
            _ => (String::new(), args),
        };
        let Some((child, middleware)) = rest.split_last() else {
            return;
        };
        let children = self.script_mount_children(idx, child);
        if children.is_empty() {
            // Not a router: middleware. A guard covers what follows on this receiver.
            if rest.iter().any(|m| looks_like_auth_guard(m)) {
                guards.push((receiver.to_string(), prefix));
            }
            return;
        }
        out.mounts.push(Mount {
            parent: owner,
            children,
            prefix,
            replaces_own_prefix: false,
            auth: middleware.iter().any(|m| looks_like_auth_guard(m)),
        });
    }

    fn script_mount_children(&self, idx: usize, child: &str) -> Vec<OwnerId> {
        if let Some(spec) = child
            .strip_prefix("require(")
            .and_then(|s| s.strip_suffix(')'))
            .and_then(string_literal)
        {
            return resolve_script_module(&self.files[idx].dir, &spec)
                .map(|module| self.owners_in_module(&module, true, None))
                .unwrap_or_default();
        }
        self.resolve_owner_ref(idx, child)
    }
}

// ---------------------------------------------------------------------------------------
// OpenAPI helpers
// ---------------------------------------------------------------------------------------

/// A local `$ref` (`#/components/schemas/Item`) followed a few hops; anything else as is.
pub(crate) fn resolve_ref<'a>(doc: &'a Value, value: &'a Value) -> &'a Value {
    let mut current = value;
    for _ in 0..MAX_REF_HOPS {
        let target = current
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix('#'))
            .and_then(|pointer| doc.pointer(pointer));
        match target {
            Some(target) => current = target,
            None => break,
        }
    }
    current
}

/// A schema's property names, with those of `allOf`/`oneOf`/`anyOf` parts (two levels).
fn schema_property_names(doc: &Value, schema: Option<&Value>, depth: usize) -> Vec<String> {
    let mut names = Vec::new();
    let Some(schema) = schema else {
        return names;
    };
    let schema = resolve_ref(doc, schema);
    if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
        for name in properties.keys() {
            push_unique(&mut names, name);
        }
    }
    if depth < 2 {
        for key in ["allOf", "oneOf", "anyOf"] {
            for part in schema
                .get(key)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                for name in schema_property_names(doc, Some(part), depth + 1) {
                    push_unique(&mut names, &name);
                }
            }
        }
    }
    names
}

/// The schema of a request body: JSON first, then a form encoding.
fn request_body_schema(request_body: &Value) -> Option<&Value> {
    let content = request_body.get("content")?.as_object()?;
    let media = content
        .get("application/json")
        .or_else(|| {
            content
                .iter()
                .find(|(k, _)| k.contains("json"))
                .map(|(_, v)| v)
        })
        .or_else(|| content.get("application/x-www-form-urlencoded"))
        .or_else(|| content.get("multipart/form-data"))?;
    media.get("schema")
}

fn openapi_param_kind(doc: &Value, param: &Value, name: &str) -> ParamKind {
    let schema_type = param
        .get("schema")
        .map(|s| resolve_ref(doc, s))
        .and_then(|s| s.get("type"))
        .or_else(|| param.get("type"))
        .and_then(Value::as_str);
    match schema_type {
        Some("integer") => ParamKind::Int,
        Some(_) => ParamKind::Str,
        None => kind_from_name(name),
    }
}

/// Whether a `security` list asks for credentials (`[]` and `[{}]` do not).
fn security_requires_auth(security: &Value) -> bool {
    security.as_array().is_some_and(|requirements| {
        requirements
            .iter()
            .any(|r| r.as_object().is_some_and(|o| !o.is_empty()))
    })
}

/// Swagger 2 `basePath`, or the path of OpenAPI 3's first server URL (`/api/v1`,
/// `https://host/api`); `""` when there is none or it is templated.
pub(crate) fn openapi_base_path(doc: &Value) -> String {
    let base = if let Some(base) = doc.get("basePath").and_then(Value::as_str) {
        base
    } else if let Some(url) = doc.pointer("/servers/0/url").and_then(Value::as_str) {
        if url.contains('{') {
            ""
        } else if let Some((_, after_scheme)) = url.split_once("://") {
            after_scheme.find('/').map_or("", |i| &after_scheme[i..])
        } else if url.starts_with('/') {
            url
        } else {
            ""
        }
    } else {
        ""
    };
    base.trim_end_matches('/').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn write(root: &Path, rel: &str, text: &str) {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    fn find<'a>(found: &'a Discovered, method: &str, path: &str) -> &'a Route {
        found
            .routes
            .iter()
            .find(|r| r.method == method && r.path == path)
            .unwrap_or_else(|| {
                panic!(
                    "no {method} {path} in {:#?}",
                    found
                        .routes
                        .iter()
                        .map(|r| format!("{} {}", r.method, r.path))
                        .collect::<Vec<_>>()
                )
            })
    }

    fn pairs(routes: &[Route]) -> Vec<String> {
        routes
            .iter()
            .map(|r| format!("{} {}", r.method, r.path))
            .collect()
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    const FLASK_APP: &str = r#"
from flask import Flask, jsonify, request, session
from functools import wraps
from routes.items import items_bp
from auth import auth_bp

app = Flask(__name__)
app.secret_key = "dev"

app.register_blueprint(items_bp)
app.register_blueprint(auth_bp, url_prefix='/auth')


def login_required(f):
    @wraps(f)
    def decorated(*args, **kwargs):
        if 'user_id' not in session:
            return jsonify({'error': 'Unauthorized'}), 401
        return f(*args, **kwargs)
    return decorated


@app.route('/')
def index():
    """Health page.

    @app.route('/from-a-docstring')
    """
    return jsonify({'status': 'ok'})


@app.route('/api/profile', methods=['GET', 'PUT'])
@login_required
def profile():
    if request.method == 'PUT':
        data = request.get_json()
        name = data.get('display_name')
        return jsonify({'name': name})
    return jsonify({})


@app.get('/health')
def health(): return 'ok'

# @app.route('/commented-out')
# def old(): pass

if __name__ == '__main__':
    app.run(debug=True, port=5000)
"#;

    const FLASK_ITEMS: &str = r#"
from flask import Blueprint, jsonify, request, abort
from models import db, Item

items_bp = Blueprint('items', __name__, url_prefix='/api/items')
VERSION = 'v1'


@items_bp.route('', methods=['GET'])
def list_items():
    page = request.args.get('page', 1, type=int)
    search = request.args['q']
    items = Item.query.all()
    return jsonify([i.to_dict() for i in items])


@items_bp.route(
    '/<int:item_id>',
    methods=['GET', 'PUT', 'DELETE'],
)
def item_detail(item_id):
    item = Item.query.get_or_404(item_id)
    if request.method == 'PUT':
        payload = request.json or {}
        item.name = payload.get('name', item.name)
        item.price = payload['price']
        db.session.commit()
    elif request.method == 'DELETE':
        db.session.delete(item)
        db.session.commit()
        return '', 204
    return jsonify(item.to_dict())


@items_bp.route('/', methods=("POST",))
def create_item():
    data = request.get_json(silent=True) or {}
    if 'name' not in data:
        abort(400)
    item = Item(name=data['name'], price=data.get("price", 0))
    db.session.add(item)
    db.session.commit()
    return jsonify(item.to_dict()), 201


@items_bp.route('/by-slug/<slug>')
def by_slug(slug):
    return jsonify({})


@items_bp.route('/files/<path:filename>')
def download(filename):
    return filename


@items_bp.route(f'/{VERSION}/legacy')
def legacy():
    return 'gone'
"#;

    const FLASK_AUTH: &str = r#"
from flask import Blueprint, request, session, jsonify

auth_bp = Blueprint('auth', __name__)


@auth_bp.route('/login', methods=['POST'])
def login():
    username = request.form['username']
    password = request.form.get('password')
    session['user_id'] = 1
    return jsonify({'ok': True})


@auth_bp.route('/me')
def me():
    user_id = session.get('user_id')
    if not user_id:
        return jsonify({'error': 'not logged in'}), 401
    return jsonify({'id': user_id})
"#;

    #[test]
    fn flask_app_with_blueprints_prefixes_and_multiline_decorators() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "app.py", FLASK_APP);
        write(dir.path(), "routes/items.py", FLASK_ITEMS);
        write(dir.path(), "routes/__init__.py", "");
        write(dir.path(), "auth.py", FLASK_AUTH);
        let found = discover(dir.path());
        assert_eq!(found.files_read, 4);
        assert_eq!(
            pairs(&found.routes),
            strings(&[
                "GET /",
                "GET /api/items",
                "POST /api/items/",
                "GET /api/items/by-slug/{slug}",
                "GET /api/items/files/{filename}",
                "DELETE /api/items/{item_id}",
                "GET /api/items/{item_id}",
                "PUT /api/items/{item_id}",
                "GET /api/profile",
                "PUT /api/profile",
                "POST /auth/login",
                "GET /auth/me",
                "GET /health",
            ])
        );
        assert!(found.routes.iter().all(|r| r.framework == "flask"));

        let index = find(&found, "GET", "/");
        assert_eq!((index.file.as_str(), index.line), ("app.py", 23));
        assert!(!index.auth_hint);

        let list = find(&found, "GET", "/api/items");
        assert_eq!(list.file, "routes/items.py");
        assert_eq!(list.query_fields, strings(&["page", "q"]));
        assert!(list.params.is_empty());

        let detail_put = find(&found, "PUT", "/api/items/{item_id}");
        assert_eq!(
            detail_put.line, 17,
            "the line of the decorator, not of its arguments"
        );
        assert_eq!(
            detail_put.params,
            vec![("item_id".to_string(), ParamKind::Int)]
        );
        assert_eq!(detail_put.body_fields, strings(&["name", "price"]));
        // One handler for GET, PUT and DELETE: the body reads are the write's.
        assert!(find(&found, "GET", "/api/items/{item_id}")
            .body_fields
            .is_empty());
        assert!(find(&found, "DELETE", "/api/items/{item_id}")
            .body_fields
            .is_empty());

        let create = find(&found, "POST", "/api/items/");
        assert_eq!(create.body_fields, strings(&["name", "price"]));

        let slug = find(&found, "GET", "/api/items/by-slug/{slug}");
        assert_eq!(slug.params, vec![("slug".to_string(), ParamKind::Str)]);
        let file = find(&found, "GET", "/api/items/files/{filename}");
        assert_eq!(file.params, vec![("filename".to_string(), ParamKind::Str)]);

        let profile_get = find(&found, "GET", "/api/profile");
        assert!(profile_get.auth_hint, "@login_required");
        let profile_put = find(&found, "PUT", "/api/profile");
        assert!(profile_put.auth_hint);
        assert_eq!(profile_put.body_fields, strings(&["display_name"]));

        // register_blueprint's url_prefix applies to a blueprint declared without one.
        let login = find(&found, "POST", "/auth/login");
        assert_eq!(login.file, "auth.py");
        assert_eq!(login.body_fields, strings(&["username", "password"]));
        assert!(
            !login.auth_hint,
            "setting the session is logging in, not a check"
        );
        assert!(
            find(&found, "GET", "/auth/me").auth_hint,
            "reads the session"
        );

        assert!(found
            .notes
            .iter()
            .any(|n| n.starts_with("routes/items.py:") && n.contains("not a plain string")));
    }

    #[test]
    fn flask_register_prefix_replaces_the_blueprint_prefix_and_factories_are_read() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "app/__init__.py",
            r#"
from flask import Flask

def create_app():
    app = Flask(__name__)
    from app.main import bp as main_bp
    app.register_blueprint(main_bp)
    from .api import api_bp
    app.register_blueprint(api_bp, url_prefix="/api/v2")

    @app.route("/ping")
    def ping():
        return "pong"

    return app
"#,
        );
        write(
            dir.path(),
            "app/main/__init__.py",
            "from flask import Blueprint\n\nbp = Blueprint('main', __name__, url_prefix='/main')\n\nfrom app.main import routes\n",
        );
        write(
            dir.path(),
            "app/main/routes.py",
            r#"
from flask import render_template, request, session
from app.main import bp


@bp.before_request
def require_login():
    if 'user_id' not in session:
        return redirect('/login')


@bp.route('/dashboard')
def dashboard():
    return render_template('dashboard.html')
"#,
        );
        write(
            dir.path(),
            "app/api.py",
            r#"
from flask import Blueprint, jsonify, request

api_bp = Blueprint("api", __name__, url_prefix="/api/v1")

@api_bp.post("/notes")
def add_note():
    body = request.get_json(force=True)
    return jsonify({"text": body["text"]}), 201

@api_bp.delete("/notes/<int:note_id>")
def delete_note(note_id):
    return "", 204
"#,
        );
        let found = discover(dir.path());
        assert_eq!(
            pairs(&found.routes),
            strings(&[
                "POST /api/v2/notes",
                "DELETE /api/v2/notes/{note_id}",
                "GET /main/dashboard",
                "GET /ping",
            ])
        );
        let dashboard = find(&found, "GET", "/main/dashboard");
        assert_eq!(dashboard.file, "app/main/routes.py");
        assert!(
            dashboard.auth_hint,
            "the blueprint's before_request checks the session"
        );
        assert!(!find(&found, "GET", "/ping").auth_hint);
        let add = find(&found, "POST", "/api/v2/notes");
        assert_eq!(add.framework, "flask");
        assert_eq!(add.body_fields, strings(&["text"]));
    }

    #[test]
    fn flask_add_url_rule_method_views_and_restful_resources() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "app.py",
            r#"
from flask import Flask, request, jsonify
from flask.views import MethodView
from flask_restful import Api, Resource
from auth import token_required

app = Flask(__name__)
api = Api(app, prefix="/v1")


def list_users():
    return jsonify([])


class TaskAPI(MethodView):
    decorators = [token_required]

    def get(self, task_id):
        return jsonify({})

    def put(self, task_id):
        title = request.json.get("title")
        return jsonify({"title": title})


class Todo(Resource):
    def get(self, todo_id):
        return {}

    @token_required
    def delete(self, todo_id):
        return '', 204


app.add_url_rule('/users', 'list_users', list_users)
app.add_url_rule('/tasks/<int:task_id>', view_func=TaskAPI.as_view('task'))
api.add_resource(Todo, '/todos/<todo_id>', '/todo/<int:todo_id>')
"#,
        );
        let found = discover(dir.path());
        assert_eq!(
            pairs(&found.routes),
            strings(&[
                "GET /tasks/{task_id}",
                "PUT /tasks/{task_id}",
                "GET /users",
                "DELETE /v1/todo/{todo_id}",
                "GET /v1/todo/{todo_id}",
                "DELETE /v1/todos/{todo_id}",
                "GET /v1/todos/{todo_id}",
            ])
        );
        let put = find(&found, "PUT", "/tasks/{task_id}");
        assert!(
            put.auth_hint,
            "decorators = [token_required] on the view class"
        );
        assert_eq!(put.body_fields, strings(&["title"]));
        assert!(find(&found, "DELETE", "/v1/todos/{todo_id}").auth_hint);
        assert!(!find(&found, "GET", "/v1/todos/{todo_id}").auth_hint);
        // Without a converter an id is taken for a number.
        assert_eq!(
            find(&found, "GET", "/v1/todos/{todo_id}").params,
            vec![("todo_id".to_string(), ParamKind::Int)]
        );
    }

    const FASTAPI_MAIN: &str = r#"
from fastapi import FastAPI, Depends, HTTPException, Query
from typing import Optional, List
from sqlalchemy.orm import Session
from app.routers import items
from app.routers.users import router as users_router
from app.database import get_db

app = FastAPI(title="Todo API")

app.include_router(items.router, prefix="/api/v1")
app.include_router(users_router, prefix="/api/v1/users", tags=["users"])


@app.get("/")
async def root():
    return {"message": "Hello World"}


@app.get("/search")
def search(q: str, limit: int = 10, tags: Optional[List[str]] = Query(None), db: Session = Depends(get_db)):
    return []
"#;

    const FASTAPI_ITEMS: &str = r#"
from typing import List
from fastapi import APIRouter, Depends, HTTPException, status
from sqlalchemy.orm import Session

from ..schemas import Item, ItemCreate, ItemUpdate
from ..auth import get_current_user
from ..database import get_db

router = APIRouter(
    prefix="/items",
    tags=["items"],
)


@router.get("/", response_model=List[Item])
async def list_items(skip: int = 0, limit: int = 100, db: Session = Depends(get_db)):
    return []


@router.get("/{item_id}", response_model=Item)
async def get_item(item_id: int, db: Session = Depends(get_db)):
    return {}


@router.post("/", response_model=Item, status_code=status.HTTP_201_CREATED)
async def create_item(
    item: ItemCreate,
    db: Session = Depends(get_db),
    current_user: User = Depends(get_current_user),
):
    return item


@router.put("/{item_id}")
async def update_item(item_id: int, item: ItemUpdate, db: Session = Depends(get_db)):
    return item


@router.delete("/{item_uid}", status_code=204)
def delete_item(item_uid: str):
    return None


@router.get("/files/{file_path:path}")
def read_file(file_path: str):
    return file_path
"#;

    const FASTAPI_SCHEMAS: &str = r#"
from typing import Optional
from pydantic import BaseModel, Field


class ItemBase(BaseModel):
    title: str
    description: Optional[str] = None


class ItemCreate(ItemBase):
    priority: int = Field(1, ge=1, le=5)


class ItemUpdate(BaseModel):
    """Fields a client may change.

    secret: str
    """
    title: Optional[str] = None
    done: bool = False

    class Config:
        orm_mode = True


class Item(ItemBase):
    id: int
    owner_id: int
"#;

    const FASTAPI_USERS: &str = r#"
from fastapi import APIRouter, Request

router = APIRouter()


@router.get("/{user_id}")
def read_user(user_id):
    return {"id": user_id}


@router.post("/login")
async def login(request: Request):
    data = await request.json()
    username = data.get("username")
    password = data["password"]
    return {"token": "x"}
"#;

    #[test]
    fn fastapi_app_with_router_prefix_and_pydantic_body() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "main.py", FASTAPI_MAIN);
        write(dir.path(), "app/__init__.py", "");
        write(dir.path(), "app/routers/__init__.py", "");
        write(dir.path(), "app/routers/items.py", FASTAPI_ITEMS);
        write(dir.path(), "app/routers/users.py", FASTAPI_USERS);
        write(dir.path(), "app/schemas.py", FASTAPI_SCHEMAS);
        let found = discover(dir.path());
        assert_eq!(
            pairs(&found.routes),
            strings(&[
                "GET /",
                "GET /api/v1/items/",
                "POST /api/v1/items/",
                "GET /api/v1/items/files/{file_path}",
                "GET /api/v1/items/{item_id}",
                "PUT /api/v1/items/{item_id}",
                "DELETE /api/v1/items/{item_uid}",
                "POST /api/v1/users/login",
                "GET /api/v1/users/{user_id}",
                "GET /search",
            ])
        );
        assert!(found.routes.iter().all(|r| r.framework == "fastapi"));

        let search = find(&found, "GET", "/search");
        assert_eq!(search.query_fields, strings(&["q", "limit", "tags"]));
        assert!(!search.auth_hint, "Depends(get_db) is no auth");

        let list = find(&found, "GET", "/api/v1/items/");
        assert_eq!(list.query_fields, strings(&["skip", "limit"]));
        assert_eq!(list.file, "app/routers/items.py");

        let create = find(&found, "POST", "/api/v1/items/");
        assert_eq!(
            create.body_fields,
            strings(&["title", "description", "priority"])
        );
        assert!(create.query_fields.is_empty());
        assert!(
            create.auth_hint,
            "Depends(get_current_user) in the signature"
        );
        assert_eq!(create.line, 26);

        let update = find(&found, "PUT", "/api/v1/items/{item_id}");
        assert_eq!(update.params, vec![("item_id".to_string(), ParamKind::Int)]);
        assert_eq!(update.body_fields, strings(&["title", "done"]));
        assert!(!update.auth_hint);

        // `item_uid: str` overrides the guess from the name.
        let delete = find(&found, "DELETE", "/api/v1/items/{item_uid}");
        assert_eq!(
            delete.params,
            vec![("item_uid".to_string(), ParamKind::Str)]
        );
        let user = find(&found, "GET", "/api/v1/users/{user_id}");
        assert_eq!(user.params, vec![("user_id".to_string(), ParamKind::Int)]);

        let login = find(&found, "POST", "/api/v1/users/login");
        assert_eq!(login.body_fields, strings(&["username", "password"]));
        assert!(
            login.query_fields.is_empty(),
            "a Request parameter is not a query field"
        );
    }

    #[test]
    fn fastapi_nested_routers_router_dependencies_and_api_route() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "backend/app/main.py",
            r#"
import fastapi
from app.api import api_router

app = fastapi.FastAPI()
app.include_router(api_router, prefix="/api")
"#,
        );
        write(
            dir.path(),
            "backend/app/api.py",
            r#"
from fastapi import APIRouter, Depends
from app.endpoints import notes, admin
from app.security import verify_token

api_router = APIRouter()
api_router.include_router(notes.router, prefix="/notes")
api_router.include_router(admin.router, prefix="/admin", dependencies=[Depends(verify_token)])
"#,
        );
        write(
            dir.path(),
            "backend/app/endpoints/notes.py",
            r#"
from fastapi import APIRouter, Body

router = APIRouter()

@router.api_route("/{note_id}", methods=["GET", "PATCH"])
async def note(note_id: int, text: str = Body(None)):
    return {}

@router.get("")
def all_notes(page: int = 1):
    return []
"#,
        );
        write(
            dir.path(),
            "backend/app/endpoints/admin.py",
            r#"
from fastapi import APIRouter

router = APIRouter(prefix="/v1")

@router.get("/stats")
def stats():
    return {}
"#,
        );
        let found = discover(dir.path());
        assert_eq!(
            pairs(&found.routes),
            strings(&[
                "GET /api/admin/v1/stats",
                "GET /api/notes",
                "GET /api/notes/{note_id}",
                "PATCH /api/notes/{note_id}",
            ])
        );
        assert!(find(&found, "GET", "/api/admin/v1/stats").auth_hint);
        assert!(!find(&found, "GET", "/api/notes").auth_hint);
        assert_eq!(
            find(&found, "GET", "/api/notes").query_fields,
            strings(&["page"])
        );
        let patch = find(&found, "PATCH", "/api/notes/{note_id}");
        assert_eq!(patch.body_fields, strings(&["text"]));
        assert_eq!(patch.framework, "fastapi");
    }

    const EXPRESS_SERVER: &str = r#"
const express = require('express');
const cors = require('cors');
const itemRoutes = require('./routes/items');
const { authenticateToken } = require('./middleware/auth');

const app = express();
const PORT = process.env.PORT || 3000;

app.use(cors());
app.use(express.json());

app.use('/api/items', itemRoutes);
app.use('/api/users', require('./routes/users'));

app.get('/api/health', (req, res) => {
  res.json({ status: 'ok', url: 'http://localhost' });
});

app.post('/api/login', async (req, res) => {
  const { username, password } = req.body;
  if (!username || !password) {
    return res.status(400).json({ error: 'Missing credentials' });
  }
  res.json({ token: 'abc' });
});

app.get('/api/me', authenticateToken, (req, res) => {
  res.json(req.user);
});

app.route('/api/settings')
  .get((req, res) => res.json({}))
  .put(authenticateToken, (req, res) => {
    const theme = req.body.theme;
    res.json({ theme });
  });

/*
app.get('/api/old', (req, res) => res.send('old'));
*/
// app.delete('/api/everything', (req, res) => res.send('no'));
app.set('port', PORT);
console.log(app.get('port'));

app.listen(PORT, () => console.log(`Server running on port ${PORT}`));
"#;

    const EXPRESS_ITEMS: &str = r#"
const express = require('express');
const router = express.Router();
const itemController = require('../controllers/itemController');

router.get('/', itemController.getItems);
router.get('/:id', itemController.getItem);
router.post('/', itemController.createItem);
router.put('/:id(\\d+)', itemController.updateItem);
router.delete('/:id', itemController.deleteItem);

module.exports = router;
"#;

    const EXPRESS_CONTROLLER: &str = r#"
const Item = require('../models/Item');

exports.getItems = async (req, res) => {
  const { page = 1, limit = 10 } = req.query;
  const items = await Item.find().skip((page - 1) * limit).limit(limit);
  res.json(items);
};

exports.getItem = async (req, res) => {
  const item = await Item.findById(req.params.id);
  res.json(item);
};

exports.createItem = async (req, res) => {
  try {
    const { name, price } = req.body;
    const item = new Item({ name, price, category: req.body.category });
    await item.save();
    res.status(201).json(item);
  } catch (err) {
    res.status(500).json({ error: err.message });
  }
};

exports.updateItem = async (req, res) => {
  const item = await Item.findByIdAndUpdate(req.params.id, req.body, { new: true });
  res.json(item);
};

exports.deleteItem = async (req, res) => {
  await Item.findByIdAndDelete(req.params.id);
  res.status(204).end();
};
"#;

    const EXPRESS_USERS: &str = r#"
const { Router } = require('express');
const { protect } = require('../middleware/auth');

const router = Router();

router.use(protect);

router.get('/:userId/orders', async (req, res) => {
  const status = req.query.status;
  res.json([]);
});

module.exports = router;
"#;

    const EXPRESS_AUTH: &str = r#"
const jwt = require('jsonwebtoken');

function authenticateToken(req, res, next) {
  const authHeader = req.headers['authorization'];
  const token = authHeader && authHeader.split(' ')[1];
  if (!token) return res.sendStatus(401);
  jwt.verify(token, process.env.JWT_SECRET, (err, user) => {
    if (err) return res.sendStatus(403);
    req.user = user;
    next();
  });
}

module.exports = { authenticateToken, protect: authenticateToken };
"#;

    #[test]
    fn express_server_with_mounted_routers_and_controllers() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "server.js", EXPRESS_SERVER);
        write(dir.path(), "routes/items.js", EXPRESS_ITEMS);
        write(dir.path(), "routes/users.js", EXPRESS_USERS);
        write(
            dir.path(),
            "controllers/itemController.js",
            EXPRESS_CONTROLLER,
        );
        write(dir.path(), "middleware/auth.js", EXPRESS_AUTH);
        let found = discover(dir.path());
        assert_eq!(
            pairs(&found.routes),
            strings(&[
                "GET /api/health",
                "GET /api/items",
                "POST /api/items",
                "DELETE /api/items/{id}",
                "GET /api/items/{id}",
                "PUT /api/items/{id}",
                "POST /api/login",
                "GET /api/me",
                "GET /api/settings",
                "PUT /api/settings",
                "GET /api/users/{userId}/orders",
            ])
        );
        assert!(found.routes.iter().all(|r| r.framework == "express"));

        let health = find(&found, "GET", "/api/health");
        assert_eq!((health.file.as_str(), health.line), ("server.js", 16));
        assert!(!health.auth_hint);

        let login = find(&found, "POST", "/api/login");
        assert_eq!(login.body_fields, strings(&["username", "password"]));
        assert!(!login.auth_hint);

        assert!(
            find(&found, "GET", "/api/me").auth_hint,
            "authenticateToken middleware"
        );
        assert!(!find(&found, "GET", "/api/settings").auth_hint);
        let settings = find(&found, "PUT", "/api/settings");
        assert!(settings.auth_hint);
        assert_eq!(settings.body_fields, strings(&["theme"]));
        assert_eq!(settings.line, 34);

        let list = find(&found, "GET", "/api/items");
        assert_eq!(list.file, "routes/items.js");
        assert_eq!(list.query_fields, strings(&["page", "limit"]));
        let create = find(&found, "POST", "/api/items");
        assert_eq!(create.body_fields, strings(&["name", "price", "category"]));
        let update = find(&found, "PUT", "/api/items/{id}");
        assert_eq!(update.params, vec![("id".to_string(), ParamKind::Int)]);

        let orders = find(&found, "GET", "/api/users/{userId}/orders");
        assert!(orders.auth_hint, "router.use(protect) guards the router");
        assert_eq!(orders.params, vec![("userId".to_string(), ParamKind::Int)]);
        assert_eq!(orders.query_fields, strings(&["status"]));
    }

    #[test]
    fn express_typescript_with_es_module_imports() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "backend/src/index.ts",
            r#"
import express, { Express, Request, Response } from 'express';
import notesRouter from './routes/notes.js';
import * as admin from './routes/admin';

const app: Express = express();
app.use(express.json());
app.use('/api/notes', notesRouter);
app.use('/admin', requireAdmin, admin.default);

app.get('/', (req: Request, res: Response) => {
  res.send('ok');
});

export default app;
"#,
        );
        write(
            dir.path(),
            "backend/src/routes/notes.ts",
            r#"
import { Router, Request, Response } from 'express';

const router = Router();

router.get('/:slug', async (req: Request, res: Response): Promise<void> => {
  res.json({ slug: req.params.slug, q: req.query.q });
});

router.patch('/:noteId?', (req: Request, res: Response) => {
  const body = req.body as { title?: string };
  res.json({ title: body.title, pinned: req.body?.pinned });
});

export default router;
"#,
        );
        let found = discover(dir.path());
        assert_eq!(
            pairs(&found.routes),
            strings(&[
                "GET /",
                "PATCH /api/notes/{noteId}",
                "GET /api/notes/{slug}",
            ])
        );
        let get = find(&found, "GET", "/api/notes/{slug}");
        assert_eq!(get.params, vec![("slug".to_string(), ParamKind::Str)]);
        assert_eq!(get.query_fields, strings(&["q"]));
        let patch = find(&found, "PATCH", "/api/notes/{noteId}");
        assert_eq!(patch.body_fields, strings(&["title", "pinned"]));
        assert_eq!(patch.file, "backend/src/routes/notes.ts");
    }

    #[test]
    fn react_client_code_yields_no_routes() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "frontend/src/App.jsx",
            r#"
import { useEffect, useState } from 'react';

export default function App() {
  const [items, setItems] = useState([]);
  useEffect(() => {
    fetch('/api/items').then((r) => r.json()).then(setItems);
  }, []);
  const add = async (name) => {
    await fetch('/api/items', { method: 'POST', body: JSON.stringify({ name }) });
  };
  return <ul>{items.map((i) => <li key={i.id}>{i.name}</li>)}</ul>;
}
"#,
        );
        write(
            dir.path(),
            "frontend/src/api.js",
            r#"
import axios from 'axios';

const api = axios.create({ baseURL: '/api' });

export const getItems = () => api.get('/items');
export const createItem = (item) => api.post('/items', item);
export const updateItem = (id, item) => axios.put(`/api/items/${id}`, item, { headers: {} });
export async function deleteItem(id) {
  const response = await fetch(`/api/items/${id}`, { method: 'DELETE' });
  return response.ok;
}
"#,
        );
        write(
            dir.path(),
            "frontend/vite.config.js",
            "import { defineConfig } from 'vite';\nexport default defineConfig({ server: { proxy: { '/api': 'http://localhost:5000' } } });\n",
        );
        write(
            dir.path(),
            "frontend/node_modules/express/lib/router.js",
            "const router = express.Router();\nrouter.get('/from-a-dependency', (req, res) => res.end());\n",
        );
        let found = discover(dir.path());
        assert!(found.routes.is_empty(), "{:#?}", found.routes);
        assert_eq!(
            found.files_read, 2,
            "api.js and vite.config.js; .jsx is not read"
        );
        assert!(found
            .notes
            .contains(&"skipped frontend/node_modules".to_string()));
    }

    #[test]
    fn symlinks_are_not_followed() {
        let outside = tempfile::tempdir().unwrap();
        write(
            outside.path(),
            "evil/app.py",
            "from flask import Flask\napp = Flask(__name__)\n@app.route('/outside')\ndef o():\n    return ''\n",
        );
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "app.py",
            "from flask import Flask\napp = Flask(__name__)\n\n@app.route('/inside')\ndef i():\n    return ''\n",
        );
        std::os::unix::fs::symlink(outside.path().join("evil"), dir.path().join("linked")).unwrap();
        std::os::unix::fs::symlink(
            outside.path().join("evil/app.py"),
            dir.path().join("other.py"),
        )
        .unwrap();
        let found = discover(dir.path());
        assert_eq!(pairs(&found.routes), strings(&["GET /inside"]));
        assert_eq!(found.files_read, 1);
        assert!(found
            .notes
            .contains(&"skipped symbolic link: linked".to_string()));
        assert!(found
            .notes
            .contains(&"skipped symbolic link: other.py".to_string()));
    }

    #[test]
    fn dependency_virtualenv_build_and_hidden_folders_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let route = |path: &str| {
            format!("from flask import Flask\napp = Flask(__name__)\n@app.route('{path}')\ndef f():\n    return ''\n")
        };
        write(dir.path(), "app.py", &route("/real"));
        for folder in [
            "venv",
            ".venv",
            "__pycache__",
            "lib/site-packages",
            "dist",
            "build",
            ".git",
            "node_modules",
        ] {
            write(dir.path(), &format!("{folder}/x.py"), &route("/not-mine"));
        }
        write(dir.path(), "env/pyvenv.cfg", "home = /usr/bin\n");
        write(dir.path(), "env/lib/flask_app.py", &route("/from-env"));
        let found = discover(dir.path());
        assert_eq!(pairs(&found.routes), strings(&["GET /real"]));
        assert_eq!(found.files_read, 1);
        for note in [
            "skipped venv",
            "skipped lib/site-packages",
            "skipped dist",
            "skipped build",
            "skipped env (a virtualenv)",
        ] {
            assert!(
                found.notes.contains(&note.to_string()),
                "{note} in {:?}",
                found.notes
            );
        }
    }

    #[test]
    fn large_files_are_skipped_with_a_note() {
        let dir = tempfile::tempdir().unwrap();
        let mut big = String::from("from flask import Flask\napp = Flask(__name__)\n@app.route('/big')\ndef big():\n    return ''\n");
        while big.len() as u64 <= MAX_FILE_BYTES {
            big.push_str("# padding padding padding padding padding padding padding padding\n");
        }
        write(dir.path(), "big.py", &big);
        write(
            dir.path(),
            "small.py",
            "from flask import Flask\napp = Flask(__name__)\n@app.route('/small')\ndef small():\n    return ''\n",
        );
        let found = discover(dir.path());
        assert_eq!(pairs(&found.routes), strings(&["GET /small"]));
        assert_eq!(found.files_read, 1);
        assert!(found.notes.contains(&"file too large: big.py".to_string()));
    }

    #[test]
    fn routes_are_capped_deduplicated_and_sorted() {
        let dir = tempfile::tempdir().unwrap();
        let app = |from: usize, to: usize| {
            let mut text = String::from("from flask import Flask\napp = Flask(__name__)\n");
            for i in from..to {
                text.push_str(&format!(
                    "\n@app.route('/r{i:04}')\ndef r{i}():\n    return ''\n"
                ));
            }
            text
        };
        write(dir.path(), "a.py", &app(0, 600));
        write(dir.path(), "b.py", &app(600, 1_100));
        write(dir.path(), "generated.py", &app(2_000, 3_100));
        let found = discover(dir.path());
        assert_eq!(found.routes.len(), MAX_ROUTES);
        assert_eq!(found.routes[0].path, "/r0000");
        assert!(found
            .notes
            .iter()
            .any(|n| n.starts_with("route limit reached") && n.contains("left out 1100 more")));
        assert!(found.notes.contains(&too_many_routes_in("generated.py")));

        let dir = tempfile::tempdir().unwrap();
        let twice = |name: &str| {
            format!("from flask import Flask\napp = Flask(__name__)\n@app.route('/b')\n@app.route('/a', methods=['POST', 'GET'])\ndef {name}():\n    return ''\n")
        };
        write(dir.path(), "first.py", &twice("one"));
        write(dir.path(), "second.py", &twice("two"));
        let found = discover(dir.path());
        assert_eq!(
            pairs(&found.routes),
            strings(&["GET /a", "POST /a", "GET /b"])
        );
        assert!(found.routes.iter().all(|r| r.file == "first.py"));
    }

    #[test]
    fn openapi_3_document() {
        let doc = serde_json::json!({
            "openapi": "3.0.2",
            "info": {"title": "Todo API", "version": "1.0"},
            "servers": [{"url": "http://localhost:8000/api/"}],
            "security": [{"bearerAuth": []}],
            "paths": {
                "/items/{item_id}": {
                    "parameters": [{"$ref": "#/components/parameters/ItemId"}],
                    "get": {"responses": {"200": {"description": "ok"}}},
                    "put": {
                        "requestBody": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ItemUpdate"}}}},
                        "responses": {}
                    }
                },
                "/items": {
                    "get": {
                        "security": [],
                        "parameters": [
                            {"name": "skip", "in": "query", "schema": {"type": "integer"}},
                            {"name": "X-Trace", "in": "header", "schema": {"type": "string"}}
                        ],
                        "responses": {}
                    },
                    "post": {
                        "requestBody": {"$ref": "#/components/requestBodies/NewItem"},
                        "responses": {}
                    }
                },
                "/files/{name}": {
                    "get": {
                        "parameters": [{"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}],
                        "responses": {}
                    }
                }
            },
            "components": {
                "parameters": {
                    "ItemId": {"name": "item_id", "in": "path", "required": true, "schema": {"type": "integer"}}
                },
                "requestBodies": {
                    "NewItem": {"content": {"application/json": {"schema": {
                        "allOf": [{"$ref": "#/components/schemas/ItemBase"}, {"properties": {"priority": {"type": "integer"}}}]
                    }}}}
                },
                "schemas": {
                    "ItemBase": {"type": "object", "properties": {"title": {"type": "string"}, "done": {"type": "boolean"}}},
                    "ItemUpdate": {"type": "object", "properties": {"title": {"type": "string"}}}
                }
            }
        });
        let routes = from_openapi(&doc);
        assert_eq!(
            pairs(&routes),
            strings(&[
                "GET /api/files/{name}",
                "GET /api/items",
                "POST /api/items",
                "GET /api/items/{item_id}",
                "PUT /api/items/{item_id}",
            ])
        );
        let get = routes
            .iter()
            .find(|r| r.method == "GET" && r.path == "/api/items/{item_id}")
            .unwrap();
        assert_eq!(get.params, vec![("item_id".to_string(), ParamKind::Int)]);
        assert_eq!(
            (get.file.as_str(), get.line, get.framework),
            ("openapi", 0, "openapi")
        );
        assert!(get.auth_hint, "the document's security applies");
        let list = routes
            .iter()
            .find(|r| r.method == "GET" && r.path == "/api/items")
            .unwrap();
        assert_eq!(list.query_fields, strings(&["skip"]));
        assert!(!list.auth_hint, "`security: []` opts out");
        let create = routes.iter().find(|r| r.method == "POST").unwrap();
        // Properties come in the JSON object's key order (sorted by serde_json).
        assert_eq!(create.body_fields, strings(&["done", "title", "priority"]));
        let put = routes.iter().find(|r| r.method == "PUT").unwrap();
        assert_eq!(put.body_fields, strings(&["title"]));
        let file = routes
            .iter()
            .find(|r| r.path == "/api/files/{name}")
            .unwrap();
        assert_eq!(file.params, vec![("name".to_string(), ParamKind::Str)]);
    }

    #[test]
    fn swagger_2_document() {
        let doc = serde_json::json!({
            "swagger": "2.0",
            "basePath": "/v1",
            "paths": {
                "/pets/{petId}": {
                    "delete": {"parameters": [{"name": "petId", "in": "path", "type": "integer"}]},
                    "post": {"parameters": [
                        {"name": "petId", "in": "path", "type": "string"},
                        {"name": "name", "in": "formData", "type": "string"}
                    ]}
                },
                "/pets": {
                    "post": {
                        "security": [{"api_key": []}],
                        "parameters": [{"name": "body", "in": "body", "schema": {"$ref": "#/definitions/Pet"}}]
                    }
                }
            },
            "definitions": {"Pet": {"properties": {"name": {"type": "string"}, "tag": {"type": "string"}}}}
        });
        let routes = from_openapi(&doc);
        assert_eq!(
            pairs(&routes),
            strings(&[
                "POST /v1/pets",
                "DELETE /v1/pets/{petId}",
                "POST /v1/pets/{petId}"
            ])
        );
        assert_eq!(routes[0].body_fields, strings(&["name", "tag"]));
        assert!(routes[0].auth_hint);
        assert_eq!(
            routes[1].params,
            vec![("petId".to_string(), ParamKind::Int)]
        );
        assert_eq!(
            routes[2].params,
            vec![("petId".to_string(), ParamKind::Str)]
        );
        assert_eq!(routes[2].body_fields, strings(&["name"]));
        assert!(from_openapi(&serde_json::json!({"openapi": "3.0.0"})).is_empty());
    }

    #[test]
    fn paths_are_normalized_per_framework() {
        let none = HashMap::new();
        let (path, params) =
            normalize_path("/items/<int:item_id>/<name>", PathStyle::Python, &none);
        assert_eq!(path, "/items/{item_id}/{name}");
        assert_eq!(
            params,
            vec![
                ("item_id".to_string(), ParamKind::Int),
                ("name".to_string(), ParamKind::Str)
            ]
        );
        let (path, params) = normalize_path(
            "/u/<uuid:uid>/<float:x>/<int(signed=True):n>",
            PathStyle::Python,
            &none,
        );
        assert_eq!(path, "/u/{uid}/{x}/{n}");
        assert_eq!(
            params.iter().map(|p| p.1).collect::<Vec<_>>(),
            vec![ParamKind::Str, ParamKind::Str, ParamKind::Int]
        );
        let declared = HashMap::from([("item_id".to_string(), ParamKind::Str)]);
        let (_, params) = normalize_path("/items/{item_id}", PathStyle::Python, &declared);
        assert_eq!(params, vec![("item_id".to_string(), ParamKind::Str)]);
        let (path, params) =
            normalize_path("/users/:userId/posts/:slug?/", PathStyle::Express, &none);
        assert_eq!(path, "/users/{userId}/posts/{slug}");
        assert_eq!(
            params,
            vec![
                ("userId".to_string(), ParamKind::Int),
                ("slug".to_string(), ParamKind::Str)
            ]
        );
        assert_eq!(
            normalize_path("/at/12:30", PathStyle::Express, &none).0,
            "/at/12:30"
        );
        assert_eq!(normalize_path("", PathStyle::Python, &none).0, "/");
        assert_eq!(join_paths("/api/", "/items"), "/api/items");
        assert_eq!(join_paths("/api", ""), "/api");
        assert_eq!(kind_from_name("uuid"), ParamKind::Str);
        assert_eq!(kind_from_name("postId"), ParamKind::Int);
    }

    #[test]
    fn scanners_handle_literals_comments_and_arguments() {
        assert_eq!(string_literal("'/x'"), Some("/x".to_string()));
        assert_eq!(string_literal("r\"/x\""), Some("/x".to_string()));
        assert_eq!(string_literal("f'/x/{y}'"), None);
        assert_eq!(string_literal("`/x/${y}`"), None);
        assert_eq!(string_literal("PREFIX + '/x'"), None);
        assert_eq!(string_literal("'/a' + '/b'"), None);
        assert_eq!(
            split_top_level("'/x', methods=['GET', 'POST'], f(a, b),"),
            vec!["'/x'", "methods=['GET', 'POST']", "f(a, b)"]
        );
        assert_eq!(string_list("(\"POST\",)"), Some(strings(&["POST"])));
        let py = blank_python_comments(
            "a = '#not' # comment\n\"\"\"doc\n@app.route('/x')\"\"\"\nb = 1\n",
        );
        assert!(py.contains("'#not'") && !py.contains("comment") && !py.contains("@app"));
        assert_eq!(py.lines().count(), 4, "lines are kept");
        let js = blank_script_comments(
            "const u = 'http://x'; // gone\n/* gone\n */ const r = /\\/\\//;\n",
        );
        assert!(js.contains("'http://x'") && !js.contains("gone") && js.contains("const r"));
        assert_eq!(
            definition_name("exports.createItem = asyncHandler(async"),
            Some("createItem".into())
        );
        assert_eq!(definition_name("router.get('/', async"), None);
        assert_eq!(definition_name("  if"), None);
        assert!(module_matches("routes/index", "routes", true));
        assert!(module_matches("routes/index", "routes/index", true));
        assert!(module_matches("app/main/__init__", "app/main", false));
        assert!(module_matches(
            "backend/app/routers/items",
            "app/routers/items",
            false
        ));
        assert!(!module_matches(
            "backend/app/routers/items",
            "app/routers/items",
            true
        ));
        assert!(!module_matches(
            "myapp/routers/items",
            "app/routers/items",
            false
        ));
    }
}
