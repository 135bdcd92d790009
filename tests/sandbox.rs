//! Untrusted apps run sandboxed: a hostile app, written the way an attacker would, tries
//! to read the worker's secrets, reach the Assay server and another app, rewrite the code
//! the analyzers read (it may write only its instance's own copy) and leave a daemon
//! behind; every attempt must fail.

mod common;

use assay::analysis::apps::{AppPool, PortAllocator, RunningApp, MANIFEST};
use assay::domain::PipelineState;
use std::io::Read;
use std::path::Path;
use std::time::Duration;

/// The attacker's app: it tries everything at start, then serves what it found.
const HOSTILE_APP: &str = r##"
import json, os, socket, subprocess, sys, http.server

found = {}

def try_(name, fn):
    try:
        found[name] = fn()
    except Exception as e:
        found[name] = "refused: " + type(e).__name__

# The worker's environment, through /proc: by the pid it was told, and by scanning.
def worker_environ():
    return open("/proc/%s/environ" % os.environ["WORKER_PID"], "rb").read().decode("latin-1")
try_("worker_environ", worker_environ)
readable = {}
for pid in os.listdir("/proc"):
    if pid.isdigit() and int(pid) != os.getpid():
        try:
            readable[pid] = open("/proc/%s/environ" % pid, "rb").read().decode("latin-1")
        except Exception:
            pass
found["environs_of_others"] = readable
found["pids_visible"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
found["uid"] = os.getuid()

def connect(port):
    s = socket.create_connection(("127.0.0.1", int(port)), timeout=2)
    s.sendall(b"POST /api/v1/pipelines HTTP/1.1\r\nHost: x\r\n\r\n")
    s.close()
    return "connected"
try_("server", lambda: connect(os.environ["SERVER_PORT"]))
try_("other_app", lambda: connect(os.environ["OTHER_APP_PORT"]))
try_("internet", lambda: socket.create_connection(("1.1.1.1", 80), timeout=2) and "connected")

def write_code():
    with open(os.path.join(os.getcwd(), "app.py"), "a") as f:
        f.write("# pwned\n")
    return "written"
try_("own_code", write_code)
try_("new_file_in_app", lambda: open("pwned.txt", "w").write("x") and "written")
try_("worker_secret_file", lambda: open(os.environ["SECRET_FILE"]).read())
try_("shadow", lambda: open("/etc/shadow").read()[:10])
try_("scratch", lambda: open("/tmp/db.sqlite", "w").write("ok") and "written")
# Fill the disk: files of 64 MiB, each under the per-file cap, until something says no.
def fill():
    written, chunk = 0, b"\0" * (1 << 20)
    try:
        for i in range(64):
            with open("/tmp/fill-%d" % i, "wb") as f:
                for _ in range(64):
                    f.write(chunk)
                    written += len(chunk)
    except OSError as e:
        return {"written": written, "errno": e.errno}
    finally:
        for i in range(64):
            try:
                os.remove("/tmp/fill-%d" % i)
            except OSError:
                pass
    return {"written": written, "errno": None}
found["fill"] = fill()
import pwd
try_("localhost", lambda: socket.gethostbyname("localhost"))
try_("own_user", lambda: pwd.getpwuid(os.getuid()).pw_name)

# Kernel interfaces that lead out of sandboxes: a user namespace (every capability in it),
# io_uring (unseen by seccomp), a keyring (kept past the app, shared by its uid).
import ctypes, errno, platform, threading
libc = ctypes.CDLL(None, use_errno=True)
def call(result):
    if result == -1:
        code = ctypes.get_errno()
        raise OSError(code, errno.errorcode.get(code, "?"))
    return "allowed"
try_("user_namespace", lambda: call(libc.unshare(0x10000000)))
try_("ptrace", lambda: call(libc.ptrace(0, 0, None, None)))
if platform.machine() == "x86_64":
    params = ctypes.create_string_buffer(120)
    try_("io_uring", lambda: call(libc.syscall(425, 1, params)))
    try_("keyring", lambda: call(libc.syscall(248, b"user", b"assay-probe", b"stolen", 6, -3)))
# What apps need still works: threads (clone3 falls back to clone) and processes.
def thread():
    t = threading.Thread(target=lambda: None)
    t.start()
    t.join()
    return "ran"
try_("thread", thread)
try_("fork", lambda: subprocess.run(["true"]).returncode == 0 and "ran")

# A daemon in a session of its own, meant to outlive the job.
subprocess.Popen(["sh", "-c", "sleep 1000; echo %s" % os.environ["MARKER"]],
                 start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps(found).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass

# Binds every address, as LLM-written apps do.
http.server.HTTPServer(("0.0.0.0", int(os.environ["PORT"])), Handler).serve_forever()
"##;

fn write_app(dir: &Path, env: &[(&str, String)]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("app.py"), HOSTILE_APP).unwrap();
    let env: String = env
        .iter()
        .map(|(k, v)| format!("{k} = \"{v}\"\n"))
        .collect();
    std::fs::write(
        dir.join(MANIFEST),
        format!("template = \"hostile\"\n[run]\ncommand = [\"python3\", \"app.py\"]\nhealth = \"/\"\n[run.env]\n{env}"),
    )
    .unwrap();
}

fn plain_app(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join(MANIFEST),
        "template = \"plain\"\n[run]\ncommand = [\"python3\", \"-m\", \"http.server\", \"--bind\", \"0.0.0.0\", \"8000\"]\nport_env = \"IGNORED\"\nhealth = \"/\"\n",
    )
    .unwrap();
}

/// Processes whose command line holds `marker`, anywhere on the machine.
fn processes_with(marker: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(marker))
        })
        .collect()
}

/// An app folder `app` under `root` whose run recipe is `run` (the `[run]` table's lines).
fn recipe_app(root: &Path, run: &str) -> std::path::PathBuf {
    let dir = root.join("app");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join(MANIFEST),
        format!("template = \"x\"\n[run]\n{run}"),
    )
    .unwrap();
    dir
}

/// Where the sandbox is required (CI), a missing part of it fails the test; elsewhere the
/// test says what it skipped.
fn skip_unless_required(what: &str) {
    assert!(
        std::env::var_os("ASSAY_REQUIRE_SANDBOX").is_none(),
        "ASSAY_REQUIRE_SANDBOX is set, but {what}"
    );
    eprintln!("skipped: {what}");
}

fn sandbox_or_skip() -> bool {
    // SAFETY: set before any thread of this test binary starts programs.
    unsafe { std::env::set_var("ASSAY_SUPERVISOR", env!("CARGO_BIN_EXE_assay")) };
    match assay::sandbox::check() {
        Ok(()) => true,
        Err(e) if std::env::var_os("ASSAY_REQUIRE_SANDBOX").is_some() => panic!("{e}"),
        Err(e) => {
            eprintln!("skipped: {e}");
            false
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_app_cannot_read_secrets_reach_out_write_its_code_or_outlive_its_job() {
    if !sandbox_or_skip() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let secret = format!("sk-secret-{}", uuid::Uuid::new_v4().simple());
    // The worker's environment holds a key (this test process is the worker here).
    // SAFETY: no other thread reads the environment at this point.
    unsafe { std::env::set_var("PROVIDER_API_KEY", &secret) };
    let secret_file = root.path().join("keys/token");
    std::fs::create_dir_all(secret_file.parent().unwrap()).unwrap();
    std::fs::write(&secret_file, &secret).unwrap();

    // The Assay server stands for any service on the host's loopback.
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    server.set_nonblocking(true).unwrap();
    let ports = PortAllocator::new(root.path().join("ports"), 28_600, 28_640);
    let other_dir = root.path().join("other");
    plain_app(&other_dir);
    let other = RunningApp::start(&other_dir, &ports, &root.path().join("other.log"))
        .await
        .expect("a plain app hard-coding port 8000 starts");
    let other_port = other.base_url.rsplit(':').next().unwrap().to_string();

    let marker = format!("marker{}", uuid::Uuid::new_v4().simple());
    let app_dir = root.path().join("hostile");
    write_app(
        &app_dir,
        &[
            ("WORKER_PID", std::process::id().to_string()),
            (
                "SERVER_PORT",
                server.local_addr().unwrap().port().to_string(),
            ),
            ("OTHER_APP_PORT", other_port),
            ("SECRET_FILE", secret_file.display().to_string()),
            ("MARKER", marker.clone()),
        ],
    );
    let code_before = std::fs::read(app_dir.join("app.py")).unwrap();
    let app = RunningApp::start(&app_dir, &ports, &root.path().join("hostile.log"))
        .await
        .expect("the hostile app starts");
    let found: serde_json::Value = reqwest::get(&app.base_url)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    eprintln!("{found:#}");

    let refused = |what: &str| {
        let v = found[what].as_str().unwrap_or_default();
        assert!(v.starts_with("refused"), "{what}: {v}");
    };
    refused("worker_environ");
    assert!(
        !found.to_string().contains(&secret),
        "the key leaked: {found}"
    );
    let visible = found["pids_visible"].as_array().unwrap();
    assert!(
        visible.iter().all(|p| p.as_i64().unwrap() < 10),
        "only its own few processes: {visible:?}"
    );
    assert!(
        found["uid"].as_u64().unwrap() >= u64::from(assay::sandbox::APP_UID_BASE),
        "an unprivileged user of its own: {}",
        found["uid"]
    );
    refused("server");
    refused("other_app");
    refused("internet");
    // It writes into its own instance's copy (apps keep SQLite files next to their
    // code); the folder the analyzers read is untouched (checked below).
    assert_eq!(found["own_code"], "written", "its own copy is writable");
    assert_eq!(found["new_file_in_app"], "written");
    refused("worker_secret_file");
    refused("shadow");
    assert_eq!(
        found["scratch"], "written",
        "its scratch folder is writable"
    );
    assert_eq!(found["localhost"], "127.0.0.1", "its /etc is readable");
    // 4 GiB asked for; the scratch holds what its tmpfs does, and says ENOSPC.
    assert_eq!(found["fill"]["errno"], 28, "{}", found["fill"]);
    assert!(
        found["fill"]["written"].as_u64().unwrap() <= assay::sandbox::SCRATCH_BYTES,
        "{}",
        found["fill"]
    );
    // The system-call filter answers EPERM (PermissionError), not the kernel's own
    // refusals.
    let mut probes = vec!["user_namespace", "ptrace"];
    if std::env::consts::ARCH == "x86_64" {
        probes.extend(["io_uring", "keyring"]);
    }
    for probe in probes {
        assert_eq!(found[probe], "refused: PermissionError", "{probe}");
    }
    assert_eq!(found["thread"], "ran");
    assert_eq!(found["fork"], "ran");
    assert_eq!(found["own_user"], "app");
    let mut buf = [0u8; 64];
    match server.accept() {
        Ok((mut s, _)) => panic!(
            "the server was reached: {:?}",
            s.read(&mut buf)
                .map(|n| String::from_utf8_lossy(&buf[..n]).to_string())
        ),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock),
    }
    assert_eq!(std::fs::read(app_dir.join("app.py")).unwrap(), code_before);
    assert!(!app_dir.join("pwned.txt").exists());
    let log = std::fs::read_to_string(root.path().join("hostile.log")).unwrap();
    assert!(!log.contains(&secret), "{log}");

    assert!(
        !processes_with(&marker).is_empty(),
        "the daemon runs while the app does"
    );
    drop(app);
    drop(other);
    assert_eq!(
        processes_with(&marker),
        Vec::<i32>::new(),
        "nothing the app started outlives it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_that_hard_code_one_port_run_side_by_side() {
    if !sandbox_or_skip() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let ports = PortAllocator::new(root.path().join("ports"), 28_650, 28_690);
    let mut apps = Vec::new();
    for name in ["a", "b"] {
        let dir = root.path().join(name);
        plain_app(&dir);
        std::fs::write(dir.join("index.html"), format!("app {name}")).unwrap();
        apps.push(
            RunningApp::start(&dir, &ports, &root.path().join(format!("{name}.log")))
                .await
                .unwrap(),
        );
    }
    for (app, name) in apps.iter().zip(["a", "b"]) {
        let body = reqwest::get(format!("{}/index.html", app.base_url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(body, format!("app {name}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_past_its_wall_time_is_killed_and_says_so() {
    if !sandbox_or_skip() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let dir = recipe_app(root.path(), "command = [\"sh\", \"-c\", \"exec python3 -m http.server --bind 127.0.0.1 $PORT\"]\nhealth = \"/\"\n");
    let pool = AppPool::new(PortAllocator::new(
        root.path().join("ports"),
        28_700,
        28_720,
    ))
    .with_max_lifetime(Duration::from_secs(2));
    let lease = pool
        .acquire(&dir, &root.path().join("app.log"))
        .await
        .unwrap();
    assert!(lease.ensure_alive().is_ok());
    let mut err = None;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Err(e) = lease.ensure_alive() {
            err = Some(e.to_string());
            break;
        }
    }
    let err = err.expect("killed after its wall time");
    assert!(err.contains("wall-time limit"), "{err}");
}

/// The attack as the issue saw it, through a real server (loopback, no tokens, every kind
/// allowed: the most a reachable server could give away) and a real worker holding a key:
/// the analyzed app reads `/proc/*/environ` and tries to submit a `command` pipeline to the
/// server. It finds no key, reaches no server, and its log (an artifact anyone may read)
/// holds nothing secret. (With `--no-sandbox` this test fails: the app reads the worker's
/// key and its pipeline is created.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_app_analyzed_by_a_worker_cannot_reach_its_server_or_its_keys() {
    if !sandbox_or_skip() {
        return;
    }
    let c = common::Cluster::new();
    let _server = c.server("1s").await;
    let secret = format!("sk-or-v1-{}", uuid::Uuid::new_v4().simple());
    let apps = c.path("apps");
    let app = apps.join("hostile");
    std::fs::create_dir_all(&app).unwrap();
    let marker = c.path("pwned");
    std::fs::write(
        app.join("app.py"),
        format!(
            r##"
import json, os, socket, http.server
seen = {{}}
for pid in os.listdir("/proc"):
    if pid.isdigit() and int(pid) != os.getpid():
        try:
            seen[pid] = open("/proc/%s/environ" % pid, "rb").read().decode("latin-1")
        except Exception as e:
            seen[pid] = "refused: " + type(e).__name__
print("environs:", json.dumps(seen), flush=True)
spec = '[pipeline]\nname = "pwn"\n[[stage]]\nname = "pwn"\nkind = "command"\n[stage.params]\nprogram = "touch"\nargs = ["{marker}"]\n'
body = json.dumps({{"spec": spec}}).encode()
try:
    s = socket.create_connection(("127.0.0.1", {port}), timeout=2)
    s.sendall(b"POST /api/v1/pipelines HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    print("server answered:", s.recv(200), flush=True)
except Exception as e:
    print("server: refused:", type(e).__name__, flush=True)

class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"[]")
    do_POST = do_PUT = do_DELETE = do_GET
    def log_message(self, *a):
        pass
http.server.HTTPServer(("0.0.0.0", int(os.environ["PORT"])), H).serve_forever()
"##,
            marker = marker.display(),
            port = c.port
        ),
    )
    .unwrap();
    std::fs::write(
        app.join(MANIFEST),
        "template = \"todo-api\"\n[run]\ncommand = [\"python3\", \"app.py\"]\nhealth = \"/\"\n",
    )
    .unwrap();
    let _worker = c.worker_with_env(
        "w",
        &["--kinds", "dynamic", "--app-root", apps.to_str().unwrap()],
        &[("OPENROUTER_API_KEY", secret.as_str())],
    );
    let id = c
        .submit(&format!(
            "[pipeline]\nname = \"probe\"\n[[stage]]\nname = \"dyn\"\nkind = \"dynamic\"\nmax_attempts = 1\n[stage.params]\napp = \"{}\"\n",
            app.display()
        ))
        .await;
    let detail = c.wait_finished(id, Duration::from_secs(180)).await;
    assert_eq!(
        detail.pipeline.state,
        PipelineState::Completed,
        "{}",
        c.logs()
    );
    let job = &c.jobs(id).await[0];
    let log = c.path("app.log");
    c.client
        .download_artifact(job.id, "app.log", &log)
        .await
        .unwrap();
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("server: refused"), "{log}");
    assert!(
        !log.contains(&secret),
        "the key leaked into the app's log: {log}"
    );
    assert!(!marker.exists(), "the app's pipeline ran");
    let pipelines = c.client.pipelines(100).await.unwrap();
    assert_eq!(
        pipelines.len(),
        1,
        "only the test's own pipeline: {pipelines:?}"
    );
}

/// A recipe's environment reaches only the app, after the drop to its user: not the
/// supervisor, bubblewrap or `setpriv`, which run as root. (An `LD_PRELOAD` or a `PATH`
/// of `.` in `run.env` gave root on the host before.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recipes_environment_never_reaches_the_root_side() {
    if !sandbox_or_skip() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("app");
    std::fs::create_dir_all(&dir).unwrap();
    let marker = root.path().join("ran-as-root");
    // Programs named like the sandbox's own, first on the recipe's PATH.
    for fake in ["setpriv", "bwrap", "env"] {
        let script = dir.join(fake);
        std::fs::write(
            &script,
            format!("#!/bin/sh\nid -u >> {}\nexit 1\n", marker.display()),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::write(
        dir.join(MANIFEST),
        format!(
            "template = \"x\"\n[run]\ncommand = [\"sh\", \"-c\", \"echo uid=$(id -u) preload=$LD_PRELOAD; exec python3 -m http.server --bind 127.0.0.1 $PORT\"]\nhealth = \"/\"\n\
             [run.env]\nPATH = \".:{}\"\nLD_PRELOAD = \"/nonexistent/evil.so\"\nLD_DEBUG = \"libs\"\nLD_DEBUG_OUTPUT = \"{}\"\n",
            dir.display(),
            root.path().join("ld-debug").display()
        ),
    )
    .unwrap();
    let ports = PortAllocator::new(root.path().join("ports"), 28_730, 28_750);
    let log = root.path().join("app.log");
    let app = RunningApp::start(&dir, &ports, &log)
        .await
        .expect("the app starts");
    let port: u32 = app.base_url.rsplit(':').next().unwrap().parse().unwrap();
    assert!(reqwest::get(&app.base_url)
        .await
        .unwrap()
        .status()
        .is_success());
    drop(app);
    assert!(
        !marker.exists(),
        "a program of the recipe's PATH ran: {:?}",
        std::fs::read_to_string(&marker)
    );
    let leftovers: Vec<_> = std::fs::read_dir(root.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("ld-debug"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "the loader wrote files for root: {leftovers:?}"
    );
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        log.contains(&format!("{} preload=", assay::sandbox::APP_UID_BASE + port)),
        "{log}"
    );
    assert!(
        log.contains("preload=/nonexistent/evil.so"),
        "the app itself gets its environment: {log}"
    );
}

/// An app's memory limit holds for the app as a whole: three processes of 600 MiB each
/// under `memory_mb = 1024` cannot all live (each alone is within the per-process limit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apps_memory_limit_holds_for_all_its_processes_together() {
    if !sandbox_or_skip() {
        return;
    }
    let probe = assay::sandbox::AppCgroup::create("assay-probe", 64 << 20, 16);
    if probe.is_empty() {
        skip_unless_required("there are no memory and pids cgroups here");
        return;
    }
    drop(probe);
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("app");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("app.py"),
        r#"
import http.server, os, subprocess, sys, time
hog = "import time\na = bytearray(600 * 1024 * 1024)\nfor i in range(0, len(a), 4096): a[i] = 1\ntime.sleep(600)\n"
kids = [subprocess.Popen([sys.executable, "-c", hog]) for _ in range(3)]
time.sleep(4)
alive = sum(1 for k in kids if k.poll() is None)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(str(alive).encode())
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#,
    )
    .unwrap();
    std::fs::write(
        dir.join(MANIFEST),
        "template = \"x\"\n[run]\ncommand = [\"python3\", \"app.py\"]\nhealth = \"/\"\nmemory_mb = 1024\n",
    )
    .unwrap();
    let ports = PortAllocator::new(root.path().join("ports"), 28_760, 28_780);
    let app = RunningApp::start(&dir, &ports, &root.path().join("app.log"))
        .await
        .expect("the app starts");
    let alive: u32 = reqwest::get(&app.base_url)
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
        .parse()
        .unwrap();
    assert!(alive <= 1, "{alive} of 3 hogs of 600 MiB live under 1 GiB");
}

/// A worker killed with -9 leaves its apps' cgroups (its apps die with their namespaces);
/// the next worker removes those of dead workers, and never a live one's.
#[test]
fn the_cgroups_of_a_dead_workers_apps_are_swept() {
    use assay::sandbox::{sweep_cgroups, AppCgroup};
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let dead = gone.id();
    gone.wait().unwrap();
    let name = format!("assay-app-{dead}-test");
    let left = AppCgroup::create(&name, 64 << 20, 16);
    if left.is_empty() {
        skip_unless_required("there are no memory and pids cgroups here");
        return;
    }
    // As a killed worker would: it never removes it.
    std::mem::forget(left);
    let mine = AppCgroup::for_app("live", 64 << 20, 16);
    assert!(sweep_cgroups() >= 1);
    let again = AppCgroup::create(&name, 64 << 20, 16);
    assert!(!again.is_empty(), "the dead worker's cgroup was removed");
    drop(again);
    let mine_again = AppCgroup::for_app("live", 64 << 20, 16);
    assert!(mine_again.is_empty(), "a live worker's cgroup stays");
    drop(mine);
}

/// However many processes an app runs, together they get one core's time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apps_processes_share_one_core() {
    if !sandbox_or_skip() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let dir = recipe_app(root.path(), "command = [\"sh\", \"-c\", \"for i in 1 2; do (timeout 3 sh -c 'while :; do :; done') & done; exec python3 -m http.server --bind 127.0.0.1 $PORT\"]\nhealth = \"/\"\n");
    let ports = PortAllocator::new(root.path().join("ports"), 28_790, 28_799);
    let app = RunningApp::start(&dir, &ports, &root.path().join("app.log"))
        .await
        .expect("the app starts");
    let port = app.base_url.rsplit(':').next().unwrap().to_string();
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let Some(cpu) = own.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, list, path) = (parts.next()?, parts.next()?, parts.next()?);
        list.split(',')
            .any(|c| c == "cpu")
            .then(|| std::path::Path::new("/sys/fs/cgroup/cpu").join(path.trim_start_matches('/')))
    }) else {
        skip_unless_required("there is no cgroup v1 cpu controller here");
        return;
    };
    let prefix = format!("assay-app-{}-{port}-", std::process::id());
    let group = std::fs::read_dir(&cpu)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .expect("the app has a cpu cgroup")
        .path();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let stat = std::fs::read_to_string(group.join("cpu.stat")).unwrap();
    let throttled: u64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("nr_throttled "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        throttled > 0,
        "two busy processes were held to one core: {stat}"
    );
    drop(app);
    assert!(!group.exists(), "the cgroup goes with the app");
}

/// Jobs of one app share one instance; it outlives no lease by more than the linger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_shares_an_app_and_stops_it_after_the_last_lease() {
    if !sandbox_or_skip() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    // python3 -m http.server takes its port as an argument: wrap it to read $PORT.
    let dir = recipe_app(
        root.path(),
        "command = [\"sh\", \"-c\", \"exec python3 -m http.server --bind 127.0.0.1 $PORT\"]\nhealth = \"/\"",
    );
    let pool = AppPool::new(PortAllocator::new(
        root.path().join("ports"),
        28_500,
        28_520,
    ))
    .with_linger(Duration::from_millis(300));
    let log = root.path().join("app.log");
    let first = pool.acquire(&dir, &log).await.unwrap();
    let second = pool.acquire(&dir, &log).await.unwrap();
    assert_eq!(
        first.base_url, second.base_url,
        "one instance for both jobs"
    );
    let url = first.base_url.clone();
    drop(first);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        reqwest::get(&url).await.is_ok(),
        "still held by the second job"
    );
    drop(second);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut stopped = false;
    for _ in 0..100 {
        if reqwest::get(&url).await.is_err() {
            stopped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(stopped, "stopped after the last lease and the linger");
}

/// An app that exits before it answers is a crash with its last log lines, at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_that_crashes_at_start_is_a_crash_not_a_hang() {
    use assay::analysis::apps::AppError;
    if !sandbox_or_skip() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let dir = recipe_app(
        root.path(),
        "command = [\"sh\", \"-c\", \"echo boom; exit 3\"]\nstartup_timeout = \"20s\"",
    );
    let ports = PortAllocator::new(root.path().join("ports"), 28_300, 28_310);
    let err = RunningApp::start(&dir, &ports, &root.path().join("app.log"))
        .await
        .unwrap_err();
    match &err {
        AppError::Crashed { log_tail, .. } => assert!(log_tail.contains("boom"), "{log_tail}"),
        other => panic!("expected a crash, got {other}"),
    }
}

/// A checkout under `/tmp` keeps its interpreters there (`/tmp/ci/.tools/venv`): the
/// app's own `/tmp` must not hide them.
#[test]
fn an_interpreter_under_tmp_is_still_found_in_the_sandbox() {
    use assay::sandbox as sb;
    use std::os::unix::fs::PermissionsExt;
    if !sandbox_or_skip() {
        return;
    }
    let root = tempfile::tempdir_in("/tmp").unwrap();
    let bin = root.path().join("venv/bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::write(root.path().join("venv/pyvenv.cfg"), "home = /usr/bin\n").unwrap();
    let tool = bin.join("hello-from-tmp");
    std::fs::write(&tool, "#!/bin/sh\necho found under tmp\n").unwrap();
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (app, etc) = (root.path().join("app"), root.path().join("etc"));
    for dir in [&app, &etc] {
        std::fs::create_dir(dir).unwrap();
    }
    let jail = sb::Jail {
        app_dir: &app,
        etc: &etc,
        uid: sb::APP_UID_BASE + 29_999,
        read_only: sb::interpreter_mounts(std::slice::from_ref(&bin)),
        node_modules: None,
    };
    assert_eq!(jail.read_only, vec![root.path().join("venv")]);
    jail.prepare().unwrap();
    let tools = sb::tools().unwrap();
    let path = format!("{}:{}", bin.display(), sb::SANDBOX_PATH);
    let out = std::process::Command::new(&tools.bwrap)
        .args(jail.bwrap_args(
            tools,
            &[("PATH".into(), path.into())],
            "",
            &["hello-from-tmp".into()],
        ))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "found under tmp\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A Node app the way models write them: no manifest, an Express server under `server/`
/// that hard-codes its port, its packages only named in `package.json`.
fn express_app(dir: &Path, dependencies: &str) {
    std::fs::create_dir_all(dir.join("server")).unwrap();
    std::fs::write(
        dir.join("server/package.json"),
        format!(
            r#"{{"name": "todo-server", "version": "1.0.0", "main": "index.js",
  "scripts": {{"start": "node index.js", "postinstall": "touch /tmp/assay-postinstall-ran"}},
  "dependencies": {dependencies}}}"#
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("server/index.js"),
        r#"const express = require('express');
const fs = require('fs');
const app = express();
app.use(express.json());
// Tools write beside their packages (Vite's node_modules/.vite): that must work.
fs.mkdirSync('node_modules/.cache/app', { recursive: true });
fs.writeFileSync('node_modules/.cache/app/started', 'yes');
const todos = [];
app.get('/api/todos', (req, res) => res.json(todos));
app.post('/api/todos', (req, res) => { todos.push(req.body); res.status(201).json(req.body); });
app.listen(3000, () => console.log('listening on 3000'));
"#,
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_app_runs_with_its_own_packages_and_a_missing_package_is_its_result() {
    use assay::analysis::apps::AppError;
    use assay::analysis::envs::EnvError;
    if !sandbox_or_skip() {
        return;
    }
    if assay::analysis::static_tools::find_program("npm").is_none() {
        skip_unless_required("npm is not installed");
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let ports = PortAllocator::new(root.path().join("ports"), 28_320, 28_330);
    let (first, second) = (root.path().join("first"), root.path().join("second"));
    express_app(&first, r#"{"express": "^4.21.0"}"#);
    express_app(&second, r#"{"express": "^4.21.0"}"#);
    let a = RunningApp::start(&first, &ports, &root.path().join("first.log"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let b = RunningApp::start(&second, &ports, &root.path().join("second.log"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let client = reqwest::Client::new();
    for app in [&a, &b] {
        let url = format!("{}/api/todos", app.base_url);
        let posted = client
            .post(&url)
            .json(&serde_json::json!({"title": "x"}))
            .send()
            .await
            .unwrap();
        assert_eq!(posted.status(), 201);
        let listed: serde_json::Value =
            client.get(&url).send().await.unwrap().json().await.unwrap();
        assert_eq!(listed, serde_json::json!([{"title": "x"}]));
    }
    let (env_a, env_b) = (a.env.clone().unwrap(), b.env.clone().unwrap());
    assert_eq!(
        env_a.digest, env_b.digest,
        "one package set, one environment"
    );
    let described = env_a.describe();
    assert_eq!(described["kind"], "node");
    assert!(
        env_a.locked.iter().any(|p| p.starts_with("express@4.")),
        "{:?}",
        env_a.locked
    );
    // The app wrote into its own copy's node_modules, never into the shared packages.
    assert!(!env_a.node_modules().join(".cache").exists());
    assert!(!Path::new("/tmp/assay-postinstall-ran").exists());
    drop((a, b));

    let broken = root.path().join("broken");
    express_app(
        &broken,
        r#"{"express": "^4.21.0", "assay-no-such-package-0x5e1f": "1.0.0"}"#,
    );
    let err = RunningApp::start(&broken, &ports, &root.path().join("broken.log"))
        .await
        .unwrap_err();
    assert!(err.is_model_failure(), "{err}");
    assert_eq!(err.outcome(), "does_not_install");
    match &err {
        AppError::Env(EnvError::DoesNotInstall { from, message }) => {
            assert_eq!(from, "server/package.json");
            assert!(message.contains("404"), "{message}");
        }
        other => panic!("expected does-not-install, got {other}"),
    }

    // A native addon whose install script was not run: not the model's fault, and said.
    let native = root.path().join("native");
    express_app(
        &native,
        r#"{"express": "^4.21.0", "better-sqlite3": "^11.0.0"}"#,
    );
    let index = native.join("server/index.js");
    let code = std::fs::read_to_string(&index).unwrap();
    std::fs::write(
        &index,
        format!("const Database = require('better-sqlite3');\nconst db = new Database('todos.db');\n{code}"),
    )
    .unwrap();
    let err = RunningApp::start(&native, &ports, &root.path().join("native.log"))
        .await
        .unwrap_err();
    assert!(!err.is_model_failure() && !err.is_retryable(), "{err}");
    match &err {
        AppError::NeedsInstallScript { packages, .. } => assert_eq!(packages, "better-sqlite3"),
        other => panic!("expected needs-install-script, got {other}"),
    }
}
