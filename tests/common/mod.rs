//! Helpers for tests that run real `assay` processes.
#![allow(dead_code)]

use assay::api::SubmitRequest;
use assay::client::Client;
use assay::store::{Job, JobFilter};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_assay");

pub const ONE_NOOP: &str = "[pipeline]\nname = \"one\"\n[[stage]]\nname = \"a\"\nkind = \"noop\"\n";

/// A submission of `spec` as the API takes it.
pub fn request(spec: &str) -> SubmitRequest {
    SubmitRequest {
        spec: spec.into(),
        file_name: None,
        idempotency_key: None,
    }
}

/// A child process that is killed (SIGKILL) when dropped, so a failing test leaves
/// nothing running.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
    pub fn sigterm(&self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid()),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    /// Wait for exit; returns the exit code, or None if it did not exit in time.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spawn(name: &str, args: &[&str], log: &Path) -> Proc {
    spawn_with_env(name, args, log, &[])
}

fn spawn_with_env(name: &str, args: &[&str], log: &Path, env: &[(&str, &str)]) -> Proc {
    let out = std::fs::File::create(log).unwrap();
    let child = Command::new(BIN)
        .args(args)
        .envs(env.iter().copied())
        .env("ASSAY_LOG", "info")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    Proc {
        child,
        name: name.into(),
    }
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub url: String,
    pub client: Client,
}

impl Cluster {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}");
        Cluster {
            client: Client::new(&url),
            dir,
            port,
            url,
        }
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// A server that allows every kind (the tests run `command` jobs).
    pub async fn server(&self, heartbeat: &str) -> Proc {
        self.server_with(heartbeat, &["--allow-kinds", "all"]).await
    }

    /// A server started with more flags (e.g. `--auth`).
    pub async fn server_with(&self, heartbeat: &str, extra: &[&str]) -> Proc {
        let p = self.start_server(heartbeat, extra);
        wait_for("server health", Duration::from_secs(30), || async {
            self.client.health().await.is_ok()
        })
        .await;
        p
    }

    /// A server process, not waited for.
    pub fn start_server(&self, heartbeat: &str, extra: &[&str]) -> Proc {
        let listen = format!("127.0.0.1:{}", self.port);
        let data = self.path("server");
        let log = self.path(&format!("server-{}.log", uuid::Uuid::new_v4()));
        let mut args = vec![
            "server",
            "--listen",
            &listen,
            "--heartbeat",
            heartbeat,
            "--data-dir",
            data.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        spawn("server", &args, &log)
    }

    pub fn worker(&self, id: &str, concurrency: usize, extra: &[&str]) -> Proc {
        self.worker_at(&self.url, id, &format!("spool-{id}"), concurrency, extra)
    }

    /// A worker whose environment also holds `env` (secrets it must not give away).
    pub fn worker_with_env(&self, id: &str, extra: &[&str], env: &[(&str, &str)]) -> Proc {
        let spool = self.path(&format!("spool-{id}"));
        let log = self.path(&format!("worker-{id}-{}.log", uuid::Uuid::new_v4()));
        let mut args = vec![
            "worker",
            "--server",
            &self.url,
            "--id",
            id,
            "--spool-dir",
            spool.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        spawn_with_env(id, &args, &log, env)
    }

    /// A worker that talks to `server` (the server, or a proxy in front of it) with its
    /// spool in `spool` under the test's folder.
    pub fn worker_at(
        &self,
        server: &str,
        id: &str,
        spool: &str,
        concurrency: usize,
        extra: &[&str],
    ) -> Proc {
        let spool = self.path(spool);
        let log = self.path(&format!("worker-{id}-{}.log", uuid::Uuid::new_v4()));
        let conc = concurrency.to_string();
        let mut args = vec![
            "worker",
            "--server",
            server,
            "--id",
            id,
            "--concurrency",
            &conc,
            "--spool-dir",
            spool.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        spawn(id, &args, &log)
    }

    pub async fn submit(&self, spec: &str) -> i64 {
        self.client
            .submit(&SubmitRequest {
                spec: spec.into(),
                file_name: None,
                idempotency_key: None,
            })
            .await
            .unwrap()
            .pipeline_id
    }

    pub async fn jobs(&self, pipeline: i64) -> Vec<Job> {
        self.client
            .jobs(&JobFilter {
                pipeline_id: Some(pipeline),
                limit: Some(10_000),
                ..Default::default()
            })
            .await
            .unwrap()
    }

    pub async fn wait_finished(
        &self,
        pipeline: i64,
        timeout: Duration,
    ) -> assay::api::PipelineDetail {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(d) = self.client.pipeline(pipeline).await {
                if d.pipeline.state.is_terminal() {
                    return d;
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!(
            "pipeline {pipeline} did not finish in {timeout:?}: {:?}\nlogs:\n{}",
            self.client
                .pipeline(pipeline)
                .await
                .ok()
                .map(|d| d.pipeline),
            self.logs()
        );
    }

    pub fn logs(&self) -> String {
        let mut out = String::new();
        for e in std::fs::read_dir(self.dir.path()).unwrap().flatten() {
            if e.path().extension().is_some_and(|x| x == "log") {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                out += &format!(
                    "--- {}\n{}\n",
                    e.path().display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
        out
    }
}

/// Every job completed by exactly one attempt.
pub async fn assert_one_result_each(c: &Cluster, pipeline: i64) {
    for job in c.jobs(pipeline).await {
        assert_eq!(job.state, assay::domain::JobState::Completed, "{job:?}");
        let e = c.client.explain(job.id).await.unwrap();
        let completed = e
            .attempts
            .iter()
            .filter(|a| a.outcome == assay::domain::AttemptOutcome::Completed)
            .count();
        assert_eq!(
            completed, 1,
            "job {} has {completed} completed attempts: {:?}",
            job.key, e.attempts
        );
        assert!(
            e.attempts
                .iter()
                .all(|a| a.outcome != assay::domain::AttemptOutcome::Running),
            "{:?}",
            e.attempts
        );
    }
}

pub async fn wait_for_opt<F, Fut>(timeout: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < timeout {
        if cond().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    assert!(
        wait_for_opt(timeout, cond).await,
        "timed out after {timeout:?} waiting for {what}"
    );
}

/// Processes whose command line contains `marker` (to prove nothing was left running).
pub fn processes_with(marker: &str) -> Vec<i32> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(marker) && !cmd.contains("processes_with") {
                found.push(pid);
            }
        }
    }
    found
}

/// Wait until no process with `marker` in its command line is left.
pub async fn wait_until_gone(marker: &str, what: &str, timeout: Duration) {
    wait_for(what, timeout, || async {
        processes_with(marker).is_empty()
    })
    .await;
}

/// A server running in the test's own process: real HTTP on a free port, durable SQLite
/// in `config.data_dir`.
pub struct InProcess {
    pub running: assay::server::RunningServer,
    pub stop: tokio_util::sync::CancellationToken,
    pub client: Client,
}

pub async fn in_process(mut config: assay::server::ServerConfig) -> InProcess {
    // A test binary is not `assay`: templated specs are planned by the real one, as a
    // server started from it would.
    config.planner = assay::planner::Planner::isolated(env!("CARGO_BIN_EXE_assay"));
    let stop = tokio_util::sync::CancellationToken::new();
    let running = assay::server::start(config, stop.clone()).await.unwrap();
    let client = Client::new(&format!("http://{}", running.addr));
    InProcess {
        running,
        stop,
        client,
    }
}

impl InProcess {
    /// Stop it and wait until it has.
    pub async fn stop(self) {
        self.stop.cancel();
        self.running.wait().await;
    }
}

/// A loopback TCP proxy between workers and the server that misbehaves on demand: it
/// resets a share of the connections it relays (at once, or after passing on a few bytes:
/// a request or an answer cut in the middle), resets every connection while blocked, and
/// can reset the connection that carries the next heartbeat. `resets` counts the resets it
/// made, not connections that ended because a side went away.
pub struct Proxy {
    pub port: u16,
    pub url: String,
    pub connections: std::sync::Arc<std::sync::atomic::AtomicU64>,
    pub resets: std::sync::Arc<std::sync::atomic::AtomicU64>,
    blocked: tokio::sync::watch::Sender<bool>,
    drop_heartbeat: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stall_heartbeat: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Proxy {
    pub async fn start(target: u16, reset_share: f64) -> Proxy {
        use rand::Rng;
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        use std::sync::Arc;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicU64::new(0));
        let resets = Arc::new(AtomicU64::new(0));
        let (blocked, blocked_rx) = tokio::sync::watch::channel(false);
        let drop_heartbeat = Arc::new(AtomicBool::new(false));
        let stall_heartbeat = Arc::new(AtomicBool::new(false));
        let (count, reset_count, drop_next, stall_next) = (
            connections.clone(),
            resets.clone(),
            drop_heartbeat.clone(),
            stall_heartbeat.clone(),
        );
        tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    return;
                };
                count.fetch_add(1, Ordering::Relaxed);
                let (reset, after) = {
                    let mut rng = rand::thread_rng();
                    (rng.gen_bool(reset_share), rng.gen_range(0..2_048usize))
                };
                let (reset_count, drop_next, stall_next) =
                    (reset_count.clone(), drop_next.clone(), stall_next.clone());
                let mut blocked = blocked_rx.clone();
                tokio::spawn(async move {
                    let refuse = *blocked.borrow();
                    let outbound = if refuse {
                        None
                    } else {
                        tokio::net::TcpStream::connect(("127.0.0.1", target))
                            .await
                            .ok()
                    };
                    let Some(outbound) = outbound else {
                        // Blocked, or the server is down: the client's connection is reset.
                        if refuse {
                            reset_count.fetch_add(1, Ordering::Relaxed);
                        }
                        let _ = inbound.set_zero_linger();
                        return;
                    };
                    let (mut ri, mut wi) = tokio::io::split(inbound);
                    let (mut ro, mut wo) = tokio::io::split(outbound);
                    let passed = AtomicU64::new(0);
                    let cut_after = reset.then_some(after);
                    // Ok(true): cut here on purpose; an error: one side went away (a
                    // killed process, a reset from the other side), passed on as a reset.
                    let cut = tokio::select! {
                        r = relay(&mut ri, &mut wo, &passed, cut_after, Some((&drop_next, &stall_next))) => r,
                        r = relay(&mut ro, &mut wi, &passed, cut_after, None) => r,
                        _ = blocked.wait_for(|b| *b) => Ok(true),
                    };
                    if matches!(cut, Ok(true)) {
                        reset_count.fetch_add(1, Ordering::Relaxed);
                    }
                    if !matches!(cut, Ok(false)) {
                        let _ = ri.unsplit(wi).set_zero_linger();
                    }
                });
            }
        });
        Proxy {
            port,
            url: format!("http://127.0.0.1:{port}"),
            connections,
            resets,
            blocked,
            drop_heartbeat,
            stall_heartbeat,
        }
    }

    /// Hold the next heartbeat request, unanswered, until its sender gives up on it.
    pub fn stall_next_heartbeat(&self) {
        self.stall_heartbeat
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether the heartbeat asked for by `stall_next_heartbeat` was held yet.
    pub fn heartbeat_stalled(&self) -> bool {
        !self
            .stall_heartbeat
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Reset every connection, open or new, until `unblock`.
    pub fn block(&self) {
        self.blocked.send_replace(true);
    }

    pub fn unblock(&self) {
        self.blocked.send_replace(false);
    }

    /// Reset the connection of the next heartbeat request.
    pub fn drop_next_heartbeat(&self) {
        self.drop_heartbeat
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether the heartbeat asked for by `drop_next_heartbeat` was dropped yet.
    pub fn heartbeat_dropped(&self) -> bool {
        !self
            .drop_heartbeat
            .load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Copy `from` to `to`. Ok(true) when the connection is to be reset: past `cut_after`
/// bytes (both ways together), or a heartbeat when the first flag of `heartbeats` is set
/// (once); a heartbeat when the second is set is held, not passed on, until the sender
/// closes the connection.
async fn relay<R, W>(
    from: &mut R,
    to: &mut W,
    passed: &std::sync::atomic::AtomicU64,
    cut_after: Option<usize>,
    heartbeats: Option<(
        &std::sync::atomic::AtomicBool,
        &std::sync::atomic::AtomicBool,
    )>,
) -> std::io::Result<bool>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return Ok(false);
        }
        let total = passed.fetch_add(n as u64, Ordering::Relaxed) as usize + n;
        if cut_after.is_some_and(|cut| total > cut) {
            return Ok(true);
        }
        if let Some((drop, stall)) = heartbeats {
            let heartbeat = buf[..n]
                .windows(26)
                .any(|w| w == b"POST /api/v1/workers/heart");
            if heartbeat && drop.swap(false, Ordering::SeqCst) {
                return Ok(true);
            }
            if heartbeat && stall.swap(false, Ordering::SeqCst) {
                while from.read(&mut buf).await? > 0 {}
                return Ok(false);
            }
        }
        to.write_all(&buf[..n]).await?;
    }
}

/// `assay token create` on the server's data directory; the token it printed.
pub fn create_token(c: &Cluster, scopes: &str, name: &str) -> String {
    create_token_in(&c.path("server"), scopes, name)
}

/// `assay token create` on the data directory `server_dir` (an `assay server`'s
/// `--data-dir`, or `DATA/server` of `assay run`); the token it printed.
pub fn create_token_in(server_dir: &Path, scopes: &str, name: &str) -> String {
    create_token_with(server_dir, scopes, name, &[])
}

/// [`create_token_in`] with more flags (e.g. `--kinds`).
pub fn create_token_with(server_dir: &Path, scopes: &str, name: &str, extra: &[&str]) -> String {
    let out = std::process::Command::new(BIN)
        .args(["token", "create", "--data-dir"])
        .arg(server_dir)
        .args(["--scope", scopes, "--name", name])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A client of the embedded server of an `assay run` with data directory `data` that
/// listens on `listen`: once it answers, with a token made the way a user would make one
/// while the run goes on (`assay token create --data-dir DATA/server`).
pub async fn run_client(data: &Path, listen: &str, scopes: &str) -> Client {
    let url = format!("http://{listen}");
    let anonymous = Client::new(&url);
    wait_for("the run's server", Duration::from_secs(60), || async {
        anonymous.health().await.is_ok()
    })
    .await;
    let token = create_token_in(&data.join("server"), scopes, "test");
    Client::with_token(&url, Some(&token))
}
