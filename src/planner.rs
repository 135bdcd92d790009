//! Where a spec from the network is planned. Rendering its templates is the one step of
//! planning whose memory the input does not bound: fuel caps the steps, the output cap
//! each param, but three `{% set a = a ~ a %}` after `'x' * 100000000` hold 800 MB, and
//! a few more would take the whole server down. So a templated spec is planned by a
//! child process (`assay __plan`) under an address-space and a CPU-time limit; if it
//! runs out, the submission is refused with the reason and the server goes on.
//! A spec without templates is planned in this process: its plan is bounded by its size.

use crate::spec::{Plan, Spec};
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Address space a planning child may use: room for a plan of the largest size a spec may
/// have ([`crate::spec::MAX_JOBS`] jobs), not for templates that build gigabytes.
pub const PLAN_MEMORY_BYTES: u64 = 4 << 30;
/// CPU time a planning child may use; planning itself gives up after
/// [`crate::spec::MAX_PLANNING`], this catches a single step that never returns.
const PLAN_CPU_SECONDS: u64 = 2 * crate::spec::MAX_PLANNING.as_secs();
/// The largest plan a child may send back.
const MAX_PLAN_BYTES: u64 = 3 << 30;

/// Submissions planned at once: planning is CPU work, and each templated one may hold
/// [`PLAN_MEMORY_BYTES`]; more at once would not finish sooner on a few cores.
pub const PLANS_AT_ONCE: usize = 2;

/// How specs are planned, and how many at once.
#[derive(Debug, Clone)]
pub struct Planner {
    isolation: Option<Isolation>,
    slots: std::sync::Arc<tokio::sync::Semaphore>,
}

#[derive(Debug, Clone)]
struct Isolation {
    exe: PathBuf,
    memory_bytes: u64,
}

/// What a planning child answers.
#[derive(Debug, Serialize, Deserialize)]
enum Planned {
    Plan(Plan),
    Refused(String),
}

impl Planner {
    /// In this process: for specs the user of this process wrote.
    pub fn in_process() -> Planner {
        Planner {
            isolation: None,
            slots: std::sync::Arc::new(tokio::sync::Semaphore::new(PLANS_AT_ONCE)),
        }
    }

    /// Templated specs in a child process of `exe`, an `assay` binary, with limits.
    pub fn isolated(exe: impl Into<PathBuf>) -> Planner {
        Planner {
            isolation: Some(Isolation {
                exe: exe.into(),
                memory_bytes: PLAN_MEMORY_BYTES,
            }),
            ..Planner::in_process()
        }
    }

    /// Isolated with this process's `assay` binary, when it is one (a test binary is not:
    /// it plans in process unless told the binary).
    pub fn for_this_process() -> Planner {
        match crate::supervise::assay_binary() {
            Some(exe) => Planner::isolated(exe),
            None => Planner::in_process(),
        }
    }

    /// With at most `bytes` of address space for a planning child.
    pub fn with_memory_limit(mut self, bytes: u64) -> Planner {
        if let Some(isolation) = &mut self.isolation {
            isolation.memory_bytes = bytes;
        }
        self
    }

    /// Whether templated specs are planned in a child process.
    pub fn is_isolated(&self) -> bool {
        self.isolation.is_some()
    }

    /// Wait for a planning slot; planning holds it until it is dropped.
    pub async fn slot(&self) -> tokio::sync::OwnedSemaphorePermit {
        self.slots
            .clone()
            .acquire_owned()
            .await
            .expect("the planning slots are never closed")
    }

    /// Plan `spec`, read from `text` (named `file` in messages). An error is a refusal to
    /// show the submitter. Blocks: call it off the async threads, holding a [`Self::slot`].
    pub fn plan(&self, file: &str, spec: &Spec, text: &str) -> Result<Plan, String> {
        match &self.isolation {
            Some(isolation) if spec.has_templates() => {
                plan_in_child(&isolation.exe, isolation.memory_bytes, file, text)
            }
            _ => spec.plan(),
        }
    }
}

/// The request a planning child reads on stdin.
#[derive(Debug, Serialize, Deserialize)]
struct PlanRequest {
    file: String,
    text: String,
}

fn plan_in_child(exe: &Path, memory_bytes: u64, file: &str, text: &str) -> Result<Plan, String> {
    let unavailable = |e: std::io::Error| {
        tracing::error!(error = %e, exe = %exe.display(), "cannot start a planning process");
        format!("the server cannot plan specs right now ({e}); try again")
    };
    let mut command = Command::new(exe);
    command
        .arg("__plan")
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let limits = [
        (nix::sys::resource::Resource::RLIMIT_AS, memory_bytes),
        (nix::sys::resource::Resource::RLIMIT_CPU, PLAN_CPU_SECONDS),
        (nix::sys::resource::Resource::RLIMIT_CORE, 0),
    ];
    // SAFETY: only setrlimit, which is async-signal-safe, runs between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, move || {
            for (resource, limit) in limits {
                nix::sys::resource::setrlimit(resource, limit, limit)?;
            }
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(unavailable)?;
    let request = serde_json::to_vec(&PlanRequest {
        file: file.to_string(),
        text: text.to_string(),
    })
    .expect("a request serializes");
    let mut stdin = child.stdin.take().expect("piped");
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&request);
    });
    let mut stderr = child.stderr.take().expect("piped");
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = (&mut stderr).take(64 * 1024).read_to_string(&mut text);
        text
    });
    let mut answer = Vec::new();
    let read = child
        .stdout
        .take()
        .expect("piped")
        .take(MAX_PLAN_BYTES + 1)
        .read_to_end(&mut answer);
    if read.is_err() || answer.len() as u64 > MAX_PLAN_BYTES {
        let _ = child.kill();
    }
    let status = child.wait().map_err(unavailable)?;
    let _ = writer.join();
    let errors = errors.join().unwrap_or_default();
    if answer.len() as u64 > MAX_PLAN_BYTES {
        return Err(format!(
            "its plan is larger than {} GiB; split it into several pipelines",
            MAX_PLAN_BYTES >> 30
        ));
    }
    match serde_json::from_slice::<Planned>(&answer) {
        Ok(Planned::Plan(plan)) => Ok(plan),
        Ok(Planned::Refused(why)) => Err(why),
        Err(_) => Err(died(status, &errors, memory_bytes)),
    }
}

/// Why a planning child gave no plan.
fn died(status: std::process::ExitStatus, errors: &str, memory_bytes: u64) -> String {
    use std::os::unix::process::ExitStatusExt;
    let cpu = status.signal() == Some(nix::sys::signal::Signal::SIGXCPU as i32)
        || status.signal() == Some(nix::sys::signal::Signal::SIGKILL as i32);
    if errors.contains("memory allocation") || errors.contains("capacity overflow") {
        format!(
            "rendering its templates took more than {} of memory, the most planning may \
             (a template that builds huge strings, e.g. `{{% set a = a ~ a %}}`, or `*` on \
             long strings); a param is a short template, e.g. `{{{{ model }}}}`",
            size(memory_bytes)
        )
    } else if cpu {
        format!(
            "planning it took more than {PLAN_CPU_SECONDS} s of CPU time, the most it may; \
             simplify the templates in its params or split it into several pipelines"
        )
    } else {
        tracing::error!(%status, errors, "a planning process failed");
        format!("the server could not plan it (the planner {status}); try again")
    }
}

/// `bytes` in GiB, or MiB when less than one.
fn size(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{} GiB", bytes >> 30)
    } else {
        format!("{} MiB", bytes >> 20)
    }
}

/// `assay __plan`: read a [`PlanRequest`] on stdin, write the plan (or why not) on stdout.
pub fn run_child() -> std::process::ExitCode {
    let mut input = Vec::new();
    if std::io::stdin().read_to_end(&mut input).is_err() {
        return std::process::ExitCode::FAILURE;
    }
    let answer = match serde_json::from_slice::<PlanRequest>(&input) {
        Ok(request) => match crate::spec::parse(&request.file, &request.text) {
            Ok(spec) => match spec.plan() {
                Ok(plan) => Planned::Plan(plan),
                Err(why) => Planned::Refused(why),
            },
            Err(e) => Planned::Refused(e.to_string()),
        },
        Err(e) => Planned::Refused(format!("a malformed planning request: {e}")),
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if serde_json::to_writer(&mut out, &answer).is_err() || out.flush().is_err() {
        return std::process::ExitCode::FAILURE;
    }
    std::process::ExitCode::SUCCESS
}

/// Hand freed heap memory back to the system. The allocator keeps what a large plan
/// freed for reuse, so a server that took a million-job spec would hold its 2 GB for good.
pub fn give_back_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free pages of glibc's heap; it takes no pointers.
    unsafe {
        libc::malloc_trim(0);
    }
}
