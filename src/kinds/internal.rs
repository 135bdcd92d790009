//! Built-in kinds for demos, tests and benchmarks: `sleep`, `fail` and `blob`.

use super::{JobContext, JobOutput};
use crate::domain::{Failure, FailureClass};
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

fn parse<T: for<'de> Deserialize<'de>>(params: &Value) -> Result<T, String> {
    serde_json::from_value(params.clone()).map_err(|e| format!("invalid params: {e}"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SleepParams {
    ms: u64,
    #[serde(default = "default_steps")]
    steps: u64,
}

fn default_steps() -> u64 {
    1
}

pub fn validate_sleep(params: &Value) -> Result<(), String> {
    let p: SleepParams = parse(params)?;
    if p.steps == 0 {
        return Err("`steps` must be at least 1".into());
    }
    Ok(())
}

/// Sleep `ms` in `steps` equal parts, reporting progress after each, stopping when told.
pub async fn sleep(ctx: &JobContext) -> Result<JobOutput, Failure> {
    let p: SleepParams = parse(&ctx.params).map_err(|e| Failure::permanent("bad_params", e))?;
    let slice = Duration::from_millis(p.ms / p.steps.max(1));
    for i in 0..p.steps {
        ctx.step(
            "sleeping",
            Some(100.0 * i as f64 / p.steps as f64),
            Some(format!("step {} of {}", i + 1, p.steps)),
        );
        tokio::select! {
            _ = tokio::time::sleep(slice) => {}
            _ = ctx.cancel.cancelled() => {
                return Err(Failure::retryable("cancelled", "stopped while sleeping"));
            }
        }
    }
    Ok(JobOutput {
        result: json!({"slept_ms": p.ms}),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FailParams {
    /// Fail this many attempts, then succeed. Absent: fail every attempt.
    #[serde(default)]
    fail_attempts: Option<i64>,
    #[serde(default = "default_class")]
    class: FailureClass,
    #[serde(default = "default_code")]
    code: String,
    #[serde(default)]
    message: Option<String>,
    /// Blame something outside the job and the worker (see `Failure::external`).
    #[serde(default)]
    external: bool,
}

fn default_class() -> FailureClass {
    FailureClass::Retryable
}

fn default_code() -> String {
    "scripted_failure".into()
}

pub fn validate_fail(params: &Value) -> Result<(), String> {
    parse::<FailParams>(params).map(|_| ())
}

pub async fn fail(ctx: &JobContext) -> Result<JobOutput, Failure> {
    let p: FailParams = parse(&ctx.params).map_err(|e| Failure::permanent("bad_params", e))?;
    if p.fail_attempts.is_none_or(|n| ctx.attempt <= n) {
        let message = p
            .message
            .unwrap_or_else(|| format!("scripted failure on attempt {}", ctx.attempt));
        return Err(Failure {
            class: p.class,
            code: p.code,
            message,
            retry_after_ms: None,
            external: p.external,
        });
    }
    Ok(JobOutput {
        result: json!({"succeeded_on_attempt": ctx.attempt}),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BlobParams {
    bytes: u64,
    #[serde(default)]
    seed: u64,
}

pub fn validate_blob(params: &Value) -> Result<(), String> {
    parse::<BlobParams>(params).map(|_| ())
}

/// Write `bytes` of deterministic pseudo-random data as the artifact `blob.bin`.
pub async fn blob(ctx: &JobContext) -> Result<JobOutput, Failure> {
    let p: BlobParams = parse(&ctx.params).map_err(|e| Failure::permanent("bad_params", e))?;
    let io = |e: std::io::Error| Failure::retryable("io", format!("writing blob: {e}"));
    let path = ctx.output_dir.join("blob.bin");
    let mut file = tokio::io::BufWriter::new(tokio::fs::File::create(&path).await.map_err(io)?);
    // xorshift64*: cheap, deterministic, incompressible enough for a transfer test.
    let mut state = p.seed ^ 0x9E37_79B9_7F4A_7C15;
    let mut written = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    while written < p.bytes {
        for chunk in buf.chunks_mut(8) {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let v = state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        let n = (p.bytes - written).min(buf.len() as u64) as usize;
        file.write_all(&buf[..n]).await.map_err(io)?;
        written += n as u64;
        if ctx.cancel.is_cancelled() {
            return Err(Failure::retryable("cancelled", "stopped while writing"));
        }
    }
    file.flush().await.map_err(io)?;
    Ok(JobOutput {
        result: json!({"bytes": p.bytes}),
    })
}
