//! Who may do what: API tokens with scopes, checked on every request when the server
//! requires them (always when it listens beyond loopback, unless it was told
//! `--insecure-no-auth`).
//!
//! A token is 32 random bytes, shown once when it is created; the store keeps only its
//! SHA-256. Tokens are high-entropy, so a plain hash is what protects them at rest (a slow
//! password hash would add nothing but latency to every heartbeat). Lookups are cached
//! for [`CACHE_TTL`]: a revoked token stops working within that long.

use super::AppState;
use crate::api::{ErrorCode, API_PREFIX};
use crate::domain::Scope;
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a token lookup is trusted before the store is asked again.
pub const CACHE_TTL: Duration = Duration::from_secs(2);
/// Tokens remembered at most; past this the cache starts over (a flood of made-up tokens
/// cannot grow it without bound).
const CACHE_ENTRIES: usize = 10_000;
/// Worker ids one token may own (`assay server --worker-ids-per-token`). A worker without
/// `--id` takes a new one at every start, so the ids of workers stopped or silent for
/// [`WORKER_ID_IDLE`] are given up as the token needs room.
pub const DEFAULT_WORKER_IDS_PER_TOKEN: i64 = 1_024;
/// How long a worker must be silent before its token may give its id up for a new one.
pub const WORKER_ID_IDLE: Duration = Duration::from_secs(3_600);
/// How long a worker id's owner is trusted before the store is asked again: a revoked
/// owner's id passes to the next token that asks within that long.
const OWNER_CACHE_TTL: Duration = Duration::from_secs(60);
/// Every token starts with this, so that it is recognisable in a leaked file or log.
pub const TOKEN_PREFIX: &str = "assay_";
/// A one-time dashboard login code starts with this (see [`Auth::one_time_login`]).
pub const LOGIN_PREFIX: &str = "assay_login_";

/// The principal ids of the tokens `assay run` mints for itself ([`MemoryToken`]). Store
/// tokens count up from 1, so these never name one of them. They stay the same from run
/// to run, while the secrets do not: the embedded worker's id, owned by
/// [`RUN_WORKER_TOKEN_ID`] since its first run, remains its own when a run resumes.
pub const RUN_ADMIN_TOKEN_ID: i64 = -1;
pub const RUN_WORKER_TOKEN_ID: i64 = -2;

/// A new random token, to be shown once.
pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("{TOKEN_PREFIX}{}", hex::encode(bytes))
}

/// What the store keeps of a token.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.trim().as_bytes()))
}

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Nothing: the health check and the dashboard's static page (it holds no data; what
    /// it fetches is checked).
    Open,
    /// A token with one of these scopes.
    AnyOf(&'static [Scope]),
}

/// The scope a route asks for. Anything not listed asks for `admin`, so a route added
/// without a thought for it is closed, not open.
pub fn required(method: &Method, path: &str) -> Need {
    use Scope::*;
    let Some(api) = path.strip_prefix(API_PREFIX) else {
        // The dashboard: its page and assets.
        return if *method == Method::GET || *method == Method::HEAD {
            Need::Open
        } else {
            Need::AnyOf(&[Admin])
        };
    };
    let segments: Vec<&str> = api.trim_matches('/').split('/').collect();
    let read = *method == Method::GET || *method == Method::HEAD;
    match (read, *method == Method::POST, segments.as_slice()) {
        (true, _, ["health"]) => Need::Open,
        (true, _, ["whoami"]) => Need::AnyOf(&[Read, Worker]),
        (false, _, ["session"]) => Need::Open,
        (_, _, ["workers", "register" | "claim" | "heartbeat" | "report"]) => {
            Need::AnyOf(&[Worker])
        }
        (false, true, ["workers", _, "stopped"]) => Need::AnyOf(&[Worker]),
        (true, _, ["blobs", _]) => Need::AnyOf(&[Read, Worker]),
        (false, false, ["blobs", _]) if *method == Method::PUT => Need::AnyOf(&[Worker]),
        (_, _, ["llm", "acquire" | "calls"]) => Need::AnyOf(&[Worker]),
        (false, true, ["llm", "answers"]) => Need::AnyOf(&[Worker]),
        (true, _, ["llm", "limits"]) => Need::AnyOf(&[Read, Worker]),
        // A worker finds an upstream job's app through its record and artifacts.
        (true, _, ["jobs", _] | ["jobs", _, "artifacts", _]) => Need::AnyOf(&[Read, Worker]),
        (false, true, ["pipelines"]) => Need::AnyOf(&[Submit]),
        (false, true, ["pipelines" | "jobs", _, "cancel" | "retry"]) => Need::AnyOf(&[Submit]),
        (true, _, _) => Need::AnyOf(&[Read]),
        _ => Need::AnyOf(&[Admin]),
    }
}

/// A token the server accepts without the store, known only to the process that started
/// the server: `assay run` mints its own at every start (an admin one for its client, a
/// worker one for its workers). Only the hash is held here.
///
/// Why not rows in the store: such a token would outlive the run (in the database, and in
/// whatever file carried it to the client), rows would pile up with every run, and one
/// that a kill -9 left behind would stay valid. In memory, a run's tokens end with it, and
/// the analyzed apps (which run as the same user, with no sandbox yet) find no file or
/// environment variable holding them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryToken {
    pub hash: String,
    pub principal: Principal,
}

impl MemoryToken {
    pub fn new(token: &str, principal: Principal) -> Self {
        MemoryToken {
            hash: token_hash(token),
            principal,
        }
    }
}

/// The server's side of authentication: whether tokens are required, and a short-lived
/// cache of lookups.
pub struct Auth {
    required: bool,
    /// Tokens of the process that started the server (hash → principal), never stored.
    memory: HashMap<String, Principal>,
    /// One-time dashboard login codes (the code's hash → the hash of the token whose
    /// session it opens); a code is removed when used.
    login_codes: Mutex<HashMap<String, String>>,
    cache: Mutex<HashMap<String, (Option<Principal>, Instant)>>,
    /// Dashboard sessions: session id → (the token's hash, when the session ends). Kept in
    /// memory: a restarted server asks the browser to log in again.
    sessions: Mutex<HashMap<String, (String, Instant)>>,
    /// Worker id → the token that owns it, and since when this server knows it.
    owners: Mutex<HashMap<String, (i64, Instant)>>,
    worker_ids_per_token: i64,
    /// Requests each token may make ([`RequestRate`]); `None`: unlimited.
    rates: Option<(RequestRate, governor::DefaultKeyedRateLimiter<i64>)>,
}

/// Whether a token may act as a worker id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ownership {
    Owned,
    /// Another, live token owns it.
    OtherToken,
    /// The id is free, but the token owns `owned` ids already (`most` is the limit) and
    /// none of them may be given up yet.
    Full {
        owned: i64,
        most: i64,
    },
}

/// How many requests one token may make: `per_second` sustained, `burst` at once. A
/// token past it gets 429 with `Retry-After`, and every other token is served as before:
/// one runaway or hostile worker (or script) cannot take the server's time from the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestRate {
    pub per_second: std::num::NonZeroU32,
    pub burst: std::num::NonZeroU32,
}

/// Requests a second one token may make by default: far above what a worker with dozens
/// of slots needs (claims and reports are batched), far below what the server can take.
pub const DEFAULT_REQUESTS_PER_SECOND: u32 = 500;

impl RequestRate {
    /// `per_second` sustained with bursts of twice that; `None` for 0 (no limit).
    pub fn per_second(per_second: u32) -> Option<RequestRate> {
        let per_second = std::num::NonZeroU32::new(per_second)?;
        Some(RequestRate {
            per_second,
            burst: per_second.saturating_mul(std::num::NonZeroU32::MIN.saturating_add(1)),
        })
    }
}

/// The dashboard's session cookie.
pub const SESSION_COOKIE: &str = "assay_session";
/// How long a dashboard session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most (expired ones are dropped first, then the oldest).
const SESSIONS: usize = 10_000;
/// Sessions one token may have open (browsers, tabs that logged in again).
const SESSIONS_PER_TOKEN: usize = 16;
/// A cookie-borne request that changes something must carry this header: a form or a
/// page of another site cannot add it (no CORS is offered), the dashboard always does.
pub const CSRF_HEADER: &str = "x-assay-csrf";

/// Who sent a request: the token it carried. Handlers find it in the request's
/// extensions when the server requires tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub token_id: i64,
    pub name: String,
    pub scopes: Vec<Scope>,
    /// The job kinds it may use: its workers claim only these, its specs have stages of
    /// only these; `None`: every kind.
    pub kinds: Option<Vec<String>>,
}

impl Auth {
    pub fn new(required: bool) -> Self {
        Auth {
            required,
            memory: HashMap::new(),
            login_codes: Mutex::default(),
            cache: Mutex::default(),
            sessions: Mutex::default(),
            owners: Mutex::default(),
            worker_ids_per_token: DEFAULT_WORKER_IDS_PER_TOKEN,
            rates: None,
        }
    }

    /// Let each token own at most `n` worker ids.
    pub fn with_worker_ids_per_token(mut self, n: i64) -> Self {
        self.worker_ids_per_token = n.max(1);
        self
    }

    /// Limit each token's requests to `rate` (`None`: no limit).
    pub fn with_request_rate(mut self, rate: Option<RequestRate>) -> Self {
        self.rates = rate.map(|rate| {
            let quota = governor::Quota::per_second(rate.per_second).allow_burst(rate.burst);
            (rate, governor::RateLimiter::keyed(quota))
        });
        self
    }

    /// `None` when `principal` may make another request now; else the refusal.
    fn over_rate(&self, principal: &Principal) -> Option<Response> {
        let (rate, limiter) = self.rates.as_ref()?;
        let not_until = limiter.check_key(&principal.token_id).err()?;
        let wait = not_until.wait_time_from(governor::clock::Clock::now(
            &governor::clock::DefaultClock::default(),
        ));
        let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
        let mut response = refuse(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::TooManyRequests,
            format!(
                "token `{}` made more than {} requests a second (bursts of {}), the most one \
                 token may; wait {seconds} s, give each worker machine and script its own \
                 token, or raise the limit with `assay server --rate-limit`",
                principal.name, rate.per_second, rate.burst
            ),
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
        Some(response)
    }

    /// Also accept these tokens, which the store does not know.
    pub fn with_memory_tokens(mut self, tokens: impl IntoIterator<Item = MemoryToken>) -> Self {
        self.memory
            .extend(tokens.into_iter().map(|t| (t.hash, t.principal)));
        self
    }

    pub fn required(&self) -> bool {
        self.required
    }

    /// A code that opens one dashboard session for `token`, once: a login link can then be
    /// printed where the token itself should not be, and is worthless once it was used.
    pub fn one_time_login(&self, token: &str) -> String {
        let code = format!("{LOGIN_PREFIX}{}", hex::encode(rand::random::<[u8; 32]>()));
        let mut codes = self.login_codes.lock().expect("login codes");
        if codes.len() >= CACHE_ENTRIES {
            codes.clear();
        }
        codes.insert(token_hash(&code), token_hash(token));
        code
    }

    /// The token hash a one-time login code stands for, using the code up.
    fn redeem_login_code(&self, code_hash: &str) -> Option<String> {
        self.login_codes
            .lock()
            .expect("login codes")
            .remove(code_hash)
    }

    /// The token behind a live session.
    fn session(&self, id: &str) -> Option<String> {
        let sessions = self.sessions.lock().expect("sessions");
        let (hash, until) = sessions.get(id)?;
        (Instant::now() < *until).then(|| hash.clone())
    }

    /// A new session for the token; the token's oldest goes past [`SESSIONS_PER_TOKEN`], and
    /// the oldest of all when the table is full, so no one token can lock the others out.
    fn open_session(&self, hash: String) -> Option<String> {
        let mut sessions = self.sessions.lock().expect("sessions");
        let now = Instant::now();
        sessions.retain(|_, (_, until)| *until > now);
        let oldest = |sessions: &HashMap<String, (String, Instant)>, of: Option<&str>| {
            sessions
                .iter()
                .filter(|(_, (h, _))| of.is_none_or(|of| h == of))
                .min_by_key(|(_, (_, until))| *until)
                .map(|(id, _)| id.clone())
        };
        while sessions.values().filter(|(h, _)| *h == hash).count() >= SESSIONS_PER_TOKEN {
            let id = oldest(&sessions, Some(&hash))?;
            sessions.remove(&id);
        }
        if sessions.len() >= SESSIONS {
            let id = oldest(&sessions, None)?;
            sessions.remove(&id);
        }
        let id = hex::encode(rand::random::<[u8; 32]>());
        sessions.insert(id.clone(), (hash, now + SESSION_TTL));
        Some(id)
    }

    /// Whether `principal` may act as the worker `worker_id`: the id belongs to the first
    /// token that used it, until that token is revoked. Always when tokens are not required.
    pub async fn owns_worker(
        &self,
        state: &AppState,
        principal: Option<&Principal>,
        worker_id: &str,
    ) -> Result<Ownership, crate::store::StoreError> {
        if !self.required {
            return Ok(Ownership::Owned);
        }
        let Some(principal) = principal else {
            return Ok(Ownership::OtherToken);
        };
        let known = self.owners.lock().expect("owners").get(worker_id).copied();
        if let Some((owner, at)) = known {
            if owner == principal.token_id && at.elapsed() < OWNER_CACHE_TTL {
                return Ok(Ownership::Owned);
            }
        }
        // Not known, known as another token's (which may have been revoked since), or
        // known for long enough to ask again.
        let now = crate::domain::now_micros();
        let policy = crate::store::WorkerIdPolicy {
            per_token: self.worker_ids_per_token,
            idle_before: now - WORKER_ID_IDLE.as_micros() as i64,
        };
        let binding = state
            .store
            .bind_worker(worker_id, principal.token_id, &policy, now)
            .await?;
        let owner = match binding {
            crate::store::WorkerBinding::Owner(owner) => owner,
            crate::store::WorkerBinding::Full { owned } => {
                return Ok(Ownership::Full {
                    owned,
                    most: self.worker_ids_per_token,
                })
            }
        };
        let mut owners = self.owners.lock().expect("owners");
        if owners.len() >= CACHE_ENTRIES {
            owners.clear();
        }
        owners.insert(worker_id.to_string(), (owner, Instant::now()));
        Ok(if owner == principal.token_id {
            Ownership::Owned
        } else {
            Ownership::OtherToken
        })
    }

    /// Who a live token (by its hash) stands for, `None` for an unknown or revoked one.
    async fn principal_by_hash(
        &self,
        state: &AppState,
        hash: String,
    ) -> Result<Option<Principal>, Response> {
        if let Some(principal) = self.memory.get(&hash) {
            return Ok(Some(principal.clone()));
        }
        if let Some((scopes, at)) = self.cache.lock().expect("auth cache").get(&hash) {
            if at.elapsed() < CACHE_TTL {
                return Ok(scopes.clone());
            }
        }
        let row = state.store.token_by_hash(&hash).await.map_err(|e| {
            tracing::error!(error = %e, "cannot look up a token");
            refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Internal,
                "cannot check the token right now; try again",
            )
        })?;
        let principal = row.filter(|t| t.revoked_at.is_none()).map(|t| Principal {
            token_id: t.id,
            name: t.name,
            scopes: t.scopes,
            kinds: t.kinds,
        });
        let mut cache = self.cache.lock().expect("auth cache");
        if cache.len() >= CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(hash, (principal.clone(), Instant::now()));
        Ok(principal)
    }
}

impl Default for Auth {
    /// Tokens not required: a server on loopback that was not asked for them.
    fn default() -> Self {
        Auth::new(false)
    }
}

/// An error in the API's format (the same as every handler's).
fn refuse(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Response {
    super::routes::ApiError::new(status, code, message).into_response()
}

/// The token a request carries: `Authorization: Bearer …`.
fn bearer(req: &Request) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// The dashboard's session id, from its cookie.
fn session_cookie(req: &Request) -> Option<String> {
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.to_string())
}

#[derive(Debug, serde::Deserialize)]
pub struct LoginBody {
    pub token: String,
}

/// `POST /session`: trade a token for a dashboard session (an HttpOnly, Secure,
/// SameSite=Strict cookie); the token itself is not kept by the browser.
pub async fn login(
    State(state): State<AppState>,
    axum::Json(body): axum::Json<LoginBody>,
) -> Response {
    let mut hash = token_hash(&body.token);
    if body.token.trim().starts_with(LOGIN_PREFIX) {
        match state.auth.redeem_login_code(&hash) {
            Some(token) => hash = token,
            None => {
                return refuse(
                    StatusCode::UNAUTHORIZED,
                    ErrorCode::Unauthorized,
                    "this login link was used already (each works once) or belongs to a run \
                     that ended; log in with a token instead (`assay token create --scope read`)",
                )
            }
        }
    }
    let principal = match state.auth.principal_by_hash(&state, hash.clone()).await {
        Ok(Some(principal)) => principal,
        Ok(None) => {
            return refuse(
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthorized,
                "this token is unknown or revoked",
            )
        }
        Err(response) => return response,
    };
    if !principal.scopes.iter().any(|s| s.grants(Scope::Read)) {
        return refuse(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            "a worker's token cannot open the dashboard; use one with scope read",
        );
    }
    let Some(session) = state.auth.open_session(hash) else {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Internal,
            "too many open dashboard sessions; try again later",
        );
    };
    let cookie = format!(
        "{SESSION_COOKIE}={session}; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age={}",
        SESSION_TTL.as_secs()
    );
    (
        [(header::SET_COOKIE, cookie)],
        axum::Json(crate::api::WhoAmI {
            auth: true,
            token_id: Some(principal.token_id),
            name: Some(principal.name),
            scopes: principal.scopes,
        }),
    )
        .into_response()
}

/// `DELETE /session`: end the dashboard session.
pub async fn logout(State(state): State<AppState>, req: Request) -> Response {
    if let Some(session) = session_cookie(&req) {
        state
            .auth
            .sessions
            .lock()
            .expect("sessions")
            .remove(&session);
    }
    let cookie = format!("{SESSION_COOKIE}=; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age=0");
    ([(header::SET_COOKIE, cookie)], StatusCode::NO_CONTENT).into_response()
}

/// Middleware: let a request through only with a token whose scopes grant its route.
pub async fn authorize(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    if !state.auth.required {
        return next.run(req).await;
    }
    let Need::AnyOf(allowed) = required(req.method(), req.uri().path()) else {
        return next.run(req).await;
    };
    let hash = if let Some(token) = bearer(&req) {
        token_hash(token)
    } else if let Some(session) = session_cookie(&req) {
        let Some(hash) = state.auth.session(&session) else {
            return refuse(
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthorized,
                "the dashboard session has ended; log in again with your token",
            );
        };
        let safe = matches!(*req.method(), Method::GET | Method::HEAD);
        if !safe && !req.headers().contains_key(CSRF_HEADER) {
            return refuse(
                StatusCode::FORBIDDEN,
                ErrorCode::Forbidden,
                format!("a change made with the dashboard's session must carry the {CSRF_HEADER} header"),
            );
        }
        hash
    } else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            "this server requires an API token: send `Authorization: Bearer <token>` (the CLI \
             and workers read ASSAY_TOKEN or --token-file; the dashboard asks for it); an \
             admin creates one with `assay token create --scope …`",
        );
    };
    let principal = match state.auth.principal_by_hash(&state, hash).await {
        Ok(Some(principal)) => principal,
        Ok(None) => return refuse(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            "this token is unknown or revoked; ask an admin for a new one (`assay token create`)",
        ),
        Err(response) => return response,
    };
    let granted = allowed
        .iter()
        .any(|needed| principal.scopes.iter().any(|held| held.grants(*needed)));
    if granted {
        if let Some(refusal) = state.auth.over_rate(&principal) {
            return refusal;
        }
        req.extensions_mut().insert(principal);
        return next.run(req).await;
    }
    let held: Vec<&str> = principal.scopes.iter().map(|s| s.as_str()).collect();
    let needed: Vec<&str> = allowed.iter().map(|s| s.as_str()).collect();
    refuse(
        StatusCode::FORBIDDEN,
        ErrorCode::Forbidden,
        format!(
            "{} {} needs a token with scope {}; this one has {}",
            req.method(),
            req.uri().path(),
            needed.join(" or "),
            if held.is_empty() {
                "none".to_string()
            } else {
                held.join(", ")
            }
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn need(method: Method, path: &str) -> Need {
        required(&method, &format!("{API_PREFIX}{path}"))
    }

    #[test]
    fn every_route_asks_for_the_scope_it_should() {
        use Scope::*;
        let any = Need::AnyOf;
        assert_eq!(need(Method::GET, "/health"), Need::Open);
        assert_eq!(need(Method::GET, "/whoami"), any(&[Read, Worker]));
        assert_eq!(required(&Method::GET, "/"), Need::Open);
        assert_eq!(required(&Method::GET, "/assets/app.js"), Need::Open);
        assert_eq!(required(&Method::POST, "/"), any(&[Admin]));
        assert_eq!(need(Method::GET, "/pipelines"), any(&[Read]));
        assert_eq!(
            need(Method::GET, "/pipelines/3/export/findings.json"),
            any(&[Read])
        );
        assert_eq!(need(Method::POST, "/pipelines"), any(&[Submit]));
        assert_eq!(need(Method::POST, "/pipelines/3/cancel"), any(&[Submit]));
        assert_eq!(need(Method::POST, "/jobs/3/retry"), any(&[Submit]));
        for path in [
            "/workers/register",
            "/workers/claim",
            "/workers/heartbeat",
            "/workers/report",
            "/workers/w1/stopped",
            "/llm/acquire",
            "/llm/calls",
        ] {
            assert_eq!(need(Method::POST, path), any(&[Worker]), "{path}");
        }
        assert_eq!(need(Method::GET, "/workers"), any(&[Read]));
        assert_eq!(need(Method::PUT, "/blobs/abc"), any(&[Worker]));
        assert_eq!(need(Method::GET, "/blobs/abc"), any(&[Read, Worker]));
        assert_eq!(need(Method::HEAD, "/blobs/abc"), any(&[Read, Worker]));
        assert_eq!(need(Method::POST, "/llm/answers"), any(&[Worker]));
        assert_eq!(need(Method::GET, "/llm/answers/k"), any(&[Read]));
        assert_eq!(need(Method::GET, "/jobs/3"), any(&[Read, Worker]));
        assert_eq!(
            need(Method::GET, "/jobs/3/artifacts/app.tar"),
            any(&[Read, Worker])
        );
        assert_eq!(need(Method::GET, "/jobs"), any(&[Read]));
        // Unknown routes and methods are closed.
        assert_eq!(need(Method::DELETE, "/pipelines/3"), any(&[Admin]));
        assert_eq!(need(Method::POST, "/tokens"), any(&[Admin]));
    }

    #[test]
    fn a_login_code_works_once_and_only_for_its_token() {
        let auth = Auth::new(true);
        let token = new_token();
        let code = auth.one_time_login(&token);
        assert!(code.starts_with(LOGIN_PREFIX));
        assert_ne!(token_hash(&code), token_hash(&token));
        assert_eq!(auth.redeem_login_code(&token_hash(&token)), None);
        assert_eq!(
            auth.redeem_login_code(&token_hash(&code)),
            Some(token_hash(&token))
        );
        assert_eq!(auth.redeem_login_code(&token_hash(&code)), None, "used up");
    }

    #[test]
    fn scopes_nest_except_the_workers() {
        use Scope::*;
        assert!(Admin.grants(Submit) && Admin.grants(Read) && Submit.grants(Read));
        assert!(!Read.grants(Submit) && !Submit.grants(Admin));
        assert!(!Admin.grants(Worker) && !Worker.grants(Read) && Worker.grants(Worker));
    }

    #[test]
    fn tokens_are_random_and_only_their_hash_is_kept() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX) && a.len() > 40);
        assert_eq!(
            token_hash(&a),
            token_hash(&format!("{a}\n")),
            "a file's newline is not part of it"
        );
        assert_ne!(token_hash(&a), token_hash(&b));
        assert!(!token_hash(&a).contains(&a));
    }
}
