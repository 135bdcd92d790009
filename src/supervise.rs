//! Job processes and analyzed apps never outlive the worker that started them.
//!
//! Each is started through a small supervisor: the `assay` binary itself, as
//! `assay __supervise … -- PROGRAM ARGS`. The worker process holds the write end of a pipe,
//! the *lifeline*, for as long as it lives, and every supervisor reads the other end as its
//! stdin. However the worker ends (kill -9 included), the kernel closes the write end and
//! every supervisor sees end-of-file at once: it kills its program's process group and
//! every process descended from it, then exits. A supervisor is a child subreaper, so a
//! daemon that double-forked or called `setsid` is still its descendant and is found. The
//! program itself gets `PR_SET_PDEATHSIG(SIGKILL)`, for the case where the supervisor is
//! the one killed.
//!
//! Second line: each supervisor records what it started in a file under the worker's
//! spool (`procs/`) and removes it when it is done. A worker that starts on that spool
//! kills whatever the records of a dead predecessor still name (checked by start time, so
//! a reused pid is never hit), before it does anything else.
//!
//! Between a worker and a supervisor (by the supervisor's pid): SIGTERM, SIGINT and SIGHUP
//! are passed on to the program's process group; SIGUSR1 kills the whole tree at once. The
//! supervisor exits with the program's exit code, or dies of the signal that killed it, so
//! a supervised program looks to the worker like the program itself.
//!
//! Without a supervisor binary (a test that runs job kinds in its own process and says
//! none, see [`use_this_binary`]) programs start directly in a process group of their own
//! with the death signal set: everything but the lifeline and the records still holds.

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

static SUPERVISOR: OnceLock<Option<PathBuf>> = OnceLock::new();
static LIFELINE: OnceLock<Option<OwnedFd>> = OnceLock::new();
static RECORDS: Mutex<Option<PathBuf>> = Mutex::new(None);

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
    address_space: Option<u64>,
    no_core_dumps: bool,
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
            address_space: None,
            no_core_dumps: false,
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
        self.address_space = (bytes > 0).then_some(bytes);
        self
    }

    pub fn no_core_dumps(&mut self) -> &mut Self {
        self.no_core_dumps = true;
        self
    }

    /// The PATH the program will be looked up in: its own, if it is given one.
    fn search_path(&self) -> Option<OsString> {
        let own = self.envs.iter().rev().find(|(k, _)| k == "PATH");
        match own {
            Some((_, v)) => Some(v.clone()),
            None if self.env_clear => None,
            None => std::env::var_os("PATH"),
        }
    }

    /// Find the program the way `execvp` would, so that "not found" and "not executable"
    /// are errors of the spawn, as they are without a supervisor.
    fn resolve(&self) -> std::io::Result<PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        let program = Path::new(&self.program);
        let candidates: Vec<PathBuf> = if self.program.as_encoded_bytes().contains(&b'/') {
            vec![match &self.cwd {
                Some(cwd) if program.is_relative() => cwd.join(program),
                _ => program.to_path_buf(),
            }]
        } else {
            self.search_path()
                .map(|p| std::env::split_paths(&p).map(|d| d.join(program)).collect())
                .unwrap_or_default()
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
                if let Some(bytes) = self.address_space {
                    cmd.arg("--address-space").arg(bytes.to_string());
                }
                if self.no_core_dumps {
                    cmd.arg("--no-core-dumps");
                }
                cmd.arg("--").arg(&program).args(&self.args);
                cmd.stdin(Stdio::from(lifeline));
                (cmd, true)
            }
            _ => {
                let mut cmd = std::process::Command::new(&program);
                cmd.args(&self.args).stdin(Stdio::null());
                let limits = Limits {
                    address_space: self.address_space,
                    no_core_dumps: self.no_core_dumps,
                };
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

#[derive(Debug, Clone, Copy)]
struct Limits {
    address_space: Option<u64>,
    no_core_dumps: bool,
}

impl Limits {
    /// Between fork and exec: async-signal-safe calls only.
    fn apply(&self) {
        use nix::sys::resource::{setrlimit, Resource};
        if let Some(bytes) = self.address_space {
            let _ = setrlimit(Resource::RLIMIT_AS, bytes, bytes);
        }
        if self.no_core_dumps {
            let _ = setrlimit(Resource::RLIMIT_CORE, 0, 0);
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
    /// The program, leader of its own process group.
    group: ProcessId,
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
        // Members of the program's group that started after it: never an unrelated
        // process that got a reused number.
        for (pid, _, pgrp, started) in processes() {
            if pgrp == r.group.pid && started >= r.group.started {
                found = true;
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
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
    /// The program and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<OsString>,
}

/// The supervisor: start the program, wait for it, the lifeline or an order, and leave
/// nothing behind. Runs single-threaded, before any runtime exists.
pub fn run(args: SuperviseArgs) -> ExitCode {
    match supervise(&args) {
        Ok(status) => mirror(status),
        Err(e) => {
            eprintln!("assay supervisor: {e}");
            ExitCode::from(127)
        }
    }
}

fn supervise(args: &SuperviseArgs) -> nix::Result<nix::sys::wait::WaitStatus> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use nix::sys::signalfd::{SfdFlags, SignalFd};
    let me = nix::unistd::getpid();
    nix::sys::prctl::set_child_subreaper(true)?;
    let mut mask = SigSet::empty();
    for s in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGUSR1,
        Signal::SIGCHLD,
    ] {
        mask.add(s);
    }
    mask.thread_block()?;
    let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC)?;
    let limits = Limits {
        address_space: args.address_space,
        no_core_dumps: args.no_core_dumps,
    };
    let mut cmd = std::process::Command::new(&args.command[0]);
    cmd.args(&args.command[1..])
        .stdin(Stdio::null())
        .process_group(0);
    // SAFETY: only async-signal-safe calls (sigprocmask, prctl, getppid, setrlimit).
    unsafe {
        cmd.pre_exec(move || {
            // A spawned program inherits the signal mask: it must get signals again.
            SigSet::empty().thread_set_mask()?;
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            if nix::unistd::getppid() != me {
                // The supervisor died before the death signal was armed.
                return Err(std::io::Error::other("supervisor gone"));
            }
            limits.apply();
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| {
        eprintln!(
            "assay supervisor: cannot start {}: {e}",
            Path::new(&args.command[0]).display()
        );
        nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::ENOENT))
    })?;
    let program = Pid::from_raw(child.id() as i32);
    // std's `Child` must not reap it: this loop does, with waitpid.
    std::mem::forget(child);
    let record = args.record.as_ref().and_then(|path| {
        let r = Record {
            supervisor: process_id(me.as_raw())?,
            group: process_id(program.as_raw())?,
        };
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(&r).ok()?).ok()?;
        std::fs::rename(&tmp, path).ok()?;
        Some(path.clone())
    });
    let lifeline = std::io::stdin();
    let status = loop {
        let mut fds = [
            PollFd::new(lifeline.as_fd(), PollFlags::POLLIN),
            PollFd::new(signals.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => break kill_tree(program).unwrap_or(Err(e)),
        }
        let lifeline_event = fds[0].revents().unwrap_or(PollFlags::empty());
        let signal_event = fds[1].revents().unwrap_or(PollFlags::empty());
        if !lifeline_event.is_empty() {
            let mut buf = [0u8; 64];
            // End of file (or an error): the worker is gone.
            if !matches!(nix::unistd::read(lifeline.as_raw_fd(), &mut buf), Ok(n) if n > 0) {
                break kill_tree(program).unwrap_or(Ok(nix::sys::wait::WaitStatus::Signaled(
                    program,
                    Signal::SIGKILL,
                    false,
                )));
            }
        }
        if signal_event.is_empty() {
            continue;
        }
        let Ok(Some(info)) = signals.read_signal() else {
            continue;
        };
        match Signal::try_from(info.ssi_signo as i32) {
            Ok(Signal::SIGCHLD) => {
                if let Some(status) = reap(program) {
                    // The program is done; whatever it left running goes too.
                    let _ = kill_tree(program);
                    break Ok(status);
                }
            }
            Ok(Signal::SIGUSR1) => {
                if let Some(status) = kill_tree(program) {
                    break status;
                }
            }
            Ok(forwarded) => {
                let _ = killpg(program, forwarded);
            }
            Err(_) => {}
        }
    };
    if let Some(path) = record {
        let _ = std::fs::remove_file(path);
    }
    status
}

/// Reap every child that has exited; the program's status if it was among them.
fn reap(program: Pid) -> Option<nix::sys::wait::WaitStatus> {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let mut found = None;
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return found,
            Ok(status) => {
                if status.pid() == Some(program) {
                    found = Some(status);
                }
            }
        }
    }
}

/// Kill the program's group and every descendant (orphans come to this subreaper), reap
/// them all; the program's status if it was reaped here.
fn kill_tree(program: Pid) -> Option<nix::Result<nix::sys::wait::WaitStatus>> {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let me = nix::unistd::getpid().as_raw();
    let mut program_status = None;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let _ = killpg(program, Signal::SIGKILL);
        for (pid, ppid, _, _) in processes() {
            if ppid == me {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => break,
                Ok(status) => {
                    if status.pid() == Some(program) {
                        program_status = Some(Ok(status));
                    }
                }
                // No child left at all: everything is gone.
                Err(_) => return program_status,
            }
        }
        if Instant::now() > deadline {
            return program_status;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Exit as the program did: with its code, or of its signal.
fn mirror(status: nix::sys::wait::WaitStatus) -> ExitCode {
    use nix::sys::wait::WaitStatus;
    match status {
        WaitStatus::Exited(_, code) => ExitCode::from(code as u8),
        WaitStatus::Signaled(_, signal, _) => {
            let _ = SigSet::all().thread_unblock();
            // SAFETY: restoring the default action of a signal before raising it.
            unsafe {
                let _ = nix::sys::signal::signal(signal, nix::sys::signal::SigHandler::SigDfl);
            }
            let _ = nix::sys::signal::raise(signal);
            // A signal whose default is not to die (none that kill a program): say so.
            ExitCode::from(128 + signal as u8)
        }
        _ => ExitCode::from(1),
    }
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
        assert_eq!(
            cleared.resolve().unwrap_err().kind(),
            std::io::ErrorKind::NotFound,
            "no PATH: nothing to search"
        );
    }
}
