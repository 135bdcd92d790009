//! Job processes and analyzed apps never outlive the worker that started them.
//!
//! Each is started through a small supervisor: the `assay` binary itself, as
//! `assay __supervise … -- PROGRAM ARGS`, single-threaded, before any runtime. The
//! supervisor watches the worker two ways: a pidfd of its parent (readable when the worker
//! has exited; nothing can copy it) and the *lifeline*, a pipe whose write end only the
//! worker process holds, as its stdin (at end of file when the worker is gone).
//!
//! It gives the program a PID namespace of its own (with a user namespace mapping the
//! worker's user to itself where a PID namespace alone is not permitted). Its child there is
//! the namespace's init (`__supervise --namespace-init`, the same binary): it starts the
//! program, passes signals on to its process group, reaps orphans, and when the program
//! ends reports its wait status through a pipe and exits; the kernel then kills every
//! process left in the namespace. When the worker dies, or it is told to, the supervisor
//! kills the init, which ends the namespace the same way. From inside, no process outside
//! can be signalled. The init gets `PR_SET_PDEATHSIG(SIGKILL)`, for the case where the
//! supervisor itself is killed.
//!
//! Without namespaces (not permitted, or `assay worker --no-pid-namespace`) the supervisor
//! runs the program itself, as a child subreaper: orphans of the program's tree come to it,
//! and it kills the program's group and every descendant it finds, a whole level at a time.
//!
//! Second line: each supervisor records what it started in a file under the worker's
//! spool (`procs/`) and removes it when it is done. A record still there after its
//! supervisor exited means the supervisor was killed: the worker kills what the record
//! names at once, and a worker that starts on that spool does so for a dead predecessor's
//! records, before it does anything else (checked by start time, so a reused pid is never
//! hit).
//!
//! Between a worker and a supervisor (by the supervisor's pid): SIGTERM, SIGINT, SIGHUP,
//! SIGQUIT and SIGUSR2 are passed on to the program's process group; SIGUSR1 kills
//! everything at once. The supervisor exits with the program's exit code, or dies of the
//! signal that killed it (any signal, real-time ones included), so a supervised program
//! looks to the worker like the program itself.
//!
//! Without a supervisor binary (a test that runs job kinds in its own process and says
//! none, see [`use_this_binary`]) programs start directly in a process group of their own
//! with the death signal set.

use nix::sys::signal::{kill, killpg, SigSet, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The hidden subcommand that makes the `assay` binary a supervisor.
pub const SUBCOMMAND: &str = "__supervise";
/// Where `execvp` looks when there is no PATH.
const DEFAULT_PATH: &str = "/bin:/usr/bin";

static SUPERVISOR: OnceLock<Option<PathBuf>> = OnceLock::new();
static LIFELINE: OnceLock<Option<OwnedFd>> = OnceLock::new();
static RECORDS: Mutex<Option<PathBuf>> = Mutex::new(None);
static NO_PID_NAMESPACES: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Start programs without a PID namespace of their own (`assay worker --no-pid-namespace`).
pub fn disable_pid_namespaces() {
    NO_PID_NAMESPACES.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Called by the `assay` binary at start: it is its own supervisor. (`ASSAY_SUPERVISOR`
/// names another binary, e.g. for tests that run job kinds inside a test binary.)
pub fn use_this_binary() {
    let exe = std::env::var_os("ASSAY_SUPERVISOR")
        .map(PathBuf::from)
        .or_else(|| std::env::current_exe().ok());
    let _ = SUPERVISOR.set(exe);
}

fn supervisor() -> Option<&'static Path> {
    SUPERVISOR
        .get_or_init(|| std::env::var_os("ASSAY_SUPERVISOR").map(PathBuf::from))
        .as_deref()
}

/// The `assay` binary this process runs helpers from, when it is one (see
/// [`use_this_binary`]).
pub fn assay_binary() -> Option<PathBuf> {
    supervisor().map(Path::to_path_buf)
}

/// The read end of this process's lifeline, for one more supervisor. The write end is
/// never closed while the process lives, and never inherited (close-on-exec).
fn lifeline() -> Option<OwnedFd> {
    let read = LIFELINE.get_or_init(|| {
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).ok()?;
        // Held until the process exits, whoever holds this module.
        std::mem::forget(write);
        Some(read)
    });
    read.as_ref().and_then(|fd| fd.try_clone().ok())
}

/// Where supervisors record what they started: the worker's spool (`SPOOL/procs`).
pub fn record_in(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    *RECORDS.lock().expect("records lock") = Some(dir.to_path_buf());
    Ok(())
}

fn records_dir() -> Option<PathBuf> {
    RECORDS.lock().expect("records lock").clone()
}

/// A program to start under a supervisor: the parts of `std::process::Command` that job
/// kinds use. Its stdin is always empty (the supervisor's own stdin is the lifeline).
pub struct SupervisedCommand {
    program: OsString,
    args: Vec<OsString>,
    env_clear: bool,
    envs: Vec<(OsString, OsString)>,
    cwd: Option<PathBuf>,
    stdout: Option<Stdio>,
    stderr: Option<Stdio>,
    limits: Limits,
    /// A network namespace to run in (see [`SupervisedCommand::network_namespace`]).
    network: Option<Arc<OwnedFd>>,
    /// `cgroup.procs` files to join (see [`SupervisedCommand::cgroups`]).
    cgroups: Vec<std::ffi::CString>,
}

impl SupervisedCommand {
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        SupervisedCommand {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            env_clear: false,
            envs: Vec::new(),
            cwd: None,
            stdout: None,
            stderr: None,
            limits: Limits::default(),
            network: None,
            cgroups: Vec::new(),
        }
    }

    pub fn arg(&mut self, arg: impl AsRef<OsStr>) -> &mut Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<I, S>(&mut self, args: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub fn env(&mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> &mut Self {
        self.envs
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    pub fn envs<I, K, V>(&mut self, vars: I) -> &mut Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        for (k, v) in vars {
            self.env(k, v);
        }
        self
    }

    pub fn env_clear(&mut self) -> &mut Self {
        self.env_clear = true;
        self.envs.clear();
        self
    }

    pub fn current_dir(&mut self, dir: impl AsRef<Path>) -> &mut Self {
        self.cwd = Some(dir.as_ref().to_path_buf());
        self
    }

    pub fn stdout(&mut self, out: impl Into<Stdio>) -> &mut Self {
        self.stdout = Some(out.into());
        self
    }

    pub fn stderr(&mut self, err: impl Into<Stdio>) -> &mut Self {
        self.stderr = Some(err.into());
        self
    }

    /// Limit the program's address space (`RLIMIT_AS`), in bytes; 0 leaves it unlimited.
    pub fn address_space_limit(&mut self, bytes: u64) -> &mut Self {
        self.limits.address_space = (bytes > 0).then_some(bytes);
        self
    }

    pub fn no_core_dumps(&mut self) -> &mut Self {
        self.limits.no_core_dumps = true;
        self
    }

    /// The rest of the program's resource limits (`RLIMIT_NPROC`, `RLIMIT_CPU`,
    /// `RLIMIT_FSIZE`); what `limits` leaves `None` is left as it is.
    pub fn limits(
        &mut self,
        processes: Option<u64>,
        cpu_seconds: Option<u64>,
        file_size: Option<u64>,
    ) -> &mut Self {
        self.limits.processes = processes;
        self.limits.cpu_seconds = cpu_seconds;
        self.limits.file_size = file_size;
        self
    }

    /// Start the program (and its supervisor) in this network namespace, given as an open
    /// `/proc/…/ns/net`: the supervisor needs no network, and the program sees only what
    /// the namespace has. Needs `CAP_SYS_ADMIN` (the worker runs as root).
    pub fn network_namespace(&mut self, namespace: Arc<OwnedFd>) -> &mut Self {
        self.network = Some(namespace);
        self
    }

    /// Start the program (and its supervisor) in these cgroups, by writing to their
    /// `cgroup.procs` files between fork and exec: everything it starts is counted there.
    pub fn cgroups(&mut self, procs: Vec<std::ffi::CString>) -> &mut Self {
        self.cgroups = procs;
        self
    }

    /// The PATH the program will be looked up in: its own, if it is given one, else the
    /// worker's, else the C library's default.
    fn search_path(&self) -> OsString {
        let own = self.envs.iter().rev().find(|(k, _)| k == "PATH");
        match own {
            Some((_, v)) => v.clone(),
            None if self.env_clear => DEFAULT_PATH.into(),
            None => std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into()),
        }
    }

    /// Find the program the way `execvp` would, so that "not found" and "not executable"
    /// are errors of the spawn, as they are without a supervisor.
    fn resolve(&self) -> std::io::Result<PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        let program = Path::new(&self.program);
        // Relative paths, of the program or of a PATH entry, are relative to where the
        // program runs.
        let in_cwd = |p: PathBuf| match &self.cwd {
            Some(cwd) if p.is_relative() => cwd.join(p),
            _ => p,
        };
        let candidates: Vec<PathBuf> = if self.program.as_encoded_bytes().contains(&b'/') {
            vec![in_cwd(program.to_path_buf())]
        } else {
            std::env::split_paths(&self.search_path())
                .map(|d| in_cwd(d.join(program)))
                .collect()
        };
        let mut found_unexecutable = false;
        for candidate in candidates {
            let Ok(meta) = std::fs::metadata(&candidate) else {
                continue;
            };
            if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
                return std::path::absolute(candidate);
            }
            found_unexecutable = true;
        }
        Err(if found_unexecutable {
            std::io::Error::from(std::io::ErrorKind::PermissionDenied)
        } else {
            std::io::Error::from(std::io::ErrorKind::NotFound)
        })
    }

    fn build(mut self) -> std::io::Result<(std::process::Command, Launch)> {
        let program = self.resolve()?;
        let mut record = None;
        let (mut cmd, supervised) = match (supervisor(), lifeline()) {
            (Some(exe), Some(lifeline)) => {
                let mut cmd = std::process::Command::new(exe);
                cmd.arg(SUBCOMMAND);
                if let Some(dir) = records_dir() {
                    let path = dir.join(format!("{}.json", uuid::Uuid::new_v4()));
                    cmd.arg("--record").arg(&path);
                    record = Some(Arc::from(path));
                }
                cmd.args(self.limits.as_args());
                if NO_PID_NAMESPACES.load(std::sync::atomic::Ordering::Relaxed) {
                    cmd.arg("--no-pid-namespace");
                }
                cmd.arg("--").arg(&program).args(&self.args);
                cmd.stdin(Stdio::from(lifeline));
                (cmd, true)
            }
            _ => {
                let mut cmd = std::process::Command::new(&program);
                cmd.args(&self.args).stdin(Stdio::null());
                let limits = self.limits;
                // SAFETY: only async-signal-safe calls (prctl, setrlimit) before exec.
                unsafe {
                    cmd.pre_exec(move || {
                        let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
                        limits.apply();
                        Ok(())
                    });
                }
                (cmd, false)
            }
        };
        if self.env_clear {
            cmd.env_clear();
        }
        cmd.envs(self.envs.drain(..));
        if let Some(cwd) = &self.cwd {
            cmd.current_dir(cwd);
        }
        if let Some(out) = self.stdout.take() {
            cmd.stdout(out);
        }
        if let Some(err) = self.stderr.take() {
            cmd.stderr(err);
        }
        if let Some(namespace) = self.network.clone() {
            // SAFETY: setns is a plain system call, async-signal-safe; the descriptor stays
            // open (held by `namespace`, moved into the closure) until after the fork.
            unsafe {
                cmd.pre_exec(move || {
                    nix::sched::setns(namespace.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(std::io::Error::from)
                });
            }
        }
        if !self.cgroups.is_empty() {
            let procs = std::mem::take(&mut self.cgroups);
            // SAFETY: open, write and close are plain system calls, async-signal-safe; the
            // paths were made before the fork.
            unsafe {
                cmd.pre_exec(move || {
                    for file in &procs {
                        let fd = libc::open(file.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                        if fd < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        let wrote = libc::write(fd, b"0".as_ptr().cast(), 1);
                        libc::close(fd);
                        if wrote != 1 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    Ok(())
                });
            }
        }
        // The worker signals the supervisor (or, unsupervised, the program's group); a
        // group of its own keeps a terminal's Ctrl-C away from it.
        cmd.process_group(0);
        Ok((cmd, Launch { supervised, record }))
    }

    pub fn spawn(self) -> std::io::Result<(std::process::Child, Handle)> {
        let (mut cmd, launch) = self.build()?;
        let child = cmd.spawn()?;
        let handle = launch.handle(child_pid(child.id()));
        Ok((child, handle))
    }

    pub fn spawn_tokio(self) -> std::io::Result<(tokio::process::Child, Handle)> {
        let (cmd, launch) = self.build()?;
        let child = tokio::process::Command::from(cmd).spawn()?;
        let pid = child
            .id()
            .ok_or_else(|| std::io::Error::other("the child exited before it was watched"))?;
        Ok((child, launch.handle(child_pid(pid))))
    }
}

fn child_pid(id: u32) -> i32 {
    i32::try_from(id).expect("pids fit in an i32")
}

/// How a program was started: under a supervisor or not, and where its record is.
struct Launch {
    supervised: bool,
    record: Option<Arc<Path>>,
}

impl Launch {
    fn handle(self, pid: i32) -> Handle {
        Handle {
            pid,
            supervised: self.supervised,
            record: self.record,
        }
    }
}

/// How programs will be kept in check here, for the worker to say when it starts: `None`
/// when they run without a supervisor, else whether each gets a PID namespace.
pub fn namespaces_available() -> Option<bool> {
    let exe = supervisor()?;
    if NO_PID_NAMESPACES.load(std::sync::atomic::Ordering::Relaxed) {
        return Some(false);
    }
    let probed = std::process::Command::new(exe)
        .args([SUBCOMMAND, "--probe-namespace", "--", "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    Some(probed.is_ok_and(|s| s.success()))
}

/// How the worker stops a started program: softly, or its whole tree at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handle {
    pid: i32,
    supervised: bool,
    /// The supervisor's record: it removes it when it is done, so one still there after it
    /// exited means it was killed before it could clean up.
    record: Option<Arc<Path>>,
}

impl Handle {
    /// SIGTERM to the program's process group (through the supervisor).
    pub fn terminate(&self) {
        if self.supervised {
            let _ = kill(Pid::from_raw(self.pid), Signal::SIGTERM);
        } else {
            let _ = killpg(Pid::from_raw(self.pid), Signal::SIGTERM);
        }
    }

    /// After the program was waited for. A supervisor has already killed whatever it left
    /// running (and its pid may be reused now: it is not signalled again); without one,
    /// the program's group is killed.
    pub fn after_exit(&self) {
        if !self.supervised {
            let _ = killpg(Pid::from_raw(self.pid), Signal::SIGKILL);
        } else if let Some(record) = self.record.as_deref().filter(|r| r.exists()) {
            // Its supervisor was killed (by the program itself, say): what it recorded is
            // killed now, not at the worker's next start.
            sweep_record(record);
        }
    }

    /// Kill the program, its process group and every process it started. Only while it
    /// has not been waited for.
    pub fn kill(&self) {
        if self.supervised {
            let _ = kill(Pid::from_raw(self.pid), Signal::SIGUSR1);
        } else {
            let _ = killpg(Pid::from_raw(self.pid), Signal::SIGKILL);
        }
    }
}

/// Run a started program to its end within `timeout` and collect what it printed; `None`
/// when it ran out of time (it is killed, with all it started). The handle is disarmed the
/// moment the program is reaped, before its output is read: a process that escaped and
/// holds the pipes can only delay the output (by a bounded wait), never make the worker
/// signal a reused pid.
pub async fn output_within(
    mut child: tokio::process::Child,
    handle: Handle,
    timeout: Duration,
) -> std::io::Result<Option<std::process::Output>> {
    use tokio::io::AsyncReadExt;
    let mut guard = KillOnDrop::new(handle.clone());
    let read = |pipe: Option<Box<dyn tokio::io::AsyncRead + Unpin + Send>>| {
        tokio::spawn(async move {
            let mut out = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut out).await;
            }
            out
        })
    };
    let stdout = read(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = read(child.stderr.take().map(|p| Box::new(p) as _));
    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(status) => status?,
        Err(_) => {
            handle.kill();
            let _ = child.wait().await;
            guard.disarm();
            stdout.abort();
            stderr.abort();
            return Ok(None);
        }
    };
    guard.disarm();
    handle.after_exit();
    let collect = |task: tokio::task::JoinHandle<Vec<u8>>| async move {
        tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default()
    };
    Ok(Some(std::process::Output {
        status,
        stdout: collect(stdout).await,
        stderr: collect(stderr).await,
    }))
}

/// Kills a started program's tree when dropped, unless disarmed (it was waited for): a job
/// future dropped mid-run leaves nothing behind.
pub struct KillOnDrop(Option<Handle>);

impl KillOnDrop {
    pub fn new(handle: Handle) -> Self {
        KillOnDrop(Some(handle))
    }
    pub fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            h.kill();
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Limits {
    address_space: Option<u64>,
    no_core_dumps: bool,
    processes: Option<u64>,
    cpu_seconds: Option<u64>,
    file_size: Option<u64>,
}

impl Limits {
    fn from_args(args: &SuperviseArgs) -> Limits {
        Limits {
            address_space: args.address_space,
            no_core_dumps: args.no_core_dumps,
            processes: args.processes,
            cpu_seconds: args.cpu_seconds,
            file_size: args.file_size,
        }
    }

    /// The `__supervise` arguments that carry these limits.
    fn as_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        let mut number = |flag: &str, value: Option<u64>| {
            if let Some(v) = value {
                args.push(flag.into());
                args.push(v.to_string().into());
            }
        };
        number("--address-space", self.address_space);
        number("--processes", self.processes);
        number("--cpu-seconds", self.cpu_seconds);
        number("--file-size", self.file_size);
        if self.no_core_dumps {
            args.push("--no-core-dumps".into());
        }
        args
    }

    /// Between fork and exec: async-signal-safe calls only.
    fn apply(&self) {
        use nix::sys::resource::{setrlimit, Resource};
        if let Some(bytes) = self.address_space {
            let _ = setrlimit(Resource::RLIMIT_AS, bytes, bytes);
        }
        if self.no_core_dumps {
            let _ = setrlimit(Resource::RLIMIT_CORE, 0, 0);
        }
        if let Some(n) = self.processes {
            let _ = setrlimit(Resource::RLIMIT_NPROC, n, n);
        }
        if let Some(seconds) = self.cpu_seconds {
            // The soft limit sends SIGXCPU first; a second later the hard one kills.
            let _ = setrlimit(Resource::RLIMIT_CPU, seconds, seconds + 1);
        }
        if let Some(bytes) = self.file_size {
            let _ = setrlimit(Resource::RLIMIT_FSIZE, bytes, bytes);
        }
    }
}

/// A process by pid and start time (clock ticks after boot): a pid that was reused since
/// has another start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct ProcessId {
    pid: i32,
    started: u64,
}

/// What a supervisor started, in the worker's spool while it runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    supervisor: ProcessId,
    /// Its child: the program, leader of its own process group; or, in a PID namespace of
    /// the supervisor's own, that namespace's init (the kernel kills the rest with it).
    group: ProcessId,
    #[serde(default)]
    namespace: bool,
}

/// `/proc/PID/stat`: (parent pid, process group, start time).
fn stat(pid: i32) -> Option<(i32, i32, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold anything: fields follow the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(3) ppid(4) pgrp(5) … starttime(22), numbered from 1.
    Some((
        fields.get(1)?.parse().ok()?,
        fields.get(2)?.parse().ok()?,
        fields.get(19)?.parse().ok()?,
    ))
}

fn process_id(pid: i32) -> Option<ProcessId> {
    stat(pid).map(|(_, _, started)| ProcessId { pid, started })
}

/// Every process, with its parent, group and start time.
fn processes() -> Vec<(i32, i32, i32, u64)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| stat(pid).map(|(ppid, pgrp, started)| (pid, ppid, pgrp, started)))
        .collect()
}

fn alive(p: &ProcessId) -> bool {
    process_id(p.pid).is_some_and(|now| now.started == p.started)
}

/// Kill what the records in `dir` name that is still running: the supervisors and process
/// groups of a worker that died (a live worker never shares its spool). Returns how many
/// records had something left to kill.
pub fn sweep_leftovers(dir: &Path) -> std::io::Result<usize> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut swept = 0;
    for entry in entries.flatten() {
        swept += usize::from(sweep_record(&entry.path()));
    }
    Ok(swept)
}

/// Kill what one record names that still runs, then delete the record; whether anything
/// was left.
fn sweep_record(path: &Path) -> bool {
    let record: Option<Record> = std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let mut found = false;
    if let Some(r) = record {
        if alive(&r.supervisor) {
            // Asked first: it kills its tree and removes its record.
            found = true;
            let _ = kill(Pid::from_raw(r.supervisor.pid), Signal::SIGUSR1);
            let waited = Instant::now();
            while alive(&r.supervisor) && waited.elapsed() < Duration::from_secs(2) {
                std::thread::sleep(Duration::from_millis(10));
            }
            if alive(&r.supervisor) {
                let _ = kill(Pid::from_raw(r.supervisor.pid), Signal::SIGKILL);
            }
        }
        if alive(&r.group) {
            found = true;
            let _ = kill(Pid::from_raw(r.group.pid), Signal::SIGKILL);
        }
        // Without a namespace, the group's members too: those that started after its
        // leader, and only while its number was not reused (a process with that pid and
        // another start time leads another group now).
        let reused = process_id(r.group.pid).is_some_and(|now| now.started != r.group.started);
        if !r.namespace && !reused {
            for (pid, _, pgrp, started) in processes() {
                if pgrp == r.group.pid && started >= r.group.started {
                    found = true;
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
        }
    }
    let _ = std::fs::remove_file(path);
    found
}

/// The arguments of `assay __supervise`.
#[derive(clap::Args, Debug, Clone)]
pub struct SuperviseArgs {
    /// Where to record what was started (removed when done).
    #[arg(long)]
    record: Option<PathBuf>,
    #[arg(long)]
    address_space: Option<u64>,
    #[arg(long)]
    no_core_dumps: bool,
    /// `RLIMIT_NPROC` for the program (per user: the sandbox gives each app a user of its own).
    #[arg(long)]
    processes: Option<u64>,
    /// `RLIMIT_CPU`, in seconds.
    #[arg(long)]
    cpu_seconds: Option<u64>,
    /// `RLIMIT_FSIZE`, in bytes.
    #[arg(long)]
    file_size: Option<u64>,
    /// Run the program without a PID namespace of its own.
    #[arg(long)]
    no_pid_namespace: bool,
    /// Only say whether a PID namespace can be made here (exit 0) or not (exit 3).
    #[arg(long, hide = true)]
    probe_namespace: bool,
    /// (Inside the supervisor's PID namespace) be its init: start the program, pass
    /// signals on, and write the program's wait status to this descriptor.
    #[arg(long, hide = true)]
    namespace_init: Option<i32>,
    /// The program and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<OsString>,
}

/// The descriptor number an init writes the program's status to: high enough to stay clear
/// of the few a supervisor has open when it starts one.
const STATUS_FD: i32 = 100;

/// A wait status as `waitpid` gives it (any signal, real-time ones included).
#[derive(Debug, Clone, Copy)]
struct RawStatus(i32);

impl RawStatus {
    fn killed() -> RawStatus {
        RawStatus(libc::SIGKILL)
    }
}

/// `waitpid(pid, WNOHANG)` on any child (`-1`) or one: `Some((pid, status))` for an exited
/// child, `None` when none has exited yet, `Err` when there is no child left.
fn wait_any(pid: i32) -> Result<Option<(i32, RawStatus)>, nix::errno::Errno> {
    let mut status = 0;
    // SAFETY: waitpid with a valid out pointer.
    let got = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    match got {
        0 => Ok(None),
        -1 => Err(nix::errno::Errno::last()),
        pid => Ok(Some((pid, RawStatus(status)))),
    }
}

/// Every signal that can be caught, blocked, so that they all arrive on a signalfd: a
/// supervisor must never die of a stray signal before it has cleaned up.
fn block_signals() -> nix::Result<nix::sys::signalfd::SignalFd> {
    use nix::sys::signalfd::{SfdFlags, SignalFd};
    let mut mask = SigSet::all();
    // Faults must stay faults.
    for s in [
        Signal::SIGSEGV,
        Signal::SIGBUS,
        Signal::SIGFPE,
        Signal::SIGILL,
        Signal::SIGTRAP,
    ] {
        mask.remove(s);
    }
    mask.thread_block()?;
    SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC)
}

/// Signals a supervisor passes on to what it supervises.
fn forwarded(signo: u32) -> bool {
    [
        libc::SIGTERM,
        libc::SIGINT,
        libc::SIGHUP,
        libc::SIGQUIT,
        libc::SIGUSR2,
    ]
    .contains(&(signo as i32))
}

/// The worker's end, as things to poll: the lifeline pipe on stdin (at end of file once
/// every copy of its write end is closed), and a pidfd of the parent process (readable
/// once it has exited; unlike the pipe, no program can take a copy of it and keep it
/// open). Either one means the worker is gone.
fn watch_worker() -> Vec<OwnedFd> {
    use std::os::fd::FromRawFd;
    let mut watched = vec![std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .expect("stdin can be duplicated")];
    let parent = nix::unistd::getppid();
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, parent.as_raw(), 0) };
    if fd >= 0 {
        // SAFETY: a descriptor the kernel just gave us, owned by no one else.
        let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        // The parent died between the two calls: the pidfd is of whoever adopted us.
        if nix::unistd::getppid() == parent && parent.as_raw() != 1 {
            watched.push(pidfd);
        }
    }
    watched
}

/// A PID namespace of its own for what this supervisor starts: its first child becomes
/// that namespace's init, and when the init ends the kernel kills every process left in
/// it; nothing inside can name, let alone signal, a process outside. As root a PID
/// namespace is enough; otherwise a user namespace that maps this user to itself comes with
/// it. False where neither is allowed.
fn own_pid_namespace() -> bool {
    use nix::sched::{unshare, CloneFlags};
    if unshare(CloneFlags::CLONE_NEWPID).is_ok() {
        return true;
    }
    let (uid, gid) = (nix::unistd::getuid(), nix::unistd::getgid());
    if unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWPID).is_err() {
        return false;
    }
    std::fs::write("/proc/self/setgroups", "deny").is_ok()
        && std::fs::write("/proc/self/uid_map", format!("{uid} {uid} 1")).is_ok()
        && std::fs::write("/proc/self/gid_map", format!("{gid} {gid} 1")).is_ok()
}

/// The supervisor: start the program, wait for it, the worker's end or an order, and leave
/// nothing behind. Runs single-threaded, before any runtime exists.
pub fn run(args: SuperviseArgs) -> ExitCode {
    if args.probe_namespace {
        return ExitCode::from(if own_pid_namespace() { 0 } else { 3 });
    }
    let outcome = match args.namespace_init {
        Some(fd) => be_init(&args, fd),
        None => supervise(&args),
    };
    match outcome {
        Ok(status) => mirror(status),
        Err(e) => {
            eprintln!("assay supervisor: {e}");
            ExitCode::from(127)
        }
    }
}

/// Resource limits for the program, and the supervisor's own: it never dumps core into
/// the program's folder, whatever the worker's limits.
fn own_limits() -> (u64, u64) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let core = getrlimit(Resource::RLIMIT_CORE).unwrap_or((0, 0));
    let _ = setrlimit(Resource::RLIMIT_CORE, 0, core.1);
    core
}

/// Spawn `command` with the mask cleared, the death signal armed and `limits` applied;
/// `status_fd`: also hand it this descriptor as [`STATUS_FD`].
fn spawn_child(
    command: &[OsString],
    limits: Limits,
    core: (u64, u64),
    status_fd: Option<i32>,
) -> std::io::Result<i32> {
    let me = nix::unistd::getpid();
    let mut cmd = std::process::Command::new(&command[0]);
    cmd.args(&command[1..])
        .stdin(Stdio::null())
        .process_group(0);
    // SAFETY: only async-signal-safe calls (sigprocmask, prctl, getppid, setrlimit, dup2).
    unsafe {
        cmd.pre_exec(move || {
            // A spawned program inherits the signal mask: it must get signals again.
            SigSet::empty().thread_set_mask()?;
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            // The supervisor died before the death signal was armed? (The init of a new
            // PID namespace sees no parent at all: 0.)
            let parent = nix::unistd::getppid().as_raw();
            if parent != me.as_raw() && parent != 0 {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            let _ = nix::sys::resource::setrlimit(
                nix::sys::resource::Resource::RLIMIT_CORE,
                core.0,
                core.1,
            );
            limits.apply();
            if let Some(fd) = status_fd {
                if libc::dup2(fd, STATUS_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| {
        eprintln!(
            "assay supervisor: cannot start {}: {e}",
            Path::new(&command[0]).display()
        );
        e
    })?;
    let pid = child.id() as i32;
    // std's `Child` must not reap it: this loop does, with waitpid.
    std::mem::forget(child);
    Ok(pid)
}

fn write_record(path: &Path, record: &Record) {
    let tmp = path.with_extension("tmp");
    let written = serde_json::to_vec(record)
        .map_err(std::io::Error::other)
        .and_then(|b| std::fs::write(&tmp, b))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        eprintln!("assay supervisor: cannot record {}: {e}", path.display());
    }
}

fn supervise(args: &SuperviseArgs) -> std::io::Result<RawStatus> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let core = own_limits();
    nix::sys::prctl::set_child_subreaper(true)?;
    let signals = block_signals()?;
    let worker = watch_worker();
    let limits = Limits::from_args(args);
    let namespace = !args.no_pid_namespace && own_pid_namespace();
    // In a namespace: the init (this binary again) runs the program and reports its status
    // through a pipe; without one, the program is the child.
    let (status_read, status_write) = if namespace {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        (Some(r), Some(w))
    } else {
        (None, None)
    };
    let child = if namespace {
        let exe = std::env::current_exe()?;
        let mut init: Vec<OsString> = vec![
            exe.into_os_string(),
            SUBCOMMAND.into(),
            "--namespace-init".into(),
            STATUS_FD.to_string().into(),
        ];
        init.extend(limits.as_args());
        init.push("--".into());
        init.extend(args.command.iter().cloned());
        let no_limits = Limits::default();
        let fd = status_write.as_ref().map(|w| w.as_raw_fd());
        spawn_child(&init, no_limits, core, fd)?
    } else {
        spawn_child(&args.command, limits, core, None)?
    };
    drop(status_write);
    let record = args.record.as_ref().and_then(|path| {
        let r = Record {
            supervisor: process_id(nix::unistd::getpid().as_raw())?,
            group: process_id(child)?,
            namespace,
        };
        write_record(path, &r);
        Some(path.clone())
    });
    let child_pid = Pid::from_raw(child);
    let ended = |status: RawStatus| -> RawStatus {
        // The program's own status, passed on by the init when there is one.
        match &status_read {
            Some(r) => {
                let mut buf = [0u8; 4];
                match nix::unistd::read(r.as_raw_fd(), &mut buf) {
                    Ok(4) => RawStatus(i32::from_ne_bytes(buf)),
                    _ => status,
                }
            }
            None => status,
        }
    };
    // Stop everything: in a namespace, killing its init is enough (the kernel kills the
    // rest); without one, the tree is walked.
    let stop_all = || -> Option<RawStatus> {
        if namespace {
            let _ = kill(child_pid, Signal::SIGKILL);
            wait_for(child).map(ended)
        } else {
            kill_tree(child).map(ended)
        }
    };
    let status = loop {
        let mut fds: Vec<PollFd> = std::iter::once(&signals as &dyn AsFd)
            .chain(worker.iter().map(|w| w as &dyn AsFd))
            .map(|fd| PollFd::new(fd.as_fd(), PollFlags::POLLIN))
            .collect();
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => break stop_all().unwrap_or(RawStatus::killed()),
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| !f.revents().unwrap_or(PollFlags::empty()).is_empty())
            .collect();
        drop(fds);
        let gone = worker
            .iter()
            .zip(&ready[1..])
            .any(|(w, ready)| *ready && worker_gone(w));
        if gone {
            break stop_all().unwrap_or(RawStatus::killed());
        }
        if !ready[0] {
            continue;
        }
        let Ok(Some(info)) = signals.read_signal() else {
            continue;
        };
        match info.ssi_signo as i32 {
            libc::SIGCHLD => {
                if let Some(status) = reap(child) {
                    // The program is done; whatever it left running goes too.
                    if !namespace {
                        let _ = kill_tree(child);
                    }
                    break ended(status);
                }
            }
            libc::SIGUSR1 => break stop_all().unwrap_or(RawStatus::killed()),
            signo if forwarded(signo as u32) => {
                if namespace {
                    // The init passes it on to the program's group.
                    let _ = nix::sys::signal::kill(child_pid, Signal::try_from(signo).ok());
                } else if let Ok(sig) = Signal::try_from(signo) {
                    let _ = killpg(child_pid, sig);
                }
            }
            _ => {}
        }
    };
    if let Some(path) = record {
        let _ = std::fs::remove_file(path);
    }
    Ok(status)
}

/// Whether the watched worker has ended: its pidfd is readable, or the lifeline pipe is at
/// its end (or broken).
fn worker_gone(worker: &OwnedFd) -> bool {
    let mut buf = [0u8; 64];
    match nix::unistd::read(worker.as_raw_fd(), &mut buf) {
        // A pidfd is not readable: it polls readable once the process has exited.
        Err(nix::errno::Errno::EINVAL) => true,
        Ok(n) => n == 0,
        Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => false,
        Err(_) => true,
    }
}

/// The init of a supervisor's PID namespace: start the program, pass signals on to its
/// group, reap whatever ends here, and when the program ends, report its status and exit
/// (and the kernel kills what is left in the namespace).
fn be_init(args: &SuperviseArgs, status_fd: i32) -> std::io::Result<RawStatus> {
    use std::os::fd::FromRawFd;
    let core = own_limits();
    let signals = block_signals()?;
    let limits = Limits::from_args(args);
    // SAFETY: the supervisor gave this process the descriptor under this number.
    let status_out = unsafe { OwnedFd::from_raw_fd(status_fd) };
    let _ = nix::fcntl::fcntl(
        status_out.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
    let program = spawn_child(&args.command, limits, core, None)?;
    loop {
        let Ok(Some(info)) = signals.read_signal() else {
            continue;
        };
        match info.ssi_signo as i32 {
            libc::SIGCHLD => {
                if let Some(status) = reap(program) {
                    let _ = nix::unistd::write(&status_out, &status.0.to_ne_bytes());
                    // Exit normally: an init that raised the program's signal would not
                    // die of it. The supervisor mirrors the status it was given.
                    return Ok(RawStatus(0));
                }
            }
            signo if forwarded(signo as u32) => {
                if let Ok(sig) = Signal::try_from(signo) {
                    let _ = killpg(Pid::from_raw(program), sig);
                }
            }
            _ => {}
        }
    }
}

/// Reap every child that has exited; the status of `program` if it was among them.
fn reap(program: i32) -> Option<RawStatus> {
    let mut found = None;
    while let Ok(Some((pid, status))) = wait_any(-1) {
        if pid == program {
            found = Some(status);
        }
    }
    found
}

/// Wait for one child to end (it was sent SIGKILL), reaping others on the way.
fn wait_for(child: i32) -> Option<RawStatus> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match wait_any(-1) {
            Ok(Some((pid, status))) if pid == child => return Some(status),
            Ok(Some(_)) => continue,
            Ok(None) => std::thread::sleep(Duration::from_millis(2)),
            Err(_) => return None,
        }
    }
    None
}

/// Without a namespace: kill the program's group and every process descended from this
/// supervisor (orphans come to it, a subreaper), all of them in each round, and reap them;
/// the program's status if it was reaped here.
fn kill_tree(program: i32) -> Option<RawStatus> {
    let me = nix::unistd::getpid().as_raw();
    let mut program_status = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let _ = killpg(Pid::from_raw(program), Signal::SIGKILL);
        for pid in descendants_of(me) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        loop {
            match wait_any(-1) {
                Ok(None) => break,
                Ok(Some((pid, status))) => {
                    if pid == program {
                        program_status = Some(status);
                    }
                }
                // No child left at all: everything is gone.
                Err(_) => return program_status,
            }
        }
        if Instant::now() > deadline {
            return program_status;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Every process below `root`, however deep, from one reading of `/proc`.
fn descendants_of(root: i32) -> Vec<i32> {
    let all = processes();
    let mut children: std::collections::HashMap<i32, Vec<i32>> = Default::default();
    for (pid, ppid, _, _) in &all {
        children.entry(*ppid).or_default().push(*pid);
    }
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for &c in children.get(&p).map(Vec::as_slice).unwrap_or(&[]) {
            out.push(c);
            frontier.push(c);
        }
    }
    out
}

/// Exit as the program did: with its code, or of its signal.
fn mirror(status: RawStatus) -> ExitCode {
    let raw = status.0;
    if libc::WIFEXITED(raw) {
        return ExitCode::from(libc::WEXITSTATUS(raw) as u8);
    }
    if libc::WIFSIGNALED(raw) {
        let signo = libc::WTERMSIG(raw);
        // SAFETY: restoring the default action of a signal, unblocking it and raising it.
        unsafe {
            libc::signal(signo, libc::SIG_DFL);
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, signo);
            libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            libc::raise(signo);
        }
        return ExitCode::from((128 + signo) as u8);
    }
    ExitCode::from(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_reads_past_a_name_with_spaces_and_parentheses() {
        let me = std::process::id() as i32;
        let (ppid, pgrp, started) = stat(me).unwrap();
        assert_eq!(ppid, nix::unistd::getppid().as_raw());
        assert_eq!(pgrp, nix::unistd::getpgrp().as_raw());
        assert!(started > 0);
    }

    #[test]
    fn programs_are_found_as_execvp_would_and_errors_keep_their_kind() {
        let mut cmd = SupervisedCommand::new("sh");
        cmd.env("PATH", "/usr/bin:/bin");
        assert!(cmd.resolve().unwrap().is_absolute());
        let missing = SupervisedCommand::new("no-such-program-anywhere");
        assert_eq!(
            missing.resolve().unwrap_err().kind(),
            std::io::ErrorKind::NotFound
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("run.sh"), "#!/bin/sh\n").unwrap();
        let mut relative = SupervisedCommand::new("./run.sh");
        relative.current_dir(dir.path());
        assert_eq!(
            relative.resolve().unwrap_err().kind(),
            std::io::ErrorKind::PermissionDenied
        );
        let mut cleared = SupervisedCommand::new("sh");
        cleared.env_clear();
        assert!(
            cleared.resolve().unwrap().is_absolute(),
            "no PATH: the C library's default"
        );
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let tool = bin.join("mytool");
        std::fs::write(&tool, "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut relative_path = SupervisedCommand::new("mytool");
        relative_path
            .env("PATH", "bin:/usr/bin")
            .current_dir(dir.path());
        assert_eq!(
            relative_path.resolve().unwrap(),
            tool,
            "a relative PATH entry is relative to the program's folder"
        );
    }
}
