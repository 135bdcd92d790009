//! A typed HTTP client for the server's API, used by workers and the CLI.

use crate::api::*;
use crate::explain::Explanation;
use crate::store::{
    ClaimedJob, Heartbeat, HeartbeatReply, Job, JobFilter, Pipeline, Report, ReportAck,
    WorkerRegistration, WorkerRow,
};
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::Path;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server could not be reached or the connection broke: try again later.
    #[error("cannot reach the server at {url}: {source}")]
    Unreachable { url: String, source: reqwest::Error },
    /// The server answered with an error.
    #[error("{message} [{code}]", code = code.as_str())]
    Api {
        status: u16,
        code: ErrorCode,
        message: String,
    },
    #[error("unexpected answer from the server: {0}")]
    Protocol(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl ClientError {
    /// Whether the same request may succeed later (server down, restarting, overloaded).
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Unreachable { .. } => true,
            ClientError::Api { status, code, .. } => {
                *status >= 500 || *status == 429 || *code == ErrorCode::ShuttingDown
            }
            _ => false,
        }
    }

    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api { code, .. } => Some(*code),
            _ => None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    pub fn new(server: &str) -> Self {
        Client::with_token(server, None)
    }

    /// A client that sends `token` (an API token) with every request.
    pub fn with_token(server: &str, token: Option<&str>) -> Self {
        Client::with_options(server, token, None).expect("no CA to parse")
    }

    /// A client that also trusts `ca_pem` (PEM certificates) for an HTTPS server whose
    /// certificate is not signed by a public authority.
    pub fn with_options(
        server: &str,
        token: Option<&str>,
        ca_pem: Option<&[u8]>,
    ) -> Result<Self, ClientError> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = token {
            if let Ok(mut value) =
                reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.trim()))
            {
                value.set_sensitive(true);
                headers.insert(reqwest::header::AUTHORIZATION, value);
            }
        }
        let mut builder = reqwest::Client::builder();
        if let Some(pem) = ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| {
                ClientError::Protocol(format!("cannot read the CA certificates: {e}"))
            })?;
            if certs.is_empty() {
                return Err(ClientError::Protocol(
                    "the CA file holds no PEM certificate".into(),
                ));
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder
            .default_headers(headers)
            .connect_timeout(Duration::from_secs(5))
            // Well inside the server's header read timeout, which also closes idle
            // connections: a pooled connection is never reused as the server closes it.
            .pool_idle_timeout(Duration::from_secs(20))
            .tcp_nodelay(true)
            .build()
            .expect("HTTP client builds");
        Ok(Client {
            http,
            base: format!("{}{}", server.trim_end_matches('/'), API_PREFIX),
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    async fn send<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<T, ClientError> {
        let resp = req
            .send()
            .await
            .map_err(|source| ClientError::Unreachable {
                url: url.to_string(),
                source,
            })?;
        decode(resp, url).await
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let url = self.url(path);
        self.send(self.http.get(&url).timeout(Duration::from_secs(60)), &url)
            .await
    }

    async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        timeout: Duration,
    ) -> Result<T, ClientError> {
        let url = self.url(path);
        self.send(self.http.post(&url).json(body).timeout(timeout), &url)
            .await
    }

    pub async fn health(&self) -> Result<serde_json::Value, ClientError> {
        self.get("/health").await
    }

    pub async fn whoami(&self) -> Result<WhoAmI, ClientError> {
        self.get("/whoami").await
    }

    pub async fn submit(&self, req: &SubmitRequest) -> Result<SubmitResponse, ClientError> {
        self.post("/pipelines", req, Duration::from_secs(120)).await
    }

    pub async fn pipelines(&self, limit: i64) -> Result<Vec<Pipeline>, ClientError> {
        self.get(&format!("/pipelines?limit={limit}")).await
    }

    pub async fn pipeline(&self, id: i64) -> Result<PipelineDetail, ClientError> {
        self.get(&format!("/pipelines/{id}")).await
    }

    pub async fn cancel_pipeline(&self, id: i64) -> Result<PipelineDetail, ClientError> {
        self.post(
            &format!("/pipelines/{id}/cancel"),
            &(),
            Duration::from_secs(60),
        )
        .await
    }

    pub async fn retry_pipeline(&self, id: i64) -> Result<RetryResponse, ClientError> {
        self.post(
            &format!("/pipelines/{id}/retry"),
            &(),
            Duration::from_secs(60),
        )
        .await
    }

    pub async fn events(
        &self,
        id: i64,
        after: i64,
        wait_ms: u64,
    ) -> Result<EventsResponse, ClientError> {
        let url = self.url(&format!(
            "/pipelines/{id}/events?after={after}&wait_ms={wait_ms}"
        ));
        let timeout = Duration::from_millis(wait_ms) + Duration::from_secs(30);
        self.send(self.http.get(&url).timeout(timeout), &url).await
    }

    pub async fn jobs(&self, filter: &JobFilter) -> Result<Vec<Job>, ClientError> {
        let mut q: Vec<(&str, String)> = Vec::new();
        let mut put = |name, value: Option<String>| {
            if let Some(v) = value {
                q.push((name, v));
            }
        };
        put("pipeline", filter.pipeline_id.map(|p| p.to_string()));
        put("stage", filter.stage.clone());
        put("state", filter.state.map(|s| s.to_string()));
        put("after", filter.after_id.map(|a| a.to_string()));
        put("limit", filter.limit.map(|l| l.to_string()));
        put("pending", filter.pending.then(|| "true".to_string()));
        put("model", filter.model.clone());
        put("template", filter.template.clone());
        let url = self.url("/jobs");
        // The query is encoded by reqwest: stage, model and template names are free text.
        self.send(
            self.http
                .get(&url)
                .query(&q)
                .timeout(Duration::from_secs(60)),
            &url,
        )
        .await
    }

    pub async fn explain(&self, job_id: i64) -> Result<Explanation, ClientError> {
        self.get(&format!("/jobs/{job_id}")).await
    }

    pub async fn cancel_job(&self, job_id: i64) -> Result<Job, ClientError> {
        self.post(
            &format!("/jobs/{job_id}/cancel"),
            &(),
            Duration::from_secs(60),
        )
        .await
    }

    pub async fn retry_job(&self, job_id: i64) -> Result<RetryResponse, ClientError> {
        self.post(
            &format!("/jobs/{job_id}/retry"),
            &(),
            Duration::from_secs(60),
        )
        .await
    }

    pub async fn workers(&self) -> Result<Vec<WorkerRow>, ClientError> {
        self.get("/workers").await
    }

    pub async fn register(&self, w: &WorkerRegistration) -> Result<serde_json::Value, ClientError> {
        self.post("/workers/register", w, Duration::from_secs(30))
            .await
    }

    pub async fn worker_stopped(&self, id: &str) -> Result<serde_json::Value, ClientError> {
        self.post(
            &format!("/workers/{id}/stopped"),
            &(),
            Duration::from_secs(10),
        )
        .await
    }

    pub async fn claim(&self, body: &ClaimBody) -> Result<(Vec<ClaimedJob>, i64), ClientError> {
        let timeout = Duration::from_millis(body.wait_ms) + Duration::from_secs(30);
        let resp: ClaimResponse = self.post("/workers/claim", body, timeout).await?;
        Ok((resp.jobs, resp.heartbeat_ms))
    }

    pub async fn heartbeat(
        &self,
        hb: &Heartbeat,
        timeout: Duration,
    ) -> Result<HeartbeatReply, ClientError> {
        self.post("/workers/heartbeat", hb, timeout).await
    }

    pub async fn report(&self, reports: Vec<Report>) -> Result<Vec<ReportAck>, ClientError> {
        let resp: ReportResponse = self
            .post(
                "/workers/report",
                &ReportBody { reports },
                Duration::from_secs(60),
            )
            .await?;
        Ok(resp.acks)
    }

    pub async fn has_blob(&self, digest: &str) -> Result<bool, ClientError> {
        let url = self.url(&format!("/blobs/{digest}"));
        let resp = self
            .http
            .head(&url)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map_err(|source| ClientError::Unreachable {
                url: url.clone(),
                source,
            })?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            s => Err(ClientError::Api {
                status: s.as_u16(),
                code: if s.is_server_error() {
                    ErrorCode::Internal
                } else {
                    ErrorCode::InvalidRequest
                },
                message: format!("HEAD {url} answered {s}"),
            }),
        }
    }

    /// Stream a file to the server under its digest; the server verifies the hash.
    pub async fn put_blob(&self, digest: &str, path: &Path) -> Result<(), ClientError> {
        let url = self.url(&format!("/blobs/{digest}"));
        let file = tokio::fs::File::open(path).await?;
        let len = file.metadata().await?.len();
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(
            file,
            256 * 1024,
        ));
        let req = self
            .http
            .put(&url)
            .header(reqwest::header::CONTENT_LENGTH, len)
            .body(body)
            .timeout(Duration::from_secs(3_600));
        let _: serde_json::Value = self.send(req, &url).await?;
        Ok(())
    }

    pub async fn usage(&self, pipeline_id: i64) -> Result<UsageResponse, ClientError> {
        self.get(&format!("/pipelines/{pipeline_id}/usage")).await
    }

    /// Ask for a slot to call a model; the server long-polls up to `body.wait_ms`.
    pub async fn acquire_call(&self, body: &AcquireBody) -> Result<AcquireResponse, ClientError> {
        let timeout = Duration::from_millis(body.wait_ms) + Duration::from_secs(30);
        self.post("/llm/acquire", body, timeout).await
    }

    pub async fn record_call(&self, body: &CallBody) -> Result<(), ClientError> {
        let _: serde_json::Value = self
            .post("/llm/calls", body, Duration::from_secs(60))
            .await?;
        Ok(())
    }

    pub async fn llm_limits(
        &self,
    ) -> Result<Vec<crate::server::llm_gate::LimiterState>, ClientError> {
        self.get("/llm/limits").await
    }

    /// The answer the server keeps for this request, if any.
    pub async fn cached_answer(
        &self,
        lookup: &AnswerLookup,
    ) -> Result<Option<serde_json::Value>, ClientError> {
        let found: CachedAnswer = self
            .post("/llm/answers", lookup, Duration::from_secs(60))
            .await?;
        Ok(found.answer)
    }

    /// One export of a pipeline (`crate::report::ExportFormat`), whole.
    pub async fn export(
        &self,
        pipeline_id: i64,
        format: crate::report::ExportFormat,
    ) -> Result<Vec<u8>, ClientError> {
        let url = self.url(&format!(
            "/pipelines/{pipeline_id}/export/{}",
            format.file_name()
        ));
        let unreachable = |source| ClientError::Unreachable {
            url: url.clone(),
            source,
        };
        let resp = self.http.get(&url).send().await.map_err(unreachable)?;
        if !resp.status().is_success() {
            return Err(error_from(resp, &url).await);
        }
        Ok(resp.bytes().await.map_err(unreachable)?.to_vec())
    }

    /// Download a job's artifact to `to`, streaming.
    pub async fn download_artifact(
        &self,
        job_id: i64,
        name: &str,
        to: &Path,
    ) -> Result<u64, ClientError> {
        use futures::StreamExt;
        use tokio::io::AsyncWriteExt;
        let url = self.url(&format!("/jobs/{job_id}/artifacts/{name}"));
        let resp = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|source| ClientError::Unreachable {
                url: url.clone(),
                source,
            })?;
        if !resp.status().is_success() {
            return Err(error_from(resp, &url).await);
        }
        let mut file = tokio::fs::File::create(to).await?;
        let mut stream = resp.bytes_stream();
        let mut written = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|source| ClientError::Unreachable {
                url: url.clone(),
                source,
            })?;
            file.write_all(&chunk).await?;
            written += chunk.len() as u64;
        }
        file.flush().await?;
        Ok(written)
    }
}

/// Ask the server again through short trouble (a restart, a dropped connection), with
/// doubling pauses, for up to `give_up`; a refusal or lasting trouble is returned.
pub async fn patiently<T, F, Fut>(give_up: Duration, mut ask: F) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    let deadline = tokio::time::Instant::now() + give_up;
    let mut delay = Duration::from_millis(200);
    loop {
        match ask().await {
            Err(e) if e.is_transient() && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            answer => return answer,
        }
    }
}

async fn error_from(resp: reqwest::Response, url: &str) -> ClientError {
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    match serde_json::from_str::<ErrorBody>(&text) {
        Ok(body) => ClientError::Api {
            status,
            code: body.error.code,
            message: body.error.message,
        },
        Err(_) => ClientError::Api {
            status,
            code: if status >= 500 {
                ErrorCode::Internal
            } else {
                ErrorCode::InvalidRequest
            },
            message: format!(
                "{url} answered {status}: {}",
                text.chars().take(300).collect::<String>()
            ),
        },
    }
}

async fn decode<T: DeserializeOwned>(resp: reqwest::Response, url: &str) -> Result<T, ClientError> {
    if !resp.status().is_success() {
        return Err(error_from(resp, url).await);
    }
    let bytes = resp
        .bytes()
        .await
        .map_err(|source| ClientError::Unreachable {
            url: url.to_string(),
            source,
        })?;
    serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol(format!("{url}: {e}")))
}
