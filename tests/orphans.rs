//! Nothing a worker started outlives it, and nothing a killed worker wrote stays in its
//! spool: real worker processes killed with -9 while they run a `command` job that starts
//! background processes (one of them in a session of its own), and an app that starts
//! children of its own; then the next start of the worker sweeps what a killed supervisor
//! could not, and the spool returns to its baseline.

mod common;

use assay::domain::{JobState, PipelineState};
use common::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

const MIN: Duration = Duration::from_secs(60);

/// An app as a model might write it: its own server, and children it starts itself (one
/// daemonized into its own session). Answers every request.
fn write_app(dir: &Path, marker: &str) -> PathBuf {
    let app = dir.join("orphan-app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(
        app.join("app.py"),
        format!(
            r#"import http.server, os, subprocess, sys
subprocess.Popen(["sleep", "901.{marker}"])
subprocess.Popen(["sleep", "902.{marker}"], start_new_session=True)
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"[]")
    do_POST = do_GET
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"#
        ),
    )
    .unwrap();
    std::fs::write(
        app.join("assay-app.toml"),
        format!(
            "template = \"todo-api\"\n[run]\ncommand = [\"python3\", \"app.py\", \"app-{marker}\"]\nport_env = \"PORT\"\nhealth = \"/\"\n"
        ),
    )
    .unwrap();
    app
}

fn markers(marker: &str) -> Vec<String> {
    [
        "701", "702", "703", // the command job's group, a setsid'd one, a double fork
        "901", "902", // the app's children, one in a session of its own
    ]
    .iter()
    .map(|n| format!("{n}.{marker}"))
    .chain([format!("app-{marker}")])
    .collect()
}

/// Every marker is an argument of a running program itself: not just named in the script
/// of the shell that is about to start it, nor in the command line of its supervisor
/// (killed before the shell forked, there would be nothing to find left over).
fn all_running(markers: &[String]) -> bool {
    let programs: Vec<Vec<String>> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|cmd| {
            cmd.split(|b| *b == 0)
                .map(|arg| String::from_utf8_lossy(arg).into_owned())
                .collect::<Vec<_>>()
        })
        .filter(|args| !args.iter().any(|a| a.contains("__supervise")))
        .collect();
    markers
        .iter()
        .all(|m| programs.iter().any(|args| args.contains(m)))
}

fn left_running(markers: &[String]) -> Vec<String> {
    markers
        .iter()
        .filter(|m| !processes_with(m).is_empty())
        .cloned()
        .collect()
}

/// Wait up to a few seconds for every process named by `markers` to be gone, then assert it.
async fn assert_all_gone(markers: &[String], why: &str) {
    wait_for_opt(Duration::from_secs(5), || async {
        left_running(markers).is_empty()
    })
    .await;
    assert_eq!(left_running(markers), Vec::<String>::new(), "{why}");
}

fn spec(app: &Path, marker: &str) -> String {
    format!(
        r#"[pipeline]
name = "orphans"
[[stage]]
name = "cmd"
kind = "command"
[stage.params]
program = "sh"
args = ["-c", "sleep 701.{marker} & setsid sleep 702.{marker} & (sleep 703.{marker} &); wait"]
[[stage]]
name = "load"
kind = "performance"
[stage.params]
app = "{}"
duration = "120s"
warmup = "0s"
users = 1
cache = false
"#,
        app.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_with_minus_9_leaves_no_process_of_its_jobs_or_apps() {
    let c = Cluster::new();
    let _server = c.server("1s").await;
    let marker = format!("{}", std::process::id() % 100_000);
    let app = write_app(c.dir.path(), &marker);
    let mut w = c.worker("w", 4, &["--app-root", c.dir.path().to_str().unwrap()]);
    let id = c.submit(&spec(&app, &marker)).await;
    let wanted = markers(&marker);
    wait_for("the job's processes and the app's to run", MIN, || async {
        all_running(&wanted)
    })
    .await;
    let supervisors = processes_with("__supervise").len();
    assert!(
        supervisors >= 2,
        "the job and the app run under supervisors"
    );
    w.kill9();
    assert_all_gone(
        &wanted,
        &format!("processes outlived their worker\n{}", c.logs()),
    )
    .await;
    let state = c.client.pipeline(id).await.unwrap().pipeline.state;
    assert_eq!(state, PipelineState::Running, "the jobs will run elsewhere");
}

/// The supervisor is killed together with its worker. In a PID namespace of its own the
/// kernel kills everything the program started with it; without one (`--no-pid-namespace`)
/// the program's group is left without anyone watching it, and the worker's next start
/// finds it in its spool and kills it. Either way nothing stays.
async fn supervisor_and_worker_killed_together(namespace: bool, marker: &str) {
    let c = Cluster::new();
    let _server = c.server("1s").await;
    let flags: &[&str] = if namespace {
        &[]
    } else {
        &["--no-pid-namespace"]
    };
    let mut w = c.worker("again", 2, flags);
    let spec = format!(
        "[pipeline]\nname = \"left\"\n[[stage]]\nname = \"cmd\"\nkind = \"command\"\n[stage.params]\nprogram = \"sh\"\nargs = [\"-c\", \"sleep 801.{marker} & setsid sleep 802.{marker} & wait\"]\n"
    );
    let id = c.submit(&spec).await;
    let wanted = vec![format!("801.{marker}"), format!("802.{marker}")];
    wait_for("the job's processes to run", MIN, || async {
        all_running(&wanted)
    })
    .await;
    // Both die at once: the worker (stopped first, so that it cannot react) and the
    // supervisor.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(w.pid()),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .unwrap();
    for pid in processes_with("__supervise") {
        let ours = std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|cmd| cmd.contains(marker) && !cmd.contains("namespace-init"));
        if ours {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    w.kill9();
    let records = c.path("spool-again").join("procs");
    if namespace {
        assert_all_gone(&wanted, "the namespace died with its supervisor").await;
    } else {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            left_running(&wanted),
            wanted,
            "without a namespace what the program started outlives its supervisor"
        );
        assert_eq!(std::fs::read_dir(&records).unwrap().count(), 1);
    }
    // The restart kills the program's group from its record. (Without a namespace, one that
    // also left the group, by setsid, went to init with its supervisor: no record names it.
    // It is killed below so that the test leaves nothing; a namespace, the default, is what
    // closes that gap.)
    let left: Vec<i32> = processes_with(&wanted[0]);
    let _w = c.worker("again", 2, flags);
    wait_for(
        "the restarted worker to kill what was left",
        Duration::from_secs(10),
        || async {
            // Those processes, not the job's next run, which starts at once.
            left.iter()
                .all(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        },
    )
    .await;
    // It then runs the job again, under a supervisor of its own.
    wait_for("the job to run again", MIN, || async {
        all_running(&wanted)
    })
    .await;
    c.client.cancel_pipeline(id).await.unwrap();
    assert_eq!(
        c.wait_finished(id, MIN).await.pipeline.state,
        PipelineState::Cancelled
    );
    if !namespace {
        for pid in processes_with(&wanted[1]) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    for m in &wanted {
        wait_until_gone(m, "the cancelled job's processes", Duration::from_secs(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supervisor_killed_with_its_worker_takes_its_namespace_with_it() {
    supervisor_and_worker_killed_together(true, &format!("81{}", std::process::id() % 100_000))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_namespace_a_restarted_worker_kills_what_a_dead_predecessor_left() {
    supervisor_and_worker_killed_together(false, &format!("82{}", std::process::id() % 100_000))
        .await;
}

/// What a spool holds that a finished run of the worker would not have: attempt folders,
/// batch files (finished or cut short), process records, scratch files.
fn leftovers(spool: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for sub in ["batches", "work", "procs", "scratch"] {
        let Ok(entries) = std::fs::read_dir(spool.join(sub)) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if sub == "work" && name == "apps" {
                continue;
            }
            out.push(format!("{sub}/{name}"));
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_again_and_again_leaves_its_spool_as_it_found_it() {
    let c = Cluster::new();
    let _server = c.server("1s").await;
    let spool = c.path("spool-k");
    // Jobs that write output and run long enough to be killed in the middle.
    let items: Vec<String> = (0..24).map(|i| i.to_string()).collect();
    let spec = format!(
        "[pipeline]\nname = \"spool\"\n[[stage]]\nname = \"w\"\nkind = \"command\"\nitems = [{}]\nmax_attempts = 10\nbackoff = \"100ms\"\n[stage.params]\nprogram = \"sh\"\nargs = [\"-c\", \"echo {{{{ item }}}} > $ASSAY_OUTPUT_DIR/out.txt; sleep 0.4\"]\n",
        items.join(",")
    );
    let id = c.submit(&spec).await;
    let mut kills = 0;
    while kills < 6 {
        let mut w = c.worker("k", 4, &[]);
        let running = wait_for_opt(MIN, || async {
            c.jobs(id)
                .await
                .iter()
                .any(|j| j.state == JobState::Running)
        })
        .await;
        if !running {
            break;
        }
        tokio::time::sleep(Duration::from_millis(150 + 97 * kills)).await;
        w.kill9();
        kills += 1;
    }
    // A batch cut short mid-write, and one written whole but never renamed: the first is
    // deleted, the second delivered (the server does not know its job: it is dropped).
    let batches = spool.join("batches");
    std::fs::write(
        batches.join(".00000000000000000001-cut.json.tmp"),
        b"[{\"report\": ",
    )
    .unwrap();
    let whole = serde_json::json!([{
        "report": {"job_id": 999_999, "attempt": 1, "token": "t", "worker_id": "k", "outcome": "completed", "result": {}, "artifacts": []},
        "dir": null
    }]);
    std::fs::write(
        batches.join(".00000000000000000002-whole.json.tmp"),
        serde_json::to_vec(&whole).unwrap(),
    )
    .unwrap();
    std::fs::create_dir_all(spool.join("work/424242-1")).unwrap();
    std::fs::write(spool.join("scratch/left.db"), b"x").unwrap();
    let mut w = c.worker("k", 4, &[]);
    let detail = c.wait_finished(id, 2 * MIN).await;
    assert_eq!(
        detail.pipeline.state,
        PipelineState::Completed,
        "{}",
        c.logs()
    );
    // Everything is delivered and acknowledged; then the worker stops cleanly.
    wait_for("the spool to drain", MIN, || async {
        leftovers(&spool).is_empty()
    })
    .await;
    w.sigterm();
    assert_eq!(w.wait_exit(Duration::from_secs(20)), Some(0));
    assert_eq!(
        leftovers(&spool),
        Vec::<String>::new(),
        "after {kills} kills the spool holds what it held before"
    );
    assert_one_result_each(&c, id).await;
    assert!(kills >= 3, "the worker was killed mid-run {kills} times");
}

/// A program that tries to kill its own supervisor. In a namespace it cannot: its parent
/// there is the namespace's init, which no signal from inside reaches, and the supervisor
/// outside has no pid it can name. Without one it can (same user): its main process dies
/// with it (death signal), and what else it started is killed as soon as the worker sees
/// the supervisor gone with its record still there, not at the next start.
async fn a_program_kills_its_supervisor(namespace: bool, marker: &str) {
    let c = Cluster::new();
    let _server = c.server("1s").await;
    let flags: &[&str] = if namespace {
        &[]
    } else {
        &["--no-pid-namespace"]
    };
    let _w = c.worker("w", 2, flags);
    let spec = format!(
        "[pipeline]\nname = \"rebel\"\n[[stage]]\nname = \"cmd\"\nkind = \"command\"\nmax_attempts = 1\n[stage.params]\nprogram = \"sh\"\nargs = [\"-c\", \"sleep 771.{marker} & sleep 0.3; kill -9 $PPID; sleep 1\"]\n"
    );
    let id = c.submit(&spec).await;
    let detail = c.wait_finished(id, MIN).await;
    let job = c.jobs(id).await.remove(0);
    if namespace {
        assert_eq!(
            detail.pipeline.state,
            PipelineState::Completed,
            "{:?}",
            job.last_error
        );
    } else {
        assert_eq!(detail.pipeline.state, PipelineState::Failed);
        assert_eq!(job.last_error.unwrap().code, "signal");
    }
    wait_until_gone(
        &format!("771.{marker}"),
        "what the program started",
        Duration::from_secs(5),
    )
    .await;
    let records = c.path("spool-w").join("procs");
    assert_eq!(std::fs::read_dir(records).unwrap().count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_cannot_kill_its_supervisor_in_its_namespace() {
    a_program_kills_its_supervisor(true, &format!("71{}", std::process::id() % 100_000)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_namespace_a_program_that_kills_its_supervisor_leaves_nothing_running() {
    a_program_kills_its_supervisor(false, &format!("72{}", std::process::id() % 100_000)).await;
}

/// A program that opens its supervisor's end of the worker's lifeline for writing (through
/// `/proc`, which it can: same user) keeps that pipe from ever closing; the supervisor also
/// watches the worker itself (a pidfd, which nothing can copy), so a kill -9 of the worker
/// still ends everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stolen_lifeline_does_not_keep_anything_alive() {
    let c = Cluster::new();
    let _server = c.server("1s").await;
    let marker = format!("91{}", std::process::id() % 100_000);
    let mut w = c.worker("w", 2, &[]);
    // Up the parents (through the namespace's init, if any) to the supervisor, and open
    // its stdin, the lifeline, for writing.
    let thief = c.path("thief.sh");
    std::fs::write(
        &thief,
        r#"p=$(awk '/^PPid/{print $2}' /proc/self/status)
while [ "$p" -gt 1 ]; do
  arg() { tr '\0' '\n' < /proc/$p/cmdline | sed -n "$1p"; }
  if [ "$(arg 2)" = "__supervise" ] && [ "$(arg 3)" != "--namespace-init" ]; then
    exec 7>/proc/$p/fd/0; echo stole $p; break
  fi
  p=$(awk '/^PPid/{print $2}' /proc/$p/status)
done
"#,
    )
    .unwrap();
    let spec = format!(
        "[pipeline]\nname = \"thief\"\n[[stage]]\nname = \"cmd\"\nkind = \"command\"\n[stage.params]\nprogram = \"sh\"\nargs = [\"-c\", \". {}; sleep 951.{marker}\"]\n",
        thief.display()
    );
    let id = c.submit(&spec).await;
    let wanted = vec![format!("951.{marker}")];
    // Its shell keeps the stolen write end (descriptor 7) while it sleeps: the same pipe
    // as the supervisor's stdin.
    let link = |pid: i32, fd: i32| std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok();
    wait_for("the thief to hold the lifeline", MIN, || async {
        let lifelines: Vec<_> = processes_with("__supervise")
            .into_iter()
            .filter_map(|p| link(p, 0))
            .collect();
        processes_with("thief.sh")
            .into_iter()
            .filter_map(|p| link(p, 7))
            .any(|held| lifelines.contains(&held))
    })
    .await;
    assert_eq!(c.jobs(id).await[0].state, JobState::Running);
    w.kill9();
    assert_all_gone(&wanted, "the thief outlived its worker").await;
}

/// A program that dies of a signal the supervisor's own libraries do not name (a real-time
/// one) is still seen to end, promptly: its job fails as a signal death, and its slot is
/// free for the next job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_killed_by_any_signal_ends_its_job_at_once() {
    let c = Cluster::new();
    let _server = c.server("1s").await;
    let _w = c.worker("w", 1, &[]);
    let spec = "[pipeline]\nname = \"rt\"\n[[stage]]\nname = \"rt\"\nkind = \"command\"\nmax_attempts = 1\ntimeout = \"30s\"\n[stage.params]\nprogram = \"sh\"\nargs = [\"-c\", \"kill -34 $$\"]\n[[stage]]\nname = \"next\"\nkind = \"command\"\n[stage.params]\nprogram = \"true\"\n";
    let id = c.submit(spec).await;
    let started = std::time::Instant::now();
    let detail = c.wait_finished(id, MIN).await;
    assert!(started.elapsed() < Duration::from_secs(20), "not a timeout");
    assert_eq!(detail.pipeline.state, PipelineState::PartialSuccess);
    let jobs = c.jobs(id).await;
    let rt = jobs.iter().find(|j| j.stage == "rt").unwrap();
    let error = rt.last_error.as_ref().unwrap();
    assert_eq!(error.code, "signal", "{error:?}");
    assert!(error.message.contains("34"), "{error:?}");
}
