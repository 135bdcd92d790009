//! The dynamic analyzer: probes a running app over HTTP. It walks the template's
//! endpoints in order (creating resources, remembering ids, codes and tokens), then
//! checks security headers, cookie flags, CORS, information disclosure, exposed files,
//! reflected input, error-based SQL injection, missing authentication, and whether each
//! endpoint answers as the template says.
//!
//! Findings carry the check as their rule (`security_headers`, `missing_auth`, …) and
//! `METHOD /path` as their location.

use super::catalog::{Endpoint, Template};
use super::finding::{Finding, Location, Severity, ToolRun, ToolStatus};
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::Method;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

pub const ANALYZER: &str = "dynamic";
const TOOL: &str = "assay-probe";
const PROBE_ORIGIN: &str = "https://assay-probe.invalid";
const MARKER: &str = "assay<b>x7q</b>";
const SQL_ERRORS: &[&str] = &[
    "sqlite3.OperationalError",
    "unrecognized token",
    "syntax error",
    "OperationalError",
    "psycopg2.errors",
    "You have an error in your SQL syntax",
    "SQLSTATE",
    "near \"",
];
const DEBUGGER_MARKERS: &[&str] = &[
    "Werkzeug Debugger",
    "__debugger__",
    "The debugger caught an exception",
];
const TRACEBACK_MARKERS: &[&str] = &[
    "Traceback (most recent call last)",
    "File \"/",
    "line ",
    "Error:",
];

pub struct DynamicOutcome {
    pub runs: Vec<ToolRun>,
    pub findings: Vec<Finding>,
    /// Requests sent, for the record.
    pub requests: usize,
}

struct Probe {
    client: reqwest::Client,
    base: String,
    findings: Vec<Finding>,
    seen: BTreeSet<(String, String)>,
    requests: usize,
    context: HashMap<String, String>,
    cookies: Vec<(String, String)>,
    /// The session: cookies the app set, sent back as a browser would (session logins).
    jar: BTreeMap<String, String>,
    banner_reported: bool,
    cors_reported: bool,
    health: String,
    /// The template functional findings were checked against, named in each.
    template: String,
}

struct Answer {
    status: u16,
    headers: HeaderMap,
    body: String,
}

fn location(method: &str, path: &str) -> Location {
    Location {
        path: format!("{method} {path}"),
        line: None,
        column: None,
        end_line: None,
    }
}

/// The most of one answer's body a probe reads: more than any page an app sends a probe;
/// an app that answers with a gigabyte (or forever) must not make the worker hold it.
pub const MAX_PROBE_BODY: usize = 1 << 20;

/// The body's first `cap` bytes, as text (lossy); the rest is never read.
async fn read_capped(resp: reqwest::Response, cap: usize) -> String {
    crate::body::read_capped(resp, cap).await.text()
}

impl Probe {
    /// A request in the probe's session: its cookies and, when given, its bearer token.
    async fn send(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        token: Option<&str>,
    ) -> Option<Answer> {
        self.send_as(method, path, body, token, true).await
    }

    /// A request with no credentials at all: no token, no cookies.
    async fn send_anonymous(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Option<Answer> {
        self.send_as(method, path, body, None, false).await
    }

    async fn send_as(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        token: Option<&str>,
        with_cookies: bool,
    ) -> Option<Answer> {
        let method_v = Method::from_bytes(method.as_bytes()).unwrap_or(Method::GET);
        let mut req = self
            .client
            .request(method_v, format!("{}{}", self.base, path))
            .header("Origin", PROBE_ORIGIN);
        if let Some(b) = body {
            req = req.json(b);
        }
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(header) = cookie_header(&self.jar).filter(|_| with_cookies) {
            req = req.header("Cookie", header);
        }
        self.requests += 1;
        let resp = req.send().await.ok()?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = read_capped(resp, MAX_PROBE_BODY).await;
        let answer = Answer {
            status,
            headers,
            body,
        };
        self.passive_checks(method, path, &answer);
        Some(answer)
    }

    /// Reported once per (rule, location).
    #[allow(clippy::too_many_arguments)]
    fn report(
        &mut self,
        rule: &str,
        cwe: Option<u32>,
        severity: Severity,
        method: &str,
        path: &str,
        message: String,
    ) {
        let loc = location(method, strip_query(path));
        // One finding per weakness and place: a rule may find several (each cookie flag).
        if !self
            .seen
            .insert((format!("{rule}/{cwe:?}"), loc.path.clone()))
        {
            return;
        }
        let message = if rule == "functional" {
            format!("{message} (template `{}`)", self.template)
        } else {
            message
        };
        self.findings.push(Finding::new(
            ANALYZER,
            TOOL,
            rule,
            cwe,
            severity,
            severity.as_str(),
            &message,
            loc,
        ));
    }

    /// Checks every response gets: CORS, cookies, banners, tracebacks.
    fn passive_checks(&mut self, method: &str, path: &str, a: &Answer) {
        let header = |name: &str| {
            a.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        // CORS is configured app-wide: one finding, where it was first seen on the API.
        let api_path = !path.trim_start_matches('/').is_empty() && strip_query(path) != self.health;
        if let Some(origin) =
            header("access-control-allow-origin").filter(|_| api_path && !self.cors_reported)
        {
            self.cors_reported = true;
            let credentials = header("access-control-allow-credentials")
                .is_some_and(|v| v.eq_ignore_ascii_case("true"));
            if origin == PROBE_ORIGIN && credentials {
                self.report("cors", Some(942), Severity::High, method, path,
                    "any Origin is echoed in Access-Control-Allow-Origin together with Allow-Credentials: true; other sites can read authenticated responses".into());
            } else if origin == PROBE_ORIGIN || origin == "*" {
                self.report(
                    "cors",
                    Some(942),
                    Severity::Low,
                    method,
                    path,
                    format!("Access-Control-Allow-Origin: {origin} lets any site read responses"),
                );
            }
        }
        for cookie in a.headers.get_all("set-cookie") {
            let Ok(text) = cookie.to_str() else { continue };
            let name = keep_cookie(&mut self.jar, text);
            let lower = text.to_ascii_lowercase();
            self.cookies.push((name.clone(), text.to_string()));
            // Each flag its own weakness: script can read it, it travels in clear, other
            // sites' requests carry it.
            for (flag, cwe, severity) in [
                ("httponly", 1004, Severity::Medium),
                ("secure", 614, Severity::Low),
                ("samesite", 1275, Severity::Low),
            ] {
                let set = lower.split(';').skip(1).any(|attr| {
                    attr.trim()
                        .split('=')
                        .next()
                        .is_some_and(|a| a.trim() == flag)
                });
                if !set {
                    let shown = match flag {
                        "httponly" => "HttpOnly",
                        "secure" => "Secure",
                        _ => "SameSite",
                    };
                    self.report(
                        "cookie_flags",
                        Some(cwe),
                        severity,
                        method,
                        path,
                        format!("cookie `{name}` is set without {shown}"),
                    );
                }
            }
        }
        if let Some(server) = header("server") {
            if !self.banner_reported && server.chars().any(|c| c.is_ascii_digit()) {
                self.banner_reported = true;
                self.report(
                    "info_disclosure",
                    Some(200),
                    Severity::Low,
                    method,
                    path,
                    format!("the Server header reveals software versions: `{server}`"),
                );
            }
        }
        if DEBUGGER_MARKERS.iter().any(|m| a.body.contains(m)) {
            self.report(
                "info_disclosure",
                Some(489),
                Severity::Critical,
                method,
                path,
                "an error page exposes the interactive Werkzeug debugger (remote code execution)"
                    .into(),
            );
        } else if a.status >= 500
            && TRACEBACK_MARKERS
                .iter()
                .filter(|m| a.body.contains(*m))
                .count()
                >= 2
        {
            self.report(
                "info_disclosure",
                Some(209),
                Severity::High,
                method,
                path,
                "an error response contains a stack trace".into(),
            );
        }
    }
}

fn strip_query(path: &str) -> &str {
    path.split('?').next().unwrap_or(path)
}

/// `/api/notes/<id>` or `/r/{code}` → the parameter names.
fn path_params(path: &str) -> Vec<String> {
    path.split('/')
        .filter_map(|seg| {
            seg.strip_prefix('<')
                .and_then(|s| s.strip_suffix('>'))
                .or_else(|| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
                .map(|s| s.rsplit(':').next().unwrap_or(s).to_string())
        })
        .collect()
}

pub(crate) fn fill_path(path: &str, context: &HashMap<String, String>) -> String {
    path.split('/')
        .map(|seg| {
            let name = seg
                .strip_prefix('<')
                .and_then(|s| s.strip_suffix('>'))
                .or_else(|| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')));
            match name {
                Some(n) => {
                    let n = n.rsplit(':').next().unwrap_or(n);
                    context.get(n).cloned().unwrap_or_else(|| "1".into())
                }
                None => seg.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// A plausible body from a template shape such as `{ title = "string", done = "boolean?" }`.
pub(crate) fn sample_body(shape: &toml::Table, unique: &str) -> Value {
    let mut body = Map::new();
    for (field, kind) in shape {
        let kind = kind.as_str().unwrap_or("string").trim_end_matches('?');
        let (kind, list) = match kind.strip_suffix("[]") {
            Some(inner) => (inner, true),
            None => (kind, false),
        };
        let value = match kind {
            "integer" | "int" => Value::from(1),
            "number" | "float" => Value::from(1.5),
            "boolean" | "bool" => Value::from(false),
            _ if field.contains("email") => Value::from(format!("assay-{unique}@example.com")),
            _ if field.contains("url") || field.contains("link") => {
                Value::from(format!("https://example.com/{unique}"))
            }
            _ if field.contains("password") => Value::from(format!("Assay-{unique}-pw!")),
            _ if field.contains("user") || field.contains("name") => {
                Value::from(format!("assay-{unique}"))
            }
            _ if field.contains("city") => Value::from("London"),
            _ => Value::from(format!("assay probe {unique}")),
        };
        body.insert(
            field.clone(),
            if list {
                Value::Array(vec![value])
            } else {
                value
            },
        );
    }
    Value::Object(body)
}

pub(crate) fn remember(context: &mut HashMap<String, String>, body: &str) {
    let Ok(v) = serde_json::from_str::<Value>(body) else {
        return;
    };
    let obj = match &v {
        Value::Object(o) => Some(o),
        Value::Array(a) => a.first().and_then(|x| x.as_object()),
        _ => None,
    };
    for (k, val) in obj.into_iter().flatten() {
        let text = match val {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => continue,
        };
        context.insert(k.clone(), text);
    }
}

/// The bearer token a login answered with (`token`, `access_token`), once remembered.
pub(crate) fn token_in(context: &HashMap<String, String>) -> Option<String> {
    context
        .get("token")
        .or_else(|| context.get("access_token"))
        .filter(|t| header_safe(t))
        .cloned()
}

/// What can go into a request header as it is: visible ASCII, bounded. An app's token or
/// cookie that is not is not sent (it would fail every later request).
fn header_safe(value: &str) -> bool {
    !value.is_empty() && value.len() < 4096 && value.bytes().all(|b| b.is_ascii_graphic())
}

/// Keep the cookie a `Set-Cookie` header sets, as a browser would: bounded, so an app
/// cannot make a session grow without end. Returns the cookie's name.
pub(crate) fn keep_cookie(jar: &mut BTreeMap<String, String>, set_cookie: &str) -> String {
    let name = set_cookie
        .split('=')
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    if let Some((_, value)) = set_cookie.split(';').next().and_then(|p| p.split_once('=')) {
        let value = value.trim();
        let name_ok = !name.is_empty() && header_safe(&name) && !name.contains(['=', ';', ',']);
        if jar.len() < 32
            && name_ok
            && (value.is_empty() || header_safe(value))
            && !value.contains([';', ','])
        {
            jar.insert(name.clone(), value.to_string());
        }
    }
    name
}

/// The `Cookie` header a session's cookies make, or `None` without any.
pub(crate) fn cookie_header(jar: &BTreeMap<String, String>) -> Option<String> {
    (!jar.is_empty()).then(|| {
        jar.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    })
}

/// Where a route comes in a walk of an app: signing up, logging in, creating, reading,
/// changing, deleting, and logging out last (a walk that logged out first would probe
/// the rest without its session).
pub(crate) fn walk_rank(method: &str, path: &str) -> u8 {
    let p = path.to_ascii_lowercase();
    let logs_out = ["logout", "log-out", "signout", "sign-out", "log_out"]
        .iter()
        .any(|w| p.contains(w));
    match method {
        _ if logs_out => 7,
        "POST" if p.contains("register") || p.contains("signup") || p.contains("sign-up") => 0,
        "POST" if p.contains("login") || p.contains("token") || p.contains("auth") => 1,
        "POST" => 2,
        "GET" => 3,
        "PUT" | "PATCH" => 4,
        "DELETE" => 6,
        _ => 5,
    }
}

/// What walking an app's POST routes left: the ids and codes it created, the session
/// cookies it was given, the bearer token a login answered with.
#[derive(Debug, Default)]
pub struct Session {
    pub context: HashMap<String, String>,
    pub jar: BTreeMap<String, String>,
    pub token: Option<String>,
    /// The routes walked, with what each answered (`POST /login → 200`).
    pub walked: Vec<String>,
}

impl Session {
    pub fn logged_in(&self) -> bool {
        self.token.is_some() || !self.jar.is_empty()
    }

    /// What to send with each request to be this session: its cookies, its token.
    pub fn headers(&self) -> Vec<(String, String)> {
        let mut headers = Vec::new();
        if let Some(cookie) = cookie_header(&self.jar) {
            headers.push(("Cookie".to_string(), cookie));
        }
        if let Some(token) = &self.token {
            headers.push(("Authorization".to_string(), format!("Bearer {token}")));
        }
        headers
    }

    /// How it is logged in, for the record.
    pub fn describe(&self) -> Value {
        serde_json::json!({
            "logged_in": self.logged_in(),
            "cookies": self.jar.keys().collect::<Vec<_>>(),
            "bearer_token": self.token.is_some(),
            "walked": self.walked,
        })
    }
}

/// Sign up, log in and create what the template's read routes need, as the functional
/// walk does (sign-up and login first, never a logout), keeping the session the app
/// gives: what the load test then loads the protected routes with.
pub async fn sign_in_and_create(base_url: &str, template: &Template) -> Session {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("HTTP client builds");
    let base = base_url.trim_end_matches('/');
    let unique = format!("{:06x}", rand::random::<u32>() & 0xffffff);
    let mut posts: Vec<&Endpoint> = template
        .endpoints
        .iter()
        .filter(|e| e.method == "POST" && walk_rank(&e.method, &e.path) < 7)
        .collect();
    posts.sort_by_key(|e| walk_rank(&e.method, &e.path));
    let mut session = Session::default();
    for e in posts {
        let path = fill_path(&e.path, &session.context);
        let mut req = client.post(format!("{base}{path}"));
        if let Some(shape) = &e.request {
            req = req.json(&sample_body(shape, &unique));
        }
        for (name, value) in session.headers() {
            req = req.header(name, value);
        }
        let Ok(resp) = req.send().await else {
            session.walked.push(format!("POST {} → no answer", e.path));
            continue;
        };
        session
            .walked
            .push(format!("POST {} → {}", e.path, resp.status().as_u16()));
        for cookie in resp.headers().get_all("set-cookie") {
            if let Ok(text) = cookie.to_str() {
                keep_cookie(&mut session.jar, text);
            }
        }
        let text = read_capped(resp, MAX_PROBE_BODY).await;
        remember(&mut session.context, &text);
        session.token = token_in(&session.context).or(session.token.take());
    }
    session
}

/// The endpoint's path with its parameters filled from `context` and its query
/// parameters given plausible values: a request that should succeed.
pub(crate) fn concrete_path(e: &Endpoint, context: &HashMap<String, String>) -> String {
    let path = fill_path(&e.path, context);
    let q = query_params(e);
    if q.is_empty() {
        return path;
    }
    let pairs: Vec<String> = q
        .iter()
        .map(|k| {
            format!(
                "{k}={}",
                if k.contains("city") {
                    "London"
                } else {
                    "assay"
                }
            )
        })
        .collect();
    format!("{path}?{}", pairs.join("&"))
}

pub(crate) fn query_params(e: &Endpoint) -> Vec<String> {
    e.query
        .as_ref()
        .map(|q| q.keys().cloned().collect())
        .unwrap_or_default()
}

/// Probe the app at `base_url` as `template` describes it. `app_dir` (when known) lists
/// the files that must not be served.
pub async fn probe(
    base_url: &str,
    template: &Template,
    app_dir: Option<&Path>,
    health: &str,
) -> DynamicOutcome {
    let started = Instant::now();
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("HTTP client builds");
    let unique = format!("{:06x}", rand::random::<u32>() & 0xffffff);
    let mut p = Probe {
        client,
        base: base_url.trim_end_matches('/').to_string(),
        findings: Vec::new(),
        seen: BTreeSet::new(),
        requests: 0,
        context: HashMap::new(),
        cookies: Vec::new(),
        jar: BTreeMap::new(),
        banner_reported: false,
        cors_reported: false,
        health: health.to_string(),
        template: template.name.clone(),
    };
    let mut checks: BTreeMap<&'static str, (ToolStatus, String)> = BTreeMap::new();

    // 1. Functional walk, in template order; remembers what it creates.
    let mut token: Option<String> = None;
    let mut functional_issues = 0;
    for e in &template.endpoints {
        let body = e.request.as_ref().map(|shape| sample_body(shape, &unique));
        let path = concrete_path(e, &p.context);
        if e.found_in_code {
            // No specification to hold it to: walked for what it creates and tells.
            if let Some(a) = p
                .send(&e.method, &path, body.as_ref(), token.as_deref())
                .await
            {
                remember(&mut p.context, &a.body);
                token = token_in(&p.context).or(token);
            }
            continue;
        }
        let Some(a) = p
            .send(&e.method, &path, body.as_ref(), token.as_deref())
            .await
        else {
            functional_issues += 1;
            p.report(
                "functional",
                None,
                Severity::Medium,
                &e.method,
                &e.path,
                "no answer (connection failed or timed out)".into(),
            );
            continue;
        };
        remember(&mut p.context, &a.body);
        token = token_in(&p.context).or(token);
        let expected = e.response.status;
        let ok = a.status == expected
            || (expected / 100 == 2 && a.status / 100 == 2 && e.method != "POST");
        if !ok {
            functional_issues += 1;
            p.report(
                "functional",
                None,
                Severity::Low,
                &e.method,
                &e.path,
                format!(
                    "answered {} where the template specifies {expected}",
                    a.status
                ),
            );
        } else if let Some(missing) =
            missing_fields(&e.response.body, &template.data_model, &a.body)
        {
            functional_issues += 1;
            p.report(
                "functional",
                None,
                Severity::Low,
                &e.method,
                &e.path,
                format!(
                    "the response lacks fields the template specifies: {}",
                    missing.join(", ")
                ),
            );
        }
    }
    checks.insert(
        "functional",
        (
            ToolStatus::Success,
            format!(
                "{} endpoints, {functional_issues} answered otherwise",
                template.endpoints.len()
            ),
        ),
    );

    if template.discovered {
        // Routes found in the app's own code: there is no specification to hold the
        // answers to, only what the walk created and learned for the probes below.
        p.findings.retain(|f| f.rule != "functional");
        checks.insert(
            "functional",
            (
                ToolStatus::Skipped,
                format!(
                    "{} routes found in the app; no template the app was written for, so no functional checks",
                    template.endpoints.len()
                ),
            ),
        );
    }

    // 2. Invalid input must be refused.
    for e in template
        .endpoints
        .iter()
        .filter(|e| e.method == "POST" && e.request.is_some())
    {
        let path = fill_path(&e.path, &p.context);
        if let Some(a) = p
            .send(
                "POST",
                &path,
                Some(&Value::Object(Map::new())),
                token.as_deref(),
            )
            .await
        {
            if a.status / 100 == 2 {
                p.report(
                    "functional",
                    Some(20),
                    Severity::Low,
                    "POST",
                    &e.path,
                    "an empty JSON body is accepted; required fields are not validated".into(),
                );
            }
        }
        let shape = e.request.as_ref().expect("filtered");
        for field in shape
            .keys()
            .filter(|f| f.contains("url") || f.contains("link"))
        {
            for bad in [
                "javascript:alert(document.domain)",
                "javascript://example.com/%0aalert(1)",
                "ftp://example.com/file",
            ] {
                let mut body = sample_body(shape, &unique);
                body[field.as_str()] = Value::from(bad);
                let Some(a) = p.send("POST", &path, Some(&body), token.as_deref()).await else {
                    continue;
                };
                if a.status / 100 == 2 {
                    p.report(
                        "functional",
                        Some(20),
                        Severity::Medium,
                        "POST",
                        &e.path,
                        format!("`{field}` accepts `{bad}`; only http(s) URLs should be stored"),
                    );
                    break;
                }
            }
        }
    }

    // 3. Missing authentication: endpoints the template protects, asked without a token.
    let protected: Vec<&Endpoint> = template.endpoints.iter().filter(|e| e.auth).collect();
    for e in &protected {
        let path = fill_path(&e.path, &p.context);
        let body = e.request.as_ref().map(|shape| sample_body(shape, &unique));
        if let Some(a) = p.send_anonymous(&e.method, &path, body.as_ref()).await {
            if a.status / 100 == 2 {
                p.report("missing_auth", Some(306), Severity::High, &e.method, &e.path,
                    format!("answers {} without any credentials although the template requires authentication", a.status));
            }
        }
    }
    checks.insert(
        "missing_auth",
        (
            ToolStatus::Success,
            format!("{} protected endpoints", protected.len()),
        ),
    );

    // 4. Security headers on the main pages, whatever they answer: a 404 page is served
    // to browsers too, and an app without `/` or `/health` still answers them.
    let mut header_paths = vec!["/".to_string(), health.to_string()];
    header_paths.dedup();
    for path in &header_paths {
        if let Some(a) = p.send("GET", path, None, None).await {
            let mut missing = Vec::new();
            for h in [
                "x-content-type-options",
                "content-security-policy",
                "x-frame-options",
                "referrer-policy",
            ] {
                if !a.headers.contains_key(h) {
                    missing.push(h);
                }
            }
            let frames_ok = a
                .headers
                .get("content-security-policy")
                .and_then(|v: &HeaderValue| v.to_str().ok())
                .is_some_and(|v| v.contains("frame-ancestors"));
            if frames_ok {
                missing.retain(|h| *h != "x-frame-options");
            }
            if !missing.is_empty() {
                p.report(
                    "security_headers",
                    Some(693),
                    Severity::Medium,
                    "GET",
                    path,
                    format!("missing security headers: {}", missing.join(", ")),
                );
            }
        }
    }
    checks.insert(
        "security_headers",
        (ToolStatus::Success, format!("{} pages", header_paths.len())),
    );

    // 5. Reflected input and error-based SQL injection through query parameters.
    for e in template.endpoints.iter().filter(|e| e.method == "GET") {
        let params = query_params(e);
        let base_path = fill_path(&e.path, &p.context);
        for param in &params {
            let encoded = urlencode(MARKER);
            if let Some(a) = p
                .send(
                    "GET",
                    &format!("{base_path}?{param}={encoded}"),
                    None,
                    token.as_deref(),
                )
                .await
            {
                let html = a
                    .headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.contains("html"));
                if html && a.body.contains(MARKER) {
                    p.report(
                        "reflected_input",
                        Some(79),
                        Severity::Medium,
                        "GET",
                        &e.path,
                        format!(
                            "query parameter `{param}` is echoed unescaped into an HTML response"
                        ),
                    );
                }
            }
            // A route that fails whatever it is given says nothing about quotes: the status
            // counts only when a plain value (`1`, which fits text and numbers alike) is
            // answered without a server error.
            let plain_fails = p
                .send(
                    "GET",
                    &format!("{base_path}?{param}=1"),
                    None,
                    token.as_deref(),
                )
                .await
                .is_none_or(|a| a.status >= 500);
            for payload in ["'", "\"", "1' OR '1'='1"] {
                if let Some(a) = p
                    .send(
                        "GET",
                        &format!("{base_path}?{param}={}", urlencode(payload)),
                        None,
                        token.as_deref(),
                    )
                    .await
                {
                    let status_says = a.status >= 500 && payload == "'" && !plain_fails && {
                        // Differential: the quote doubled (`''`, an escaped quote inside an
                        // SQL string) is answered without an error. A route that fails on
                        // any odd input fails on that too.
                        p.send(
                            "GET",
                            &format!("{base_path}?{param}={}", urlencode("1''")),
                            None,
                            token.as_deref(),
                        )
                        .await
                        .is_some_and(|b| b.status < 500)
                    };
                    if SQL_ERRORS.iter().any(|m| a.body.contains(m)) || status_says {
                        p.report("sql_injection", Some(89), Severity::Critical, "GET", &e.path,
                            format!("query parameter `{param}` reaches SQL unescaped: `{payload}` causes a database error (status {})", a.status));
                        break;
                    }
                }
            }
        }
        // Path parameters get the quote too.
        if !path_params(&e.path).is_empty() {
            let mut ctx = p.context.clone();
            for name in path_params(&e.path) {
                ctx.insert(name, "1%27".into());
            }
            if let Some(a) = p
                .send("GET", &fill_path(&e.path, &ctx), None, token.as_deref())
                .await
            {
                if SQL_ERRORS.iter().any(|m| a.body.contains(m)) {
                    p.report(
                        "sql_injection",
                        Some(89),
                        Severity::Critical,
                        "GET",
                        &e.path,
                        "a quote in a path parameter causes a database error".into(),
                    );
                }
            }
        }
    }
    checks.insert("reflected_input", (ToolStatus::Success, String::new()));
    checks.insert("sql_injection", (ToolStatus::Success, String::new()));

    // 6. Files that must never be served: the usual suspects and the app's own sources.
    let mut candidates: Vec<String> = [
        "/.env",
        "/.git/config",
        "/.git/HEAD",
        "/config.py",
        "/settings.py",
        "/app.py",
        "/.DS_Store",
        "/backup.sql",
        "/db.sqlite3",
        "/database.db",
        "/.htpasswd",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut originals: HashMap<String, String> = HashMap::new();
    if let Some(dir) = app_dir {
        for rel in source_files(dir) {
            if let Ok(text) = std::fs::read_to_string(dir.join(&rel)) {
                let url = format!("/{rel}");
                originals.insert(url.clone(), text);
                candidates.push(url);
            }
        }
    }
    candidates.sort();
    candidates.dedup();
    for path in &candidates {
        if let Some(a) = p.send("GET", path, None, None).await {
            if a.status != 200 || a.body.is_empty() {
                continue;
            }
            let served_source = originals
                .get(path)
                .is_some_and(|orig| a.body.trim() == orig.trim());
            let looks_like_secret_file = matches!(
                path.as_str(),
                "/.env" | "/.git/config" | "/.git/HEAD" | "/.htpasswd"
            ) && !a.body.trim_start().starts_with('<');
            if served_source || looks_like_secret_file {
                p.report(
                    "exposed_files",
                    Some(538),
                    Severity::High,
                    "GET",
                    path,
                    format!("`{path}` is served to anyone ({} bytes)", a.body.len()),
                );
            }
        }
    }
    checks.insert(
        "exposed_files",
        (ToolStatus::Success, format!("{} paths", candidates.len())),
    );

    // 7. Errors: an unknown path and a malformed JSON body must not leak internals.
    let _ = p
        .send("GET", &format!("/assay-missing-{unique}"), None, None)
        .await;
    if let Some(e) = template.endpoints.iter().find(|e| e.method == "POST") {
        let path = fill_path(&e.path, &p.context);
        let client = p.client.clone();
        p.requests += 1;
        if let Ok(resp) = client
            .post(format!("{}{}", p.base, path))
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .await
        {
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let body = read_capped(resp, MAX_PROBE_BODY).await;
            p.passive_checks(
                "POST",
                &path,
                &Answer {
                    status,
                    headers,
                    body,
                },
            );
        }
    }
    checks.insert("info_disclosure", (ToolStatus::Success, String::new()));
    checks.insert("cors", (ToolStatus::Success, String::new()));
    checks.insert(
        "cookie_flags",
        (
            ToolStatus::Success,
            format!("{} cookies seen", p.cookies.len()),
        ),
    );

    let elapsed = started.elapsed().as_millis() as u64;
    let mut by_check: HashMap<&str, usize> = HashMap::new();
    for f in &p.findings {
        *by_check.entry(f.rule.as_str()).or_default() += 1;
    }
    let runs = checks
        .into_iter()
        .map(|(check, (_, detail))| {
            let n = by_check.get(check).copied().unwrap_or(0);
            ToolRun {
                tool: format!("{TOOL}:{check}"),
                status: if n > 0 {
                    ToolStatus::Success
                } else {
                    ToolStatus::NoIssues
                },
                version: Some(env!("CARGO_PKG_VERSION").into()),
                duration_ms: elapsed,
                findings: n,
                detail: (!detail.is_empty()).then_some(detail),
                raw_output: None,
            }
        })
        .collect();
    DynamicOutcome {
        runs,
        findings: p.findings,
        requests: p.requests,
    }
}

/// Fields the template's response shape names that the JSON answer lacks; `None` when
/// nothing can be checked or nothing is missing. A shape is a model name (`Todo`), a list
/// of a model (`Todo[]`) or an inline table of fields.
fn missing_fields(
    shape: &toml::Value,
    models: &BTreeMap<String, BTreeMap<String, String>>,
    body: &str,
) -> Option<Vec<String>> {
    let (fields, list): (Vec<String>, bool) = match shape {
        toml::Value::String(name) => {
            let (model, list) = match name.strip_suffix("[]") {
                Some(m) => (m, true),
                None => (name.as_str(), false),
            };
            (models.get(model)?.keys().cloned().collect(), list)
        }
        toml::Value::Table(t) => (t.keys().cloned().collect(), false),
        _ => return None,
    };
    if fields.is_empty() {
        return None;
    }
    let json: Value = serde_json::from_str(body).ok()?;
    let object = if list {
        json.as_array()?.first()?.as_object()?
    } else {
        json.as_object()?
    };
    let missing: Vec<String> = fields
        .into_iter()
        .filter(|f| !object.contains_key(f))
        .collect();
    (!missing.is_empty()).then_some(missing)
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Source and config files of the app (relative paths), which a server must not serve.
fn source_files(dir: &Path) -> Vec<String> {
    // Front-end folders are meant to be served; everything else is not.
    super::app_files(dir, &["frontend", "static", "public"])
        .into_iter()
        .filter(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            [".py", ".toml", ".env", ".cfg", ".ini", ".sqlite3", ".db"]
                .iter()
                .any(|ext| name.ends_with(ext))
        })
        .filter_map(|p| p.strip_prefix(dir).ok().map(|r| r.display().to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A session-cookie login app: signing up and logging in come first, the logout route
    /// is never walked, and the notes are created inside the session.
    #[tokio::test]
    async fn the_walk_logs_in_keeps_the_cookie_and_never_logs_out() {
        use axum::http::{header, HeaderMap, StatusCode};
        use axum::routing::post;
        let logged_out = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen_logout = logged_out.clone();
        let authed = |h: &HeaderMap| {
            h.get(header::COOKIE)
                .and_then(|c| c.to_str().ok())
                .is_some_and(|c| c.contains("sid=u1"))
        };
        let app = axum::Router::new()
            .route(
                "/api/register",
                post(|| async { (StatusCode::CREATED, "{}") }),
            )
            .route(
                "/api/login",
                post(|| async {
                    (
                        [(header::SET_COOKIE, "sid=u1; HttpOnly; Path=/")],
                        "{\"ok\": true}",
                    )
                }),
            )
            .route(
                "/api/logout",
                post(move || async move {
                    seen_logout.store(true, std::sync::atomic::Ordering::SeqCst);
                    "bye"
                }),
            )
            .route(
                "/api/notes",
                post(move |h: HeaderMap| async move {
                    if authed(&h) {
                        (StatusCode::CREATED, "{\"id\": 7}")
                    } else {
                        (StatusCode::UNAUTHORIZED, "{}")
                    }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let mut template = crate::analysis::catalog::builtin()
            .get("notes-auth")
            .unwrap()
            .clone();
        let mut logout = template.endpoints[1].clone();
        logout.path = "/api/logout".into();
        template.endpoints.insert(0, logout);
        template.endpoints.reverse();
        let session = sign_in_and_create(&format!("http://{addr}"), &template).await;
        assert_eq!(
            session.walked,
            [
                "POST /api/register → 201",
                "POST /api/login → 200",
                "POST /api/notes → 201"
            ]
        );
        assert!(!logged_out.load(std::sync::atomic::Ordering::SeqCst));
        assert!(session.logged_in());
        assert_eq!(session.context["id"], "7");
        assert_eq!(
            session.headers(),
            [("Cookie".to_string(), "sid=u1".to_string())]
        );
    }

    /// A route that fails whatever it is asked is not an SQL injection because a quote
    /// also fails it, nor one that fails on any quote (`int(q)`); one that fails on an
    /// unpaired quote and not on a doubled one is.
    #[tokio::test]
    async fn a_server_error_on_a_quote_counts_only_when_a_plain_value_succeeds() {
        use axum::extract::Query;
        use axum::http::StatusCode;
        use axum::routing::get;
        let app = axum::Router::new()
            .route(
                "/always",
                get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "TypeError") }),
            )
            .route(
                "/quote",
                get(|Query(q): Query<HashMap<String, String>>| async move {
                    match q.get("q") {
                        // As an SQL string breaks: on an unpaired quote only.
                        Some(v) if v.matches('\'').count() % 2 == 1 => {
                            (StatusCode::INTERNAL_SERVER_ERROR, "boom")
                        }
                        _ => (StatusCode::OK, "[]"),
                    }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let endpoint = |path: &str| Endpoint {
            method: "GET".into(),
            path: path.into(),
            auth: false,
            description: String::new(),
            query: Some(toml::toml! { q = "string?" }),
            request: None,
            response: crate::analysis::catalog::Response {
                status: 200,
                body: toml::Value::String("any".into()),
            },
            found_in_code: true,
        };
        let template = Template {
            name: "discovered".into(),
            title: "t".into(),
            description: String::new(),
            requirements: Default::default(),
            endpoints: vec![
                endpoint("/always"),
                endpoint("/any-quote"),
                endpoint("/quote"),
            ],
            data_model: Default::default(),
            discovered: true,
        };
        let outcome = probe(&format!("http://{addr}"), &template, None, "/health").await;
        let injectable: Vec<&str> = outcome
            .findings
            .iter()
            .filter(|f| f.rule == "sql_injection")
            .map(|f| f.location.path.as_str())
            .collect();
        assert_eq!(injectable, ["GET /quote"]);
    }

    /// Each missing cookie flag is its own finding with its own CWE; a flag that is set,
    /// whatever its case, is not reported, and a cookie named like a flag fools nothing.
    #[tokio::test]
    async fn each_missing_cookie_flag_is_its_own_weakness() {
        use axum::http::header;
        use axum::routing::get;
        let app = axum::Router::new().route(
            "/",
            get(|| async {
                (
                    [(header::SET_COOKIE, "secure_sid=1; httpOnly; Path=/")],
                    "hi",
                )
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let template = crate::analysis::catalog::builtin()
            .get("todo-api")
            .unwrap()
            .clone();
        let outcome = probe(&format!("http://{addr}"), &template, None, "/health").await;
        let mut cwes: Vec<u32> = outcome
            .findings
            .iter()
            .filter(|f| f.rule == "cookie_flags")
            .filter_map(|f| f.cwe)
            .collect();
        cwes.sort();
        cwes.dedup();
        assert_eq!(cwes, [614, 1275]);
    }

    /// An app that answers forever: the probe keeps its first MiB and moves on.
    #[tokio::test]
    async fn an_endless_answer_is_read_only_up_to_the_cap() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut req = [0u8; 1024];
            let _ = s.read(&mut req).await;
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n")
                .await;
            let chunk = vec![b'a'; 64 * 1024];
            while s.write_all(&chunk).await.is_ok() {}
        });
        let resp = reqwest::get(format!("http://{addr}/")).await.unwrap();
        let body = tokio::time::timeout(
            std::time::Duration::from_secs(60),
            read_capped(resp, MAX_PROBE_BODY),
        )
        .await
        .expect("reading stops at the cap");
        assert_eq!(body.len(), MAX_PROBE_BODY);
    }

    /// An app that answers every request, the malformed-JSON probe's included, with a body
    /// that never ends: the probe stops reading each at the cap, so the app manages to
    /// send little more than the cap and what the sockets buffer.
    #[tokio::test]
    async fn no_probe_reads_an_endless_answer_past_the_cap() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (sent_tx, mut sent_rx) = tokio::sync::mpsc::unbounded_channel::<usize>();
        let server = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let sent_tx = sent_tx.clone();
                tokio::spawn(async move {
                    let mut req = [0u8; 4096];
                    if s.read(&mut req).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n")
                        .await;
                    let chunk = vec![b'a'; 64 * 1024];
                    let mut sent = 0;
                    while s.write_all(&chunk).await.is_ok() {
                        sent += chunk.len();
                    }
                    let _ = sent_tx.send(sent);
                });
            }
        });
        let catalog = crate::analysis::catalog::builtin();
        let template = catalog.get("todo-api").expect("a builtin template");
        probe(&format!("http://{addr}"), template, None, "/").await;
        server.abort();
        let _ = server.await;
        // Each connection's task reports once the probe has let go of it.
        let mut answers = Vec::new();
        while let Some(sent) = sent_rx.recv().await {
            answers.push(sent);
        }
        assert!(answers.len() > 3, "{answers:?}");
        let most = answers.iter().max().copied().unwrap_or_default();
        assert!(
            most < 64 * MAX_PROBE_BODY,
            "an answer of {most} bytes was read; the cap is {MAX_PROBE_BODY}"
        );
    }

    #[test]
    fn path_parameters_are_filled_from_what_was_created() {
        let mut ctx = HashMap::new();
        ctx.insert("code".to_string(), "abc123".to_string());
        assert_eq!(fill_path("/r/<code>", &ctx), "/r/abc123");
        assert_eq!(
            fill_path("/api/links/{code}/stats", &ctx),
            "/api/links/abc123/stats"
        );
        assert_eq!(fill_path("/api/notes/<int:id>", &ctx), "/api/notes/1");
        assert_eq!(path_params("/api/notes/<int:id>"), vec!["id"]);
    }

    #[test]
    fn sample_bodies_follow_the_shape() {
        let shape: toml::Table = toml::from_str(
            "url = \"string\"\ndone = \"boolean?\"\ncount = \"integer\"\nemail = \"string\"\ntags = \"string[]\"",
        )
        .unwrap();
        let b = sample_body(&shape, "x1");
        assert_eq!(b["email"], "assay-x1@example.com");
        assert!(b["tags"].is_array());
        assert_eq!(b["done"], false);
        assert_eq!(b["count"], 1);
        assert!(b["url"].as_str().unwrap().starts_with("https://"));
    }

    #[test]
    fn responses_are_checked_against_the_template_shape() {
        let mut models = BTreeMap::new();
        models.insert(
            "Todo".to_string(),
            BTreeMap::from([
                ("id".to_string(), "integer".to_string()),
                ("title".to_string(), "string".to_string()),
            ]),
        );
        let list = toml::Value::String("Todo[]".into());
        assert_eq!(
            missing_fields(&list, &models, r#"[{"id": 1, "title": "a"}]"#),
            None
        );
        assert_eq!(
            missing_fields(&list, &models, r#"[{"id": 1}]"#),
            Some(vec!["title".to_string()])
        );
        assert_eq!(
            missing_fields(&list, &models, "[]"),
            None,
            "an empty list cannot be checked"
        );
        let inline: toml::Value = toml::from_str::<toml::Table>("status = \"string\"")
            .unwrap()
            .into();
        assert_eq!(
            missing_fields(&inline, &models, r#"{"ok": true}"#),
            Some(vec!["status".to_string()])
        );
        assert_eq!(missing_fields(&inline, &models, "not json"), None);
    }

    #[test]
    fn urlencode_escapes_markup_and_quotes() {
        assert_eq!(urlencode("a<b>'"), "a%3Cb%3E%27");
    }
}
