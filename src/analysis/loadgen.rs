//! A built-in HTTP load generator: drives an app's endpoints and reports throughput,
//! status codes, errors and latency percentiles per endpoint and overall.
//!
//! Two modes:
//! - **Closed loop**: N virtual users, each with its own keep-alive HTTP/1.1 connection,
//!   issuing requests back to back. Measures what the app sustains.
//! - **Open loop**: requests start on a fixed schedule whatever the responses, at most
//!   `max_in_flight` at once; a request whose turn comes while all are busy is not sent and
//!   counts as `dropped`. Latency runs from the *scheduled* start, so an app that stalls
//!   cannot hide the queue it causes by slowing the generator down (coordinated omission).
//!
//! Counting rules (the report's fields):
//! - `requests`: every attempt recorded in the measured window: responses, transport
//!   errors and timeouts. `requests_per_sec` is `requests / duration_s`.
//! - `errors`: attempts that got no response: `transport_errors` (refused, reset, closed
//!   mid-request, malformed HTTP) plus `timeouts`, each also reported on its own.
//! - **5xx responses count as failures**: they are answers, so they are in
//!   `status_counts`, but they are also `server_errors`, and
//!   `error_rate = (errors + server_errors) / requests`. 4xx responses are not failures
//!   of the app under load; they show in `status_counts` only.
//! - Latency is recorded for attempts that got a complete response (headers and body),
//!   in microseconds in an HDR histogram with 3 significant digits.
//! - Warmup requests are sent but not recorded. The closed loop records requests that
//!   start and finish inside the window (in-flight ones are abandoned at its end, as wrk
//!   does); the open loop records every request scheduled inside it and waits, at most
//!   `request_timeout`, for those still in flight.
//! - A run ends after `warmup + duration`, when `cancel` fires (the report then covers
//!   what was measured and says `cancelled`), or after [`MAX_TOTAL_REQUESTS`].
//!
//! The hot path shares nothing that locks: each user (or open-loop slot) owns its
//! connection, polls it in its own task (no spawned connection task, no cross-task
//! wake-ups), records into its own histograms, and arms its timeout timer lazily (once per
//! timeout period, not once per request). Histograms are merged when the run ends; each
//! user holds one per endpoint it has seen (tens of KB each), hence [`MAX_CONNECTIONS`].
//! Everything runs on the caller's runtime (one runtime per process). The open-loop
//! schedule is kept by one task on the runtime's millisecond timer: requests that fall due
//! within the same tick start together, each measured from its own scheduled time.

use bytes::Bytes;
use futures::task::AtomicWaker;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::header::{HeaderValue, CONNECTION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

/// No run sends more requests than this, whatever its duration and rate.
pub const MAX_TOTAL_REQUESTS: u64 = 50_000_000;
/// Longest `duration` (and longest `warmup`) accepted.
pub const MAX_DURATION: Duration = Duration::from_secs(3600);
/// Most closed-loop users or open-loop requests in flight (each is a connection).
pub const MAX_CONNECTIONS: usize = 10_000;
/// Highest open-loop rate accepted.
pub const MAX_RATE_PER_SEC: f64 = 1_000_000.0;
/// Pause after a failed connect, so a dead target is not hammered in a tight loop.
const CONNECT_BACKOFF: Duration = Duration::from_millis(10);

#[derive(Debug, Clone, PartialEq)]
pub struct LoadConfig {
    /// `http://host[:port][/prefix]`; each endpoint's path is appended to the prefix.
    pub base_url: String,
    pub endpoints: Vec<EndpointLoad>,
    pub mode: LoadMode,
    /// The measured window, after `warmup`.
    pub duration: Duration,
    /// Load sent but not recorded first: connections open, the app warms its caches.
    pub warmup: Duration,
    /// Per request, from sending it (or connecting for it) to the last byte of the body.
    pub request_timeout: Duration,
    /// Sent with every request: a session's `Cookie`, an `Authorization` (name, value).
    pub headers: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointLoad {
    /// `GET`, `POST`, … (case-insensitive).
    pub method: String,
    /// Path and query, e.g. `/api/notes?limit=10`.
    pub path: String,
    /// Sent as `application/json` when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<serde_json::Value>,
    /// Relative share of the requests; 0 leaves the endpoint out.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

impl EndpointLoad {
    /// An endpoint without a body, weight 1.
    pub fn new(method: &str, path: &str) -> Self {
        EndpointLoad {
            method: method.into(),
            path: path.into(),
            body: None,
            weight: 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum LoadMode {
    /// `users` virtual users, each on its own connection, requests back to back.
    ClosedLoop { users: usize },
    /// `rate_per_sec` requests started on a fixed schedule, at most `max_in_flight` at once.
    OpenLoop {
        rate_per_sec: f64,
        max_in_flight: usize,
    },
}

impl LoadMode {
    pub fn describe(&self) -> String {
        match self {
            LoadMode::ClosedLoop { users } => format!("closed loop, {users} users"),
            LoadMode::OpenLoop {
                rate_per_sec,
                max_in_flight,
            } => format!("open loop, {rate_per_sec} req/s, at most {max_in_flight} in flight"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("bad base URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("nothing to load: {0}")]
    NothingToLoad(String),
    #[error("endpoint {index} ({method} {path:?}): {reason}")]
    BadEndpoint {
        index: usize,
        method: String,
        path: String,
        reason: String,
    },
    #[error("invalid load settings: {0}")]
    BadConfig(String),
    #[error("cannot resolve host {host:?}: {source}")]
    Resolve {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot connect to {url} ({addr}): {source}; the target is down or not listening there"
    )]
    Unreachable {
        url: String,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The result of a run. See the module documentation for what each count includes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadReport {
    /// E.g. `closed loop, 8 users`.
    pub mode: String,
    /// Length of the measured window (shorter than asked when cancelled).
    pub duration_s: f64,
    pub warmup_s: f64,
    pub cancelled: bool,
    /// Open loop: requests not sent because `max_in_flight` were busy (always 0 closed).
    pub dropped: u64,
    /// Connections opened during the whole run, warmup included.
    pub connections_opened: u64,
    /// Connects that failed plus connections that broke mid-request, warmup included.
    pub connection_errors: u64,
    pub overall: LoadStats,
    /// In the order of `LoadConfig::endpoints`.
    pub endpoints: Vec<EndpointReport>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointReport {
    pub method: String,
    pub path: String,
    pub stats: LoadStats,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadStats {
    /// Responses + transport errors + timeouts.
    pub requests: u64,
    pub responses: u64,
    /// Transport errors + timeouts: attempts that got no response.
    pub errors: u64,
    pub transport_errors: u64,
    pub timeouts: u64,
    /// Responses with a 5xx status.
    pub server_errors: u64,
    /// Responses with a 4xx status: not the app failing under load, but not a real load
    /// of the route either (a 404 or a 401 costs the app nothing).
    #[serde(default)]
    pub client_errors: u64,
    pub status_counts: BTreeMap<u16, u64>,
    pub requests_per_sec: f64,
    /// `(errors + server_errors) / requests`; 0 when nothing was sent.
    pub error_rate: f64,
    pub latency_ms: LatencyMs,
}

/// Latency of the attempts that got a complete response, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencyMs {
    pub p50: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

/// Runs the load `config` describes against its target. Fails before sending anything when
/// the settings are invalid or the target cannot be reached at all; once running, failures
/// of single requests are counted in the report, never returned.
pub async fn run_load(
    config: &LoadConfig,
    cancel: &CancellationToken,
) -> Result<LoadReport, LoadError> {
    let prepared = prepare(config)?;
    let addrs = resolve(&prepared.host, prepared.port).await?;
    let addr = probe(&addrs, config).await?;
    let start = Instant::now();
    let measure_start = start + config.warmup;
    let plan = Arc::new(Plan {
        addr,
        requests: prepared.requests,
        picker: prepared.picker,
        timeout: config.request_timeout,
        start,
        measure_start,
        end: measure_start + config.duration,
    });
    let run = match config.mode {
        LoadMode::ClosedLoop { users } => run_closed(plan, users, cancel).await,
        LoadMode::OpenLoop {
            rate_per_sec,
            max_in_flight,
        } => run_open(plan, rate_per_sec, max_in_flight, config.duration, cancel).await,
    };
    Ok(build_report(config, run))
}

// ----- preparation -----

type ReqBody = Full<Bytes>;

struct Prepared {
    host: String,
    port: u16,
    requests: Vec<Request<ReqBody>>,
    picker: Picker,
}

/// Everything a user needs, shared read-only.
struct Plan {
    addr: SocketAddr,
    /// One ready-made request per endpoint; users clone it (cheap: the body and the URI
    /// are reference-counted `Bytes`).
    requests: Vec<Request<ReqBody>>,
    picker: Picker,
    timeout: Duration,
    start: Instant,
    measure_start: Instant,
    end: Instant,
}

fn prepare(config: &LoadConfig) -> Result<Prepared, LoadError> {
    let bad_url = |reason: &str| LoadError::BadUrl {
        url: config.base_url.clone(),
        reason: reason.into(),
    };
    let uri: Uri = config
        .base_url
        .trim()
        .parse()
        .map_err(|e: hyper::http::uri::InvalidUri| bad_url(&e.to_string()))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(bad_url(
                "https is not supported: the load generator speaks plain HTTP/1.1; use the app's http:// address",
            ))
        }
        Some(other) => return Err(bad_url(&format!("scheme {other:?} is not http"))),
        None => return Err(bad_url("no scheme: write it as http://host:port")),
    }
    let authority = uri
        .authority()
        .ok_or_else(|| bad_url("no host: write it as http://host:port"))?;
    if authority.as_str().contains('@') {
        return Err(bad_url("credentials in the URL are not supported"));
    }
    if uri.query().is_some() {
        return Err(bad_url(
            "the base URL has a query; put queries in the endpoint paths",
        ));
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = authority.port_u16().unwrap_or(80);
    let host_header = HeaderValue::from_str(authority.as_str())
        .map_err(|_| bad_url("the host is not a valid Host header"))?;
    let prefix = uri.path().trim_end_matches('/');

    if config.endpoints.is_empty() {
        return Err(LoadError::NothingToLoad("no endpoints given".into()));
    }
    let mut extra_headers = Vec::with_capacity(config.headers.len());
    for (name, value) in &config.headers {
        let header = hyper::header::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| LoadError::BadConfig(format!("header name {name:?} is not valid")))?;
        let value = HeaderValue::from_str(value).map_err(|_| {
            LoadError::BadConfig(format!(
                "the value of header {name} is not valid (control characters or non-ASCII)"
            ))
        })?;
        extra_headers.push((header, value));
    }
    let picker = Picker::new(config.endpoints.iter().map(|e| e.weight))
        .ok_or_else(|| LoadError::NothingToLoad("every endpoint has weight 0".into()))?;
    let mut requests = Vec::with_capacity(config.endpoints.len());
    for (index, ep) in config.endpoints.iter().enumerate() {
        let bad = |reason: String| LoadError::BadEndpoint {
            index,
            method: ep.method.clone(),
            path: ep.path.clone(),
            reason,
        };
        let method = Method::from_bytes(ep.method.trim().to_ascii_uppercase().as_bytes())
            .map_err(|_| bad("not an HTTP method".into()))?;
        let path = ep.path.trim();
        if path.contains("://") {
            return Err(bad("give a path such as /api/items, not a full URL".into()));
        }
        let full = if path.starts_with('/') {
            format!("{prefix}{path}")
        } else {
            format!("{prefix}/{path}")
        };
        let target: Uri = full
            .parse()
            .map_err(|e: hyper::http::uri::InvalidUri| bad(format!("not a valid path: {e}")))?;
        if target.scheme().is_some() || target.authority().is_some() {
            return Err(bad("give a path such as /api/items, not a full URL".into()));
        }
        let mut builder = Request::builder()
            .method(method)
            .uri(target)
            .header(HOST, host_header.clone());
        for (name, value) in &extra_headers {
            builder = builder.header(name, value);
        }
        let body = match &ep.body {
            Some(json) => {
                builder =
                    builder.header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                Bytes::from(serde_json::to_vec(json).map_err(|e| bad(e.to_string()))?)
            }
            None => Bytes::new(),
        };
        requests.push(
            builder
                .body(Full::new(body))
                .map_err(|e| bad(e.to_string()))?,
        );
    }

    for (name, d) in [("duration", config.duration), ("warmup", config.warmup)] {
        if d > MAX_DURATION {
            return Err(LoadError::BadConfig(format!(
                "{name} {d:?} is longer than the {MAX_DURATION:?} allowed"
            )));
        }
    }
    if config.duration.is_zero() {
        return Err(LoadError::BadConfig("duration is 0".into()));
    }
    if config.request_timeout.is_zero() {
        return Err(LoadError::BadConfig("request_timeout is 0".into()));
    }
    match config.mode {
        LoadMode::ClosedLoop { users } => {
            if users == 0 || users > MAX_CONNECTIONS {
                return Err(LoadError::BadConfig(format!(
                    "users must be between 1 and {MAX_CONNECTIONS}, not {users}"
                )));
            }
        }
        LoadMode::OpenLoop {
            rate_per_sec,
            max_in_flight,
        } => {
            if !(rate_per_sec > 0.0 && rate_per_sec <= MAX_RATE_PER_SEC) {
                return Err(LoadError::BadConfig(format!(
                    "rate_per_sec must be above 0 and at most {MAX_RATE_PER_SEC}, not {rate_per_sec}"
                )));
            }
            if max_in_flight == 0 || max_in_flight > MAX_CONNECTIONS {
                return Err(LoadError::BadConfig(format!(
                    "max_in_flight must be between 1 and {MAX_CONNECTIONS}, not {max_in_flight}"
                )));
            }
        }
    }
    Ok(Prepared {
        host,
        port,
        requests,
        picker,
    })
}

async fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, LoadError> {
    let resolve_err = |source| LoadError::Resolve {
        host: host.into(),
        source,
    };
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(resolve_err)?
        .collect();
    if addrs.is_empty() {
        return Err(resolve_err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no address",
        )));
    }
    Ok(addrs)
}

/// One connection before the run, so that a target that is down is an error, not a report
/// full of connection errors. The first address that answers is the one loaded (so
/// `localhost` works whether the app listens on IPv4 or IPv6).
async fn probe(addrs: &[SocketAddr], config: &LoadConfig) -> Result<SocketAddr, LoadError> {
    let mut last = None;
    for &addr in addrs {
        let error =
            match tokio::time::timeout(config.request_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(_stream)) => return Ok(addr),
                Ok(Err(e)) => e,
                Err(_) => std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {:?}", config.request_timeout),
                ),
            };
        last = Some((addr, error));
    }
    let (addr, source) = last.expect("resolve returns at least one address");
    Err(LoadError::Unreachable {
        url: config.base_url.clone(),
        addr,
        source,
    })
}

// ----- picking endpoints -----

/// Weighted choice by cumulative weights; endpoints of weight 0 are never chosen.
struct Picker {
    cumulative: Vec<u64>,
}

impl Picker {
    /// `None` when every weight is 0.
    fn new(weights: impl Iterator<Item = u32>) -> Option<Self> {
        let mut total = 0u64;
        let cumulative: Vec<u64> = weights
            .map(|w| {
                total += u64::from(w);
                total
            })
            .collect();
        (total > 0).then_some(Picker { cumulative })
    }

    fn pick(&self, rng: &mut Rng) -> usize {
        match self.cumulative.as_slice() {
            [_] => 0,
            all => {
                let r = rng.below(*all.last().unwrap_or(&1));
                all.partition_point(|&c| c <= r)
            }
        }
    }
}

/// splitmix64: fast, no allocation, good enough to spread requests over endpoints.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

// ----- recording -----

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Status(u16),
    Transport,
    Timeout,
    /// The run ended while the request was in flight: not recorded.
    Stopped,
}

#[derive(Default)]
struct EpRecord {
    requests: u64,
    transport_errors: u64,
    timeouts: u64,
    status: BTreeMap<u16, u64>,
    /// Created on the first response: most users never see every endpoint's extremes,
    /// and an auto-resizing histogram only grows as far as the values it holds.
    latency: Option<Histogram<u64>>,
}

impl EpRecord {
    fn record(&mut self, outcome: Outcome, latency: Duration) {
        match outcome {
            Outcome::Status(code) => {
                *self.status.entry(code).or_insert(0) += 1;
                let us = u64::try_from(latency.as_micros())
                    .unwrap_or(u64::MAX)
                    .max(1);
                let h = self.latency.get_or_insert_with(new_histogram);
                // `record` grows the histogram; saturating only if growing is impossible.
                if h.record(us).is_err() {
                    h.saturating_record(us);
                }
            }
            Outcome::Transport => self.transport_errors += 1,
            Outcome::Timeout => self.timeouts += 1,
            Outcome::Stopped => return,
        }
        self.requests += 1;
    }

    fn merge(&mut self, other: &EpRecord) {
        self.requests += other.requests;
        self.transport_errors += other.transport_errors;
        self.timeouts += other.timeouts;
        for (code, n) in &other.status {
            *self.status.entry(*code).or_insert(0) += n;
        }
        if let Some(h) = &other.latency {
            let mine = self.latency.get_or_insert_with(new_histogram);
            // Both auto-resize, so adding cannot run out of range.
            if mine.add(h).is_err() {
                for v in h.iter_recorded() {
                    mine.saturating_record_n(v.value_iterated_to(), v.count_at_value());
                }
            }
        }
    }

    fn stats(&self, secs: f64) -> LoadStats {
        let responses: u64 = self.status.values().sum();
        let server_errors: u64 = self.status.range(500..).map(|(_, n)| n).sum();
        let client_errors: u64 = self.status.range(400..500).map(|(_, n)| n).sum();
        let errors = self.transport_errors + self.timeouts;
        let ratio = |n: u64, d: f64| if d > 0.0 { n as f64 / d } else { 0.0 };
        LoadStats {
            requests: self.requests,
            responses,
            errors,
            transport_errors: self.transport_errors,
            timeouts: self.timeouts,
            server_errors,
            client_errors,
            status_counts: self.status.clone(),
            requests_per_sec: ratio(self.requests, secs),
            error_rate: ratio(errors + server_errors, self.requests as f64),
            latency_ms: latency_ms(self.latency.as_ref()),
        }
    }
}

fn new_histogram() -> Histogram<u64> {
    // Microseconds, 3 significant digits, growing to whatever is recorded.
    Histogram::new(3).expect("3 significant digits is a valid precision")
}

fn latency_ms(h: Option<&Histogram<u64>>) -> LatencyMs {
    let Some(h) = h.filter(|h| !h.is_empty()) else {
        return LatencyMs::default();
    };
    let ms = |us: u64| us as f64 / 1000.0;
    LatencyMs {
        p50: ms(h.value_at_quantile(0.50)),
        p90: ms(h.value_at_quantile(0.90)),
        p95: ms(h.value_at_quantile(0.95)),
        p99: ms(h.value_at_quantile(0.99)),
        max: ms(h.max()),
        mean: h.mean() / 1000.0,
    }
}

/// What one user (or open-loop slot) saw.
struct Recorder {
    eps: Vec<EpRecord>,
    connections_opened: u64,
    connection_errors: u64,
}

impl Recorder {
    fn new(endpoints: usize) -> Self {
        Recorder {
            eps: (0..endpoints).map(|_| EpRecord::default()).collect(),
            connections_opened: 0,
            connection_errors: 0,
        }
    }

    fn merge(&mut self, other: &Recorder) {
        for (mine, theirs) in self.eps.iter_mut().zip(&other.eps) {
            mine.merge(theirs);
        }
        self.connections_opened += other.connections_opened;
        self.connection_errors += other.connection_errors;
    }
}

struct RunResult {
    recorder: Recorder,
    window: Duration,
    cancelled: bool,
    dropped: u64,
}

fn build_report(config: &LoadConfig, run: RunResult) -> LoadReport {
    let secs = run.window.as_secs_f64();
    let mut overall = EpRecord::default();
    let endpoints = config
        .endpoints
        .iter()
        .zip(&run.recorder.eps)
        .map(|(ep, rec)| {
            overall.merge(rec);
            EndpointReport {
                method: ep.method.trim().to_ascii_uppercase(),
                path: ep.path.clone(),
                stats: rec.stats(secs),
            }
        })
        .collect();
    LoadReport {
        mode: config.mode.describe(),
        duration_s: secs,
        warmup_s: config.warmup.as_secs_f64(),
        cancelled: run.cancelled,
        dropped: run.dropped,
        connections_opened: run.recorder.connections_opened,
        connection_errors: run.recorder.connection_errors,
        overall: overall.stats(secs),
        endpoints,
    }
}

// ----- stopping -----

/// Ends every user's in-flight request at once. Each user has its own waker slot, so
/// waiting on it costs an uncontended atomic, unlike a shared lock or notifier.
struct StopSignal {
    stopped: AtomicBool,
    wakers: Box<[AtomicWaker]>,
}

impl StopSignal {
    fn new(slots: usize) -> Arc<Self> {
        Arc::new(StopSignal {
            stopped: AtomicBool::new(false),
            wakers: (0..slots).map(|_| AtomicWaker::new()).collect(),
        })
    }

    fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        for w in self.wakers.iter() {
            w.wake();
        }
    }
}

/// Stops the users if `run_load`'s future is dropped mid-run.
struct StopOnDrop(Arc<StopSignal>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop();
    }
}

struct StopWaiter {
    signal: Arc<StopSignal>,
    slot: usize,
}

impl StopWaiter {
    fn is_stopped(&self) -> bool {
        self.signal.stopped.load(Ordering::SeqCst)
    }

    fn poll_stopped(&self, cx: &mut Context<'_>) -> bool {
        if self.is_stopped() {
            return true;
        }
        self.signal.wakers[self.slot].register(cx.waker());
        self.is_stopped()
    }
}

/// The per-request timeout without a timer operation per request: the sleep stays armed
/// at an earlier deadline; when it fires before the current one it is re-armed. Deadlines
/// only grow, so this costs one timer operation per timeout period.
struct Timer {
    sleep: Pin<Box<Sleep>>,
    deadline: Instant,
}

impl Timer {
    fn new(deadline: Instant) -> Self {
        Timer {
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
            deadline,
        }
    }

    fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            if self.sleep.as_mut().poll(cx).is_pending() {
                return false;
            }
            if self.sleep.deadline() >= self.deadline {
                return true;
            }
            let deadline = self.deadline;
            self.sleep.as_mut().reset(deadline);
        }
    }
}

enum Guarded<T> {
    Done(T),
    Timeout,
    Stopped,
}

/// Runs `fut` until it completes, the timer expires or the run stops.
async fn guard<F: Future>(fut: F, timer: &mut Timer, stop: &StopWaiter) -> Guarded<F::Output> {
    let mut fut = pin!(fut);
    poll_fn(|cx| {
        if let Poll::Ready(v) = fut.as_mut().poll(cx) {
            return Poll::Ready(Guarded::Done(v));
        }
        if timer.poll_expired(cx) {
            return Poll::Ready(Guarded::Timeout);
        }
        if stop.poll_stopped(cx) {
            return Poll::Ready(Guarded::Stopped);
        }
        Poll::Pending
    })
    .await
}

// ----- connections -----

type Driver = http1::Connection<TokioIo<TcpStream>, ReqBody>;

struct Conn {
    sender: http1::SendRequest<ReqBody>,
    /// Polled by the user's own task while a request is in flight.
    driver: Pin<Box<Driver>>,
}

/// Like [`guard`], also driving the connection. The flag says whether the connection
/// finished (closed or failed) meanwhile.
async fn drive<F: Future>(
    fut: F,
    driver: &mut Pin<Box<Driver>>,
    timer: &mut Timer,
    stop: &StopWaiter,
) -> Guarded<(F::Output, bool)> {
    let mut fut = pin!(fut);
    let mut driver_done = false;
    poll_fn(|cx| {
        if let Poll::Ready(v) = fut.as_mut().poll(cx) {
            return Poll::Ready(Guarded::Done((v, driver_done)));
        }
        if !driver_done {
            // The connection ended when this is ready; whatever it delivered is in the
            // request's channels either way.
            driver_done = driver.as_mut().poll(cx).is_ready();
            // What the driver just read (the response head, the body, readiness for the
            // next request) is usually enough to finish: look at once rather than wait
            // for the wake-up it sent to this very task to be scheduled.
            if let Poll::Ready(v) = fut.as_mut().poll(cx) {
                return Poll::Ready(Guarded::Done((v, driver_done)));
            }
        }
        if timer.poll_expired(cx) {
            return Poll::Ready(Guarded::Timeout);
        }
        if stop.poll_stopped(cx) {
            return Poll::Ready(Guarded::Stopped);
        }
        Poll::Pending
    })
    .await
}

async fn open_connection(addr: SocketAddr) -> std::io::Result<Conn> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, driver) = http1::Builder::new()
        // Requests are small: one flattened buffer and one write(2) beat queued iovecs.
        .writev(false)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    Ok(Conn {
        sender,
        driver: Box::pin(driver),
    })
}

/// One keep-alive connection, reopened when it breaks.
struct Client {
    addr: SocketAddr,
    timeout: Duration,
    conn: Option<Conn>,
    timer: Timer,
    stop: StopWaiter,
    connections_opened: u64,
    connection_errors: u64,
}

impl Client {
    fn new(addr: SocketAddr, timeout: Duration, stop: StopWaiter) -> Self {
        Client {
            addr,
            timeout,
            conn: None,
            timer: Timer::new(Instant::now() + timeout),
            stop,
            connections_opened: 0,
            connection_errors: 0,
        }
    }

    /// Sends `req` (now is `started`) and reads the whole response.
    async fn send(&mut self, req: Request<ReqBody>, started: Instant) -> Outcome {
        self.timer.deadline = started + self.timeout;
        // A ready connection. A kept-alive one the server has closed since is replaced
        // without counting an error; a fresh one that fails is an error.
        loop {
            let fresh = self.conn.is_none();
            if fresh {
                match guard(open_connection(self.addr), &mut self.timer, &self.stop).await {
                    Guarded::Done(Ok(conn)) => {
                        self.connections_opened += 1;
                        self.conn = Some(conn);
                    }
                    Guarded::Done(Err(_)) => {
                        self.connection_errors += 1;
                        let pause = tokio::time::sleep(CONNECT_BACKOFF);
                        if let Guarded::Stopped = guard(pause, &mut self.timer, &self.stop).await {
                            return Outcome::Stopped;
                        }
                        return Outcome::Transport;
                    }
                    Guarded::Timeout => {
                        self.connection_errors += 1;
                        return Outcome::Timeout;
                    }
                    Guarded::Stopped => return Outcome::Stopped,
                }
            }
            let Some(conn) = self.conn.as_mut() else {
                continue;
            };
            let sender = &mut conn.sender;
            let ready = poll_fn(|cx| sender.poll_ready(cx));
            match drive(ready, &mut conn.driver, &mut self.timer, &self.stop).await {
                Guarded::Done((Ok(()), false)) => break,
                Guarded::Done(_) => {
                    self.conn = None;
                    if fresh {
                        self.connection_errors += 1;
                        return Outcome::Transport;
                    }
                }
                Guarded::Timeout => {
                    self.conn = None;
                    return Outcome::Timeout;
                }
                Guarded::Stopped => return Outcome::Stopped,
            }
        }
        let Some(conn) = self.conn.as_mut() else {
            return Outcome::Transport;
        };
        let sender = &mut conn.sender;
        let exchange = async move {
            let resp = sender.send_request(req).await?;
            let status = resp.status().as_u16();
            let close = resp
                .headers()
                .get(CONNECTION)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
            let mut body = resp.into_body();
            while let Some(frame) = body.frame().await {
                frame?;
            }
            Ok::<_, hyper::Error>((status, close))
        };
        match drive(exchange, &mut conn.driver, &mut self.timer, &self.stop).await {
            Guarded::Done((Ok((status, close)), driver_done)) => {
                if close || driver_done {
                    self.conn = None;
                }
                Outcome::Status(status)
            }
            Guarded::Done((Err(_), _)) => {
                self.conn = None;
                self.connection_errors += 1;
                Outcome::Transport
            }
            Guarded::Timeout => {
                // The connection is mid-request: it cannot be reused.
                self.conn = None;
                Outcome::Timeout
            }
            Guarded::Stopped => {
                self.conn = None;
                Outcome::Stopped
            }
        }
    }

    fn into_recorder(self, mut rec: Recorder) -> Recorder {
        rec.connections_opened += self.connections_opened;
        rec.connection_errors += self.connection_errors;
        rec
    }
}

// ----- closed loop -----

async fn run_closed(plan: Arc<Plan>, users: usize, cancel: &CancellationToken) -> RunResult {
    let stop = StopSignal::new(users);
    let _stop_on_drop = StopOnDrop(stop.clone());
    let budget = (MAX_TOTAL_REQUESTS / users as u64).max(1);
    let seed: u64 = rand::random();
    let handles: Vec<_> = (0..users)
        .map(|slot| {
            let waiter = StopWaiter {
                signal: stop.clone(),
                slot,
            };
            let seed = seed ^ (slot as u64).wrapping_mul(0x2545_f491_4f6c_dd1d);
            tokio::spawn(closed_user(plan.clone(), waiter, seed, budget))
        })
        .collect();
    let mut all = pin!(futures::future::join_all(handles));
    let (results, ended_at, cancelled) = tokio::select! {
        results = &mut all => (results, Instant::now(), false),
        _ = tokio::time::sleep_until(plan.end) => {
            stop.stop();
            (all.await, plan.end, false)
        }
        _ = cancel.cancelled() => {
            let at = Instant::now();
            stop.stop();
            (all.await, at, true)
        }
    };
    let mut recorder = Recorder::new(plan.requests.len());
    for r in results {
        recorder.merge(&joined(r));
    }
    RunResult {
        recorder,
        window: ended_at
            .min(plan.end)
            .saturating_duration_since(plan.measure_start),
        cancelled,
        dropped: 0,
    }
}

fn joined<T>(r: Result<T, tokio::task::JoinError>) -> T {
    match r {
        Ok(v) => v,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("load generator task ended abnormally: {e}"),
    }
}

async fn closed_user(plan: Arc<Plan>, stop: StopWaiter, seed: u64, budget: u64) -> Recorder {
    let mut rec = Recorder::new(plan.requests.len());
    let mut client = Client::new(plan.addr, plan.timeout, stop);
    let mut rng = Rng::new(seed);
    for _ in 0..budget {
        if client.stop.is_stopped() {
            break;
        }
        let ep = plan.picker.pick(&mut rng);
        let started = Instant::now();
        if started >= plan.end {
            break;
        }
        let outcome = client.send(plan.requests[ep].clone(), started).await;
        if outcome == Outcome::Stopped {
            break;
        }
        let done = Instant::now();
        if started >= plan.measure_start && done <= plan.end {
            rec.eps[ep].record(outcome, done - started);
        }
    }
    client.into_recorder(rec)
}

// ----- open loop -----

struct Job {
    ep: usize,
    scheduled: Instant,
    record: bool,
}

async fn run_open(
    plan: Arc<Plan>,
    rate: f64,
    max_in_flight: usize,
    duration: Duration,
    cancel: &CancellationToken,
) -> RunResult {
    let stop = StopSignal::new(max_in_flight);
    let _stop_on_drop = StopOnDrop(stop.clone());
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<usize>();
    // Slots are opened lazily and reused most-recently-idle first, so a low rate keeps
    // few connections whatever `max_in_flight` allows.
    let mut slots: Vec<mpsc::Sender<Job>> = Vec::new();
    let mut handles = Vec::new();
    let mut idle: Vec<usize> = Vec::new();
    let mut rng = Rng::new(rand::random());
    let mut dropped = 0u64;
    let mut cancelled = false;
    let mut cancel_wait = pin!(cancel.cancelled());
    let window = plan.end.saturating_duration_since(plan.start).as_secs_f64();
    let wanted = (window * rate).ceil() as u64;
    let capped = wanted > MAX_TOTAL_REQUESTS;
    let planned = wanted.min(MAX_TOTAL_REQUESTS);
    for i in 0..planned {
        let scheduled = plan.start + Duration::from_secs_f64(i as f64 / rate);
        if scheduled >= plan.end {
            break;
        }
        if scheduled > Instant::now() {
            tokio::select! {
                biased;
                _ = &mut cancel_wait => {
                    cancelled = true;
                    break;
                }
                _ = tokio::time::sleep_until(scheduled) => {}
            }
        } else if cancel.is_cancelled() {
            cancelled = true;
            break;
        }
        while let Ok(slot) = done_rx.try_recv() {
            idle.push(slot);
        }
        let record = scheduled >= plan.measure_start;
        let ep = plan.picker.pick(&mut rng);
        let slot = match idle.pop() {
            Some(slot) => slot,
            None if slots.len() < max_in_flight => {
                let slot = slots.len();
                let (tx, rx) = mpsc::channel(1);
                let waiter = StopWaiter {
                    signal: stop.clone(),
                    slot,
                };
                handles.push(tokio::spawn(open_slot(
                    plan.clone(),
                    waiter,
                    rx,
                    done_tx.clone(),
                    slot,
                )));
                slots.push(tx);
                slot
            }
            None => {
                dropped += u64::from(record);
                continue;
            }
        };
        let job = Job {
            ep,
            scheduled,
            record,
        };
        if slots[slot].try_send(job).is_err() {
            dropped += u64::from(record);
        }
    }
    let ended_at = Instant::now();
    // Idle slots end when their channel closes; busy ones finish their request first
    // (within its timeout) unless the run is cancelled.
    drop(slots);
    drop(done_tx);
    if cancelled {
        stop.stop();
    }
    let mut all = pin!(futures::future::join_all(handles));
    let results = if cancelled {
        all.await
    } else {
        tokio::select! {
            results = &mut all => results,
            _ = &mut cancel_wait => {
                cancelled = true;
                stop.stop();
                all.await
            }
        }
    };
    let mut recorder = Recorder::new(plan.requests.len());
    for r in results {
        recorder.merge(&joined(r));
    }
    let window = if cancelled || capped {
        ended_at
            .min(plan.end)
            .saturating_duration_since(plan.measure_start)
    } else {
        duration
    };
    RunResult {
        recorder,
        window,
        cancelled,
        dropped,
    }
}

async fn open_slot(
    plan: Arc<Plan>,
    stop: StopWaiter,
    mut jobs: mpsc::Receiver<Job>,
    done: mpsc::UnboundedSender<usize>,
    slot: usize,
) -> Recorder {
    let mut rec = Recorder::new(plan.requests.len());
    let mut client = Client::new(plan.addr, plan.timeout, stop);
    while let Some(job) = jobs.recv().await {
        let outcome = client
            .send(plan.requests[job.ep].clone(), Instant::now())
            .await;
        if outcome == Outcome::Stopped {
            break;
        }
        if job.record {
            let latency = Instant::now().saturating_duration_since(job.scheduled);
            rec.eps[job.ep].record(outcome, latency);
        }
        if done.send(slot).is_err() {
            break;
        }
    }
    client.into_recorder(rec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{header, StatusCode};
    use axum::routing::{get, post};
    use axum::{Json, Router};

    fn app() -> Router {
        Router::new()
            .route("/fast", get(|| async { "ok" }))
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    "slow"
                }),
            )
            .route(
                "/err",
                get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "boom") }),
            )
            .route(
                "/hang",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    "late"
                }),
            )
            .route(
                "/close",
                get(|| async { ([(header::CONNECTION, "close")], "bye") }),
            )
            .route(
                "/echo",
                post(|Json(v): Json<serde_json::Value>| async move { Json(v) }),
            )
            .route(
                "/private",
                get(|headers: axum::http::HeaderMap| async move {
                    let cookie = headers.get(header::COOKIE).and_then(|c| c.to_str().ok());
                    match cookie {
                        Some("session=s3cret") => (StatusCode::OK, "yours"),
                        _ => (StatusCode::UNAUTHORIZED, "log in"),
                    }
                }),
            )
    }

    async fn serve() -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app()).await.unwrap() });
        addr
    }

    fn config(addr: SocketAddr, endpoints: Vec<EndpointLoad>, mode: LoadMode) -> LoadConfig {
        LoadConfig {
            base_url: format!("http://{addr}"),
            endpoints,
            mode,
            duration: Duration::from_secs(1),
            warmup: Duration::ZERO,
            request_timeout: Duration::from_secs(5),
            headers: Vec::new(),
        }
    }

    fn get_ep(path: &str) -> EndpointLoad {
        EndpointLoad::new("GET", path)
    }

    fn ep<'a>(report: &'a LoadReport, path: &str) -> &'a LoadStats {
        &report
            .endpoints
            .iter()
            .find(|e| e.path == path)
            .unwrap_or_else(|| panic!("no endpoint {path}"))
            .stats
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sessions_headers_go_with_every_request_and_bad_ones_are_refused() {
        let addr = serve().await;
        let mut cfg = config(
            addr,
            vec![get_ep("/private")],
            LoadMode::ClosedLoop { users: 2 },
        );
        cfg.duration = Duration::from_millis(300);
        let anonymous = run_load(&cfg, &CancellationToken::new()).await.unwrap();
        let stats = ep(&anonymous, "/private");
        assert_eq!(stats.client_errors, stats.responses, "{stats:?}");
        cfg.headers = vec![("Cookie".into(), "session=s3cret".into())];
        let logged_in = run_load(&cfg, &CancellationToken::new()).await.unwrap();
        let stats = ep(&logged_in, "/private");
        assert!(stats.responses > 0);
        assert_eq!(stats.client_errors, 0, "{stats:?}");
        cfg.headers = vec![("Cookie".into(), "a\nb".into())];
        let err = run_load(&cfg, &CancellationToken::new()).await.unwrap_err();
        assert!(err.to_string().contains("header Cookie"), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn closed_loop_counts_statuses_latencies_and_errors_per_endpoint() {
        let addr = serve().await;
        let mut cfg = config(
            addr,
            vec![get_ep("/fast"), get_ep("/slow"), get_ep("/err")],
            LoadMode::ClosedLoop { users: 4 },
        );
        cfg.warmup = Duration::from_millis(100);
        let report = run_load(&cfg, &CancellationToken::new()).await.unwrap();

        assert!(!report.cancelled);
        assert_eq!(report.mode, "closed loop, 4 users");
        assert!(
            (report.duration_s - 1.0).abs() < 1e-6,
            "{}",
            report.duration_s
        );
        assert!(report.overall.requests > 0);
        assert_eq!(report.overall.errors, 0, "{report:#?}");
        assert_eq!(report.connection_errors, 0);
        assert!(report.connections_opened >= 4);

        let fast = ep(&report, "/fast");
        assert!(fast.requests > 0);
        assert_eq!(fast.status_counts.get(&200), Some(&fast.requests));
        assert_eq!(fast.error_rate, 0.0);

        let slow = ep(&report, "/slow");
        assert!(slow.requests > 0);
        assert!(slow.latency_ms.p50 >= 15.0, "{:?}", slow.latency_ms);
        assert!(slow.latency_ms.max >= slow.latency_ms.p99);
        assert!(slow.latency_ms.p99 >= slow.latency_ms.p50);

        let err = ep(&report, "/err");
        assert!(err.requests > 0);
        assert_eq!(err.status_counts.get(&500), Some(&err.requests));
        assert_eq!(err.server_errors, err.requests);
        assert_eq!(err.errors, 0, "5xx are answers, not transport errors");
        assert_eq!(err.error_rate, 1.0);

        let sum: u64 = report.endpoints.iter().map(|e| e.stats.requests).sum();
        assert_eq!(report.overall.requests, sum);
        assert_eq!(report.overall.server_errors, err.requests);
        let rate = err.requests as f64 / report.overall.requests as f64;
        assert!((report.overall.error_rate - rate).abs() < 1e-9);
        assert!(report.overall.requests_per_sec > 0.0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn open_loop_keeps_its_schedule() {
        let addr = serve().await;
        let cfg = config(
            addr,
            vec![get_ep("/fast")],
            LoadMode::OpenLoop {
                rate_per_sec: 200.0,
                max_in_flight: 64,
            },
        );
        let report = run_load(&cfg, &CancellationToken::new()).await.unwrap();
        let n = report.overall.requests;
        assert!((150..=250).contains(&n), "{n} requests at 200/s for 1 s");
        assert_eq!(report.dropped, 0);
        assert_eq!(report.overall.errors, 0);
        assert_eq!(report.overall.status_counts.get(&200), Some(&n));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn open_loop_drops_what_exceeds_max_in_flight() {
        let addr = serve().await;
        // One slot, 20 ms per request: about 50 of the 200 scheduled fit.
        let cfg = config(
            addr,
            vec![get_ep("/slow")],
            LoadMode::OpenLoop {
                rate_per_sec: 200.0,
                max_in_flight: 1,
            },
        );
        let report = run_load(&cfg, &CancellationToken::new()).await.unwrap();
        assert!(report.overall.requests > 5, "{report:#?}");
        assert!(report.dropped > 50, "{report:#?}");
        let scheduled = report.overall.requests + report.dropped;
        assert!((150..=250).contains(&scheduled), "{report:#?}");
        assert_eq!(report.connections_opened, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn warmup_is_not_recorded() {
        let addr = serve().await;
        let mut cfg = config(
            addr,
            vec![get_ep("/fast")],
            LoadMode::OpenLoop {
                rate_per_sec: 100.0,
                max_in_flight: 8,
            },
        );
        cfg.warmup = Duration::from_millis(400);
        cfg.duration = Duration::from_millis(400);
        let report = run_load(&cfg, &CancellationToken::new()).await.unwrap();
        let n = report.overall.requests;
        assert!((25..=55).contains(&n), "{n} requests: warmup recorded?");
        assert!((report.warmup_s - 0.4).abs() < 1e-9);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cancellation_stops_the_run_early() {
        let addr = serve().await;
        for mode in [
            LoadMode::ClosedLoop { users: 4 },
            LoadMode::OpenLoop {
                rate_per_sec: 100.0,
                max_in_flight: 4,
            },
        ] {
            let mut cfg = config(addr, vec![get_ep("/fast"), get_ep("/hang")], mode);
            cfg.duration = Duration::from_secs(60);
            cfg.request_timeout = Duration::from_secs(60);
            let cancel = CancellationToken::new();
            let trigger = cancel.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                trigger.cancel();
            });
            let began = std::time::Instant::now();
            let report = run_load(&cfg, &cancel).await.unwrap();
            assert!(began.elapsed() < Duration::from_secs(20), "not stopped");
            assert!(report.cancelled);
            assert!(report.duration_s < 20.0, "{}", report.duration_s);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn timeouts_are_errors_and_the_connection_is_replaced() {
        let addr = serve().await;
        let mut cfg = config(
            addr,
            vec![get_ep("/hang")],
            LoadMode::ClosedLoop { users: 1 },
        );
        cfg.request_timeout = Duration::from_millis(100);
        cfg.duration = Duration::from_millis(600);
        let report = run_load(&cfg, &CancellationToken::new()).await.unwrap();
        let s = &report.overall;
        assert!(s.timeouts >= 2, "{report:#?}");
        assert_eq!(s.responses, 0);
        assert_eq!(s.errors, s.timeouts);
        assert_eq!(s.transport_errors, 0);
        assert_eq!(s.error_rate, 1.0);
        assert!(report.connections_opened >= 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_server_closing_connections_is_not_an_error() {
        let addr = serve().await;
        let mut cfg = config(
            addr,
            vec![get_ep("/close")],
            LoadMode::ClosedLoop { users: 2 },
        );
        cfg.duration = Duration::from_millis(300);
        let report = run_load(&cfg, &CancellationToken::new()).await.unwrap();
        assert!(report.overall.responses > 2, "{report:#?}");
        assert_eq!(report.overall.errors, 0, "{report:#?}");
        assert_eq!(report.connection_errors, 0);
        assert!(report.connections_opened > 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn json_bodies_are_sent_with_their_content_type() {
        let addr = serve().await;
        let mut echo = EndpointLoad::new("post", "echo");
        echo.body = Some(serde_json::json!({"title": "x"}));
        let mut cfg = config(addr, vec![echo], LoadMode::ClosedLoop { users: 1 });
        // By name: the probe finds whichever of localhost's addresses the app is on.
        cfg.base_url = format!("http://localhost:{}", addr.port());
        cfg.duration = Duration::from_millis(200);
        let report = run_load(&cfg, &CancellationToken::new()).await.unwrap();
        let s = ep(&report, "echo");
        assert!(s.requests > 0);
        assert_eq!(s.status_counts.get(&200), Some(&s.requests), "{s:?}");
        assert_eq!(report.endpoints[0].method, "POST");
    }

    #[tokio::test]
    async fn a_target_that_is_down_is_an_error() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let cfg = config(
            SocketAddr::from(([127, 0, 0, 1], port)),
            vec![get_ep("/fast")],
            LoadMode::ClosedLoop { users: 1 },
        );
        let err = run_load(&cfg, &CancellationToken::new()).await.unwrap_err();
        assert!(matches!(err, LoadError::Unreachable { .. }), "{err}");
        assert!(err.to_string().contains("down"), "{err}");
    }

    #[test]
    fn invalid_settings_are_refused_before_sending() {
        let addr = SocketAddr::from(([127, 0, 0, 1], 9));
        let base = config(
            addr,
            vec![get_ep("/fast")],
            LoadMode::ClosedLoop { users: 1 },
        );
        let check = |f: &dyn Fn(&mut LoadConfig), want: &str| {
            let mut cfg = base.clone();
            f(&mut cfg);
            let err = prepare(&cfg)
                .err()
                .unwrap_or_else(|| panic!("accepted: {want}"));
            assert!(err.to_string().contains(want), "{err} lacks {want:?}");
        };
        check(&|c| c.base_url = "https://example.com".into(), "https");
        check(&|c| c.base_url = "localhost:8000".into(), "bad base URL");
        check(&|c| c.base_url = "not a url".into(), "bad base URL");
        check(&|c| c.base_url = "ftp://x/".into(), "not http");
        check(&|c| c.endpoints.clear(), "nothing to load");
        check(&|c| c.endpoints[0].weight = 0, "weight 0");
        check(
            &|c| c.endpoints[0].method = "G T".into(),
            "not an HTTP method",
        );
        check(
            &|c| c.endpoints[0].path = "http://x/y".into(),
            "not a full URL",
        );
        check(&|c| c.duration = Duration::ZERO, "duration");
        check(&|c| c.duration = MAX_DURATION * 2, "longer");
        check(&|c| c.mode = LoadMode::ClosedLoop { users: 0 }, "users");
        check(
            &|c| {
                c.mode = LoadMode::OpenLoop {
                    rate_per_sec: f64::NAN,
                    max_in_flight: 1,
                }
            },
            "rate_per_sec",
        );
        check(
            &|c| {
                c.mode = LoadMode::OpenLoop {
                    rate_per_sec: 10.0,
                    max_in_flight: 0,
                }
            },
            "max_in_flight",
        );
    }

    #[test]
    fn paths_join_the_base_prefix_and_carry_the_host() {
        let mut cfg = config(
            SocketAddr::from(([127, 0, 0, 1], 8080)),
            vec![get_ep("/notes?limit=2"), get_ep("items")],
            LoadMode::ClosedLoop { users: 1 },
        );
        cfg.base_url = "http://localhost:8080/api/".into();
        let p = prepare(&cfg).unwrap();
        assert_eq!((p.host.as_str(), p.port), ("localhost", 8080));
        assert_eq!(p.requests[0].uri(), "/api/notes?limit=2");
        assert_eq!(p.requests[1].uri(), "/api/items");
        assert_eq!(p.requests[0].headers()[HOST], "localhost:8080");
        cfg.base_url = "http://[::1]".into();
        let p = prepare(&cfg).unwrap();
        assert_eq!((p.host.as_str(), p.port), ("::1", 80));
    }

    #[test]
    fn endpoints_are_picked_by_weight() {
        let picker = Picker::new([3u32, 0, 1].into_iter()).unwrap();
        let mut rng = Rng::new(42);
        let mut counts = [0u32; 3];
        for _ in 0..40_000 {
            counts[picker.pick(&mut rng)] += 1;
        }
        assert_eq!(counts[1], 0);
        assert!((29_000..31_000).contains(&counts[0]), "{counts:?}");
        assert!((9_000..11_000).contains(&counts[2]), "{counts:?}");
        assert!(Picker::new([0u32, 0].into_iter()).is_none());
    }

    #[test]
    fn reports_round_trip_through_json() {
        let mut rec = EpRecord::default();
        rec.record(Outcome::Status(200), Duration::from_millis(3));
        rec.record(Outcome::Status(503), Duration::from_millis(9));
        rec.record(Outcome::Timeout, Duration::from_secs(1));
        let stats = rec.stats(2.0);
        assert_eq!(stats.requests, 3);
        assert_eq!(stats.errors, 1);
        assert_eq!(stats.server_errors, 1);
        assert!((stats.error_rate - 2.0 / 3.0).abs() < 1e-9);
        assert!((stats.requests_per_sec - 1.5).abs() < 1e-9);
        assert!((stats.latency_ms.max - 9.0).abs() < 0.01);
        let report = LoadReport {
            mode: LoadMode::ClosedLoop { users: 1 }.describe(),
            duration_s: 2.0,
            warmup_s: 0.0,
            cancelled: false,
            dropped: 0,
            connections_opened: 1,
            connection_errors: 0,
            overall: stats.clone(),
            endpoints: vec![EndpointReport {
                method: "GET".into(),
                path: "/x".into(),
                stats,
            }],
        };
        let json = serde_json::to_string(&report).unwrap();
        assert!(json.contains("\"503\":1"), "{json}");
        let back: LoadReport = serde_json::from_str(&json).unwrap();
        assert_eq!(back, report);
    }

    /// `cargo test --release --lib analysis::loadgen::tests::bench_vs_wrk -- --ignored --nocapture`
    /// Needs `wrk` (`apt-get install -y wrk`). The server gets its own 2-thread runtime; wrk
    /// and then our generator drive it with the same connections for the same time.
    #[test]
    #[ignore = "benchmark: needs wrk, takes about 12 s"]
    fn bench_vs_wrk() {
        const CONNECTIONS: usize = 32;
        const SECS: u64 = 5;
        let server_rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let addr = server_rt.block_on(serve());
        let url = format!("http://{addr}/fast");

        let out = std::process::Command::new("wrk")
            .args([
                "-t2",
                &format!("-c{CONNECTIONS}"),
                &format!("-d{SECS}s"),
                &url,
            ])
            .output()
            .expect("wrk is not installed: apt-get install -y wrk");
        let text = String::from_utf8_lossy(&out.stdout);
        println!("{text}");
        let wrk_rps: f64 = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("wrk printed no Requests/sec");

        let client_rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let cfg = LoadConfig {
            base_url: format!("http://{addr}"),
            endpoints: vec![get_ep("/fast")],
            mode: LoadMode::ClosedLoop { users: CONNECTIONS },
            duration: Duration::from_secs(SECS),
            warmup: Duration::ZERO,
            request_timeout: Duration::from_secs(5),
            headers: Vec::new(),
        };
        let report = client_rt
            .block_on(run_load(&cfg, &CancellationToken::new()))
            .unwrap();
        let ours = report.overall.requests_per_sec;
        println!(
            "wrk -t2 -c{CONNECTIONS} -d{SECS}s: {wrk_rps:.0} req/s\n\
             assay closed loop, {CONNECTIONS} users, {SECS} s: {ours:.0} req/s \
             (p50 {:.3} ms, p99 {:.3} ms, errors {})\n\
             ratio ours/wrk: {:.2}",
            report.overall.latency_ms.p50,
            report.overall.latency_ms.p99,
            report.overall.errors,
            ours / wrk_rps
        );
        assert_eq!(report.overall.errors, 0);
    }
}
