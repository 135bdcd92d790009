//! The `command` kind: run a program in its own process group, capture its output, collect
//! its artifacts and JSON result, and stop the whole group when told to.
//!
//! Contract with the program:
//! - `ASSAY_OUTPUT_DIR` names a folder whose files become the job's artifacts;
//!   `$ASSAY_OUTPUT_DIR/result.json`, if written, is the job's result.
//! - A stdout line `::assay-progress {"step": "...", "percent": 40, "message": "..."}`
//!   reports progress.
//! - Exit 0 succeeds. An exit code listed in `retry_exit_codes` (default: 75, EX_TEMPFAIL)
//!   or death by a signal is a retryable failure; any other exit code is permanent.

use super::{JobContext, JobOutput};
use crate::domain::Failure;
use crate::store::Progress;
use crate::supervise::{KillOnDrop, SupervisedCommand};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};

const PROGRESS_PREFIX: &str = "::assay-progress ";
/// Results up to this size are stored inline with the job; larger ones stay artifacts.
const INLINE_RESULT_LIMIT: u64 = 1024 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CommandParams {
    program: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    cwd: Option<PathBuf>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    /// Files (relative to `cwd`) copied into the artifacts after a successful run.
    #[serde(default)]
    outputs: Vec<PathBuf>,
    #[serde(default = "default_retry_codes")]
    retry_exit_codes: Vec<i32>,
    /// How long the program gets between SIGTERM and SIGKILL.
    #[serde(default = "default_grace")]
    grace: String,
}

fn default_retry_codes() -> Vec<i32> {
    vec![75]
}

fn default_grace() -> String {
    "5s".into()
}

fn parse(params: &Value) -> Result<(CommandParams, Duration), String> {
    let p: CommandParams = serde_json::from_value(params.clone())
        .map_err(|e| format!("invalid params for `command`: {e}"))?;
    if p.program.trim().is_empty() {
        return Err("`program` is empty".into());
    }
    let grace = humantime::parse_duration(&p.grace)
        .map_err(|e| format!("`grace` = `{}` is not a duration: {e}", p.grace))?;
    Ok((p, grace))
}

/// What a `command` job gets of the worker's environment: where programs are, and how to
/// speak. Anything else it needs, the spec's `env` says.
const PASSED_ENV: &[&str] = &["PATH", "LANG", "LC_ALL", "TZ"];

pub fn validate(params: &Value) -> Result<(), String> {
    parse(params).map(|_| ())
}

pub async fn run(ctx: &JobContext) -> Result<JobOutput, Failure> {
    let (p, grace) = parse(&ctx.params).map_err(|e| Failure::permanent("bad_params", e))?;
    let io = |what: &str, e: std::io::Error| Failure::retryable("io", format!("{what}: {e}"));
    // Under a supervisor: the program and everything it starts die with this worker.
    let mut cmd = SupervisedCommand::new(&p.program);
    // The spec's environment, not the worker's (which may hold provider keys): a few
    // harmless variables pass, the rest is what the spec declares.
    cmd.env_clear();
    for var in PASSED_ENV {
        if let Some(value) = std::env::var_os(var) {
            cmd.env(var, value);
        }
    }
    cmd.env("HOME", &ctx.output_dir);
    cmd.args(&p.args)
        .envs(&p.env)
        .env("ASSAY_OUTPUT_DIR", &ctx.output_dir)
        .env("ASSAY_JOB_ID", ctx.job_id.to_string())
        .env("ASSAY_JOB_KEY", &ctx.key)
        .env("ASSAY_ATTEMPT", ctx.attempt.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(cwd) = &p.cwd {
        if !cwd.is_dir() {
            return Err(Failure::permanent(
                "bad_cwd",
                format!("`cwd` = {} is not a folder", cwd.display()),
            ));
        }
        cmd.current_dir(cwd);
    }
    ctx.step("starting", None, Some(p.program.clone()));
    let (mut child, handle) = cmd.spawn_tokio().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Failure::permanent(
            "missing_tool",
            format!(
                "program `{}` was not found (is it installed and on PATH?)",
                p.program
            ),
        ),
        std::io::ErrorKind::PermissionDenied => Failure::permanent(
            "not_executable",
            format!("program `{}` is not executable", p.program),
        ),
        _ => Failure::retryable("spawn", format!("starting `{}`: {e}", p.program)),
    })?;
    // A job future dropped mid-run (the worker stopping hard) kills the whole tree.
    let mut guard = KillOnDrop::new(handle.clone());
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let out_log = ctx.output_dir.join("stdout.log");
    let err_log = ctx.output_dir.join("stderr.log");
    let progress = ctx.progress.clone();
    let stdout_task = tokio::spawn(copy_lines(stdout, out_log, Some(progress)));
    let stderr_task = tokio::spawn(copy_lines(stderr, err_log, None));
    ctx.step("running", None, Some(p.program.clone()));

    let status = tokio::select! {
        status = child.wait() => Some(status.map_err(|e| io("waiting for the program", e))?),
        _ = ctx.cancel.cancelled() => None,
    };
    let status = match status {
        Some(status) => status,
        None => {
            handle.terminate();
            if tokio::time::timeout(grace, child.wait()).await.is_err() {
                handle.kill();
                let _ = child.wait().await;
            }
            guard.disarm();
            handle.after_exit();
            drain_output(stdout_task, stderr_task).await;
            return Err(Failure::retryable("stopped", "the program was stopped"));
        }
    };
    guard.disarm();
    // The program is done; its background children must not outlive the job.
    handle.after_exit();
    drain_output(stdout_task, stderr_task).await;

    if !status.success() {
        return Err(match (status.code(), status.signal()) {
            (Some(code), _) if p.retry_exit_codes.contains(&code) => Failure::retryable(
                "exit_status",
                format!(
                    "`{}` exited with {code} (retryable by its params)",
                    p.program
                ),
            ),
            (Some(code), _) => Failure::permanent(
                "exit_status",
                format!("`{}` exited with {code}; see stderr.log", p.program),
            ),
            (None, signal) => Failure::retryable(
                "signal",
                format!(
                    "`{}` was killed by signal {}",
                    p.program,
                    signal.unwrap_or(0)
                ),
            ),
        });
    }
    for output in &p.outputs {
        let from = match &p.cwd {
            Some(cwd) => cwd.join(output),
            None => output.clone(),
        };
        let name = output
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_else(|| "output".into());
        tokio::fs::copy(&from, ctx.output_dir.join(&name))
            .await
            .map_err(|e| {
                Failure::permanent(
                    "missing_output",
                    format!("declared output `{}` was not produced: {e}", from.display()),
                )
            })?;
    }
    let result_path = ctx.output_dir.join("result.json");
    let result = match tokio::fs::metadata(&result_path).await {
        // A large result travels as its artifact (streamed, hash-verified), not inline.
        Ok(meta) if meta.len() > INLINE_RESULT_LIMIT => {
            json!({"artifact": "result.json", "bytes": meta.len()})
        }
        Ok(_) => {
            let bytes = tokio::fs::read(&result_path)
                .await
                .map_err(|e| io("reading result.json", e))?;
            serde_json::from_slice::<Value>(&bytes).map_err(|e| {
                Failure::permanent("bad_result", format!("result.json is not valid JSON: {e}"))
            })?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => json!({}),
        Err(e) => return Err(io("reading result.json", e)),
    };
    Ok(JobOutput {
        result: json!({"exit_code": 0, "result": result}),
    })
}

/// Wait a little for the output copies to reach end of file, then give up: a process
/// that escaped the group (setsid, a daemon) may hold the pipes open forever.
async fn drain_output(
    stdout: tokio::task::JoinHandle<std::io::Result<()>>,
    stderr: tokio::task::JoinHandle<std::io::Result<()>>,
) {
    for mut task in [stdout, stderr] {
        if tokio::time::timeout(Duration::from_secs(2), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
}

async fn copy_lines(
    from: impl AsyncRead + Unpin,
    to: PathBuf,
    progress: Option<tokio::sync::watch::Sender<Option<Progress>>>,
) -> std::io::Result<()> {
    let mut file = tokio::io::BufWriter::new(tokio::fs::File::create(&to).await?);
    let mut lines = BufReader::new(from).split(b'\n');
    while let Some(line) = lines.next_segment().await? {
        if let (Some(tx), Ok(text)) = (&progress, std::str::from_utf8(&line)) {
            if let Some(json) = text.strip_prefix(PROGRESS_PREFIX) {
                if let Ok(p) = serde_json::from_str::<Progress>(json.trim()) {
                    tx.send_replace(Some(p));
                }
            }
        }
        file.write_all(&line).await?;
        file.write_all(b"\n").await?;
    }
    file.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::FailureClass;
    use tokio_util::sync::CancellationToken;

    fn ctx(dir: &std::path::Path, params: Value) -> JobContext {
        let out = dir.join("out");
        std::fs::create_dir_all(&out).unwrap();
        JobContext {
            job_id: 7,
            key: "k".into(),
            attempt: 1,
            params,
            item: json!({}),
            output_dir: out,
            cancel: CancellationToken::new(),
            progress: tokio::sync::watch::channel(None).0,
            server: None,
            waited_ms: Default::default(),
            providers: Default::default(),
            app_source: None,
        }
    }

    #[tokio::test]
    async fn a_job_sees_the_specs_environment_not_the_workers() {
        // Cargo gives every test process variables of its own: the job must not see them.
        assert!(std::env::var_os("CARGO_PKG_NAME").is_some());
        let dir = tempfile::tempdir().unwrap();
        let c = ctx(
            dir.path(),
            json!({
                "program": "sh",
                "args": ["-c", "env > \"$ASSAY_OUTPUT_DIR/env.txt\""],
                "env": {"DECLARED": "yes"},
            }),
        );
        run(&c).await.unwrap();
        let env = std::fs::read_to_string(c.output_dir.join("env.txt")).unwrap();
        assert!(env.contains("DECLARED=yes"), "{env}");
        assert!(env.contains("PATH="), "{env}");
        assert!(
            !env.contains("CARGO_PKG_NAME"),
            "the worker's variables leaked: {env}"
        );
        assert!(
            env.contains(&format!("HOME={}", c.output_dir.display())),
            "{env}"
        );
    }

    #[tokio::test]
    async fn collects_result_logs_outputs_env_and_progress() {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("work");
        std::fs::create_dir_all(&work).unwrap();
        let c = ctx(
            dir.path(),
            json!({
                "program": "sh",
                "args": ["-c", "echo '::assay-progress {\"step\": \"s1\", \"percent\": 10}'; echo hi $GREETING; echo oops >&2; echo data > made.txt; echo '{\"n\": 3}' > \"$ASSAY_OUTPUT_DIR/result.json\""],
                "cwd": work,
                "env": {"GREETING": "there"},
                "outputs": ["made.txt"],
            }),
        );
        let rx = c.progress.subscribe();
        let out = run(&c).await.unwrap();
        assert_eq!(out.result, json!({"exit_code": 0, "result": {"n": 3}}));
        let stdout = std::fs::read_to_string(c.output_dir.join("stdout.log")).unwrap();
        assert!(stdout.contains("hi there"), "{stdout}");
        assert_eq!(
            std::fs::read_to_string(c.output_dir.join("stderr.log")).unwrap(),
            "oops\n"
        );
        assert_eq!(
            std::fs::read_to_string(c.output_dir.join("made.txt")).unwrap(),
            "data\n"
        );
        // The last progress seen is the program's own step or the kind's final one.
        assert!(rx.borrow().is_some());
    }

    #[tokio::test]
    async fn exit_codes_and_missing_programs_are_classified() {
        let dir = tempfile::tempdir().unwrap();
        let f = run(&ctx(
            dir.path(),
            json!({"program": "sh", "args": ["-c", "exit 3"]}),
        ))
        .await
        .unwrap_err();
        assert_eq!(
            (f.class, f.code.as_str()),
            (FailureClass::Permanent, "exit_status")
        );
        let f = run(&ctx(
            dir.path(),
            json!({"program": "sh", "args": ["-c", "exit 75"]}),
        ))
        .await
        .unwrap_err();
        assert_eq!(f.class, FailureClass::Retryable);
        let f = run(&ctx(
            dir.path(),
            json!({"program": "sh", "args": ["-c", "kill -9 $$"]}),
        ))
        .await
        .unwrap_err();
        assert_eq!(
            (f.class, f.code.as_str()),
            (FailureClass::Retryable, "signal")
        );
        let f = run(&ctx(dir.path(), json!({"program": "no-such-tool-xyz"})))
            .await
            .unwrap_err();
        assert_eq!(
            (f.class, f.code.as_str()),
            (FailureClass::Permanent, "missing_tool")
        );
        let f = run(&ctx(dir.path(), json!({"program": "sh", "args": ["-c", "echo '{' > \"$ASSAY_OUTPUT_DIR/result.json\""]})))
            .await
            .unwrap_err();
        assert_eq!(f.code, "bad_result");
    }

    #[tokio::test]
    async fn an_escaped_process_holding_the_pipes_does_not_hang_the_job() {
        let dir = tempfile::tempdir().unwrap();
        let c = ctx(
            dir.path(),
            json!({"program": "sh", "args": ["-c", "setsid sleep 984.3 & echo started"]}),
        );
        let started = std::time::Instant::now();
        let out = run(&c).await;
        let _ = std::process::Command::new("pkill")
            .args(["-f", "sleep 984.3"])
            .status();
        assert!(out.is_ok(), "{out:?}");
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the job returned"
        );
    }

    #[test]
    fn params_are_validated() {
        assert!(validate(&json!({"program": "x", "grace": "soon"}))
            .unwrap_err()
            .contains("grace"));
        assert!(validate(&json!({"args": []}))
            .unwrap_err()
            .contains("program"));
        assert!(validate(&json!({"program": "x", "typo": 1}))
            .unwrap_err()
            .contains("typo"));
    }
}
