//! Untrusted apps (code a model wrote) run in a sandbox.
//!
//! Each app instance gets:
//! - **a network namespace of its own** with only a loopback interface, made by the worker
//!   (a thread that `unshare`s and then serves sockets made inside it). Whatever address
//!   the app binds, nothing outside this machine reaches it, and the app reaches nothing:
//!   not the Assay server, not another app, not the internet. The worker reaches the app
//!   through a forwarder: it listens on a loopback port of the host (the app's allocated
//!   port) and carries each connection to the same port inside the namespace over a socket
//!   made there. Two apps that hard-code one port never collide.
//! - **a mount, PID, IPC and UTS namespace** from bubblewrap (`bwrap`, Debian's package,
//!   run by the root worker): `/usr` and the interpreters' prefixes read-only, the app
//!   folder read-only at `/app`, a scratch `/tmp` of its own (a tmpfs of at most
//!   [`SCRATCH_BYTES`], charged to its memory; its only writable place, also `HOME`),
//!   a fresh `/proc` showing only its own processes, a minimal `/dev`,
//!   and a synthetic `/etc/passwd`, `/etc/group` and `/etc/hosts`. Nothing of the worker's
//!   data, spool, keys or home is mounted.
//! - **an unprivileged user of its own** (`APP_UID_BASE + port`): `setpriv` drops to it
//!   inside the sandbox with every capability and the bounding set cleared and
//!   `no_new_privs` set, so `RLIMIT_NPROC` is a per-app process cap and no app can signal,
//!   trace or read another's files.
//! - the limits of [`SandboxLimits`] (address space, processes, CPU seconds, file size),
//!   a wall-time limit enforced by the app pool, and a log capped by the worker.
//!
//! Why bubblewrap and not our own mount code: it is the reviewed, maintained tool for
//! exactly this (Flatpak's), in Debian, and it sets up mounts and `/proc` correctly in
//! all the edge cases. Why the network namespace is ours and not bwrap's
//! `--unshare-net`: the worker must reach into it, and a namespace it made itself is one
//! it holds a descriptor of from the start, whatever PID namespaces lie between.
//!
//! The sandbox needs root (namespaces, `setns`, binding mounts, changing user). A worker
//! that cannot make one refuses to run apps unless it was started with `--no-sandbox`
//! (then apps run as before: their own process group, empty environment, limits; for
//! apps you trust only).

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

/// Each app's user is this plus its port: unused by any distribution's users, below 2³¹.
pub const APP_UID_BASE: u32 = 1_900_000_000;

static DISABLED: AtomicBool = AtomicBool::new(false);

/// Run apps without the sandbox (`--no-sandbox`): for apps you trust only.
pub fn disable() {
    DISABLED.store(true, Ordering::Relaxed);
}

/// Whether apps are to be sandboxed (the default).
pub fn enabled() -> bool {
    !DISABLED.load(Ordering::Relaxed)
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(
        "apps cannot be sandboxed on this machine: {0}. The sandbox needs bubblewrap \
         (`apt-get install bubblewrap`) and a worker running as root; start the worker with \
         --no-sandbox to run apps unconfined (only for apps you trust)"
    )]
    Unavailable(String),
}

/// Whether this machine can sandbox apps, checked once by building a real sandbox and
/// running `true` in it.
pub fn check() -> Result<(), SandboxError> {
    static CHECKED: OnceLock<Result<(), String>> = OnceLock::new();
    CHECKED
        .get_or_init(probe)
        .clone()
        .map_err(SandboxError::Unavailable)
}

/// bubblewrap, `setpriv` and `env`, by absolute path, from the system's own folders only:
/// never from a `PATH` a recipe or a virtualenv could put a program of the same name on.
pub struct Tools {
    pub bwrap: PathBuf,
    pub setpriv: PathBuf,
    pub env: PathBuf,
    /// The `assay` binary, mounted read-only in the sandbox: it installs the system-call
    /// filter ([`crate::seccomp`]) before the app starts.
    pub assay: PathBuf,
}

/// Where the `assay` binary is inside a sandbox.
const ASSAY_INSIDE: &str = "/run/assay";

/// The sandbox's programs, found once.
pub fn tools() -> Result<&'static Tools, SandboxError> {
    static TOOLS: OnceLock<Result<Tools, String>> = OnceLock::new();
    TOOLS
        .get_or_init(|| {
            Ok(Tools {
                bwrap: which(BWRAP).ok_or("`bwrap` is not installed")?,
                setpriv: which(SETPRIV).ok_or("`setpriv` (util-linux) is not installed")?,
                env: which("env").ok_or("`env` (coreutils) is not installed")?,
                assay: crate::supervise::assay_binary().ok_or(
                    "this process is not the `assay` binary, which filters an app's system calls",
                )?,
            })
        })
        .as_ref()
        .map_err(|e| SandboxError::Unavailable(e.clone()))
}

fn probe() -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("the worker does not run as root".into());
    }
    let tools = tools().map_err(|e| match e {
        SandboxError::Unavailable(why) => why,
    })?;
    let bwrap = &tools.bwrap;
    let network = AppNetwork::new().map_err(|e| format!("no network namespace: {e}"))?;
    let scratch = tempfile::tempdir().map_err(|e| e.to_string())?;
    // Readable by the app's user, as an app's folder is (its copy is made by that user).
    std::fs::set_permissions(
        scratch.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .map_err(|e| e.to_string())?;
    let etc = tempfile::tempdir().map_err(|e| e.to_string())?;
    let jail = Jail {
        app_dir: scratch.path(),
        etc: etc.path(),
        uid: APP_UID_BASE,
        read_only: Vec::new(),
        node_modules: None,
    };
    jail.prepare().map_err(|e| e.to_string())?;
    let mut cmd = std::process::Command::new(bwrap);
    let path = [("PATH".to_string(), OsString::from(SANDBOX_PATH))];
    cmd.args(jail.bwrap_args(tools, &path, "", &["true".to_string()]))
        .env_clear()
        .env("PATH", SANDBOX_PATH)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let ns = network.namespace();
    // SAFETY: setns is a plain system call, async-signal-safe.
    unsafe {
        use std::os::fd::AsFd;
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(move || {
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(io::Error::from)
        });
    }
    let out = cmd.output().map_err(|e| format!("cannot run bwrap: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "a test sandbox failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

const BWRAP: &str = "bwrap";
const SETPRIV: &str = "setpriv";
/// What an app's `PATH` ends with, after the interpreters' directories.
pub const SANDBOX_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn which(program: &str) -> Option<PathBuf> {
    std::env::split_paths(SANDBOX_PATH)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// Whether `name` can be an environment variable's name (what `env NAME=VALUE` takes as
/// one, and nothing else).
pub fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Limits every sandboxed app runs under.
#[derive(Debug, Clone, Copy)]
pub struct SandboxLimits {
    /// Processes (and threads) of the app's user at once.
    pub processes: u64,
    /// CPU seconds per process.
    pub cpu_seconds: u64,
    /// Largest file the app may write.
    pub file_size: u64,
    /// Bytes of the app's output kept in its log; the rest is counted and dropped.
    pub log_bytes: u64,
}

impl Default for SandboxLimits {
    fn default() -> Self {
        SandboxLimits {
            processes: 256,
            cpu_seconds: 900,
            file_size: 1 << 30,
            log_bytes: 8 << 20,
        }
    }
}

/// What a sandbox is made of, for one app instance.
pub struct Jail<'a> {
    /// Mounted read-only at `/app`, the app's working directory.
    pub app_dir: &'a Path,
    /// Where the synthetic `/etc` files are written (not visible to the app as a folder).
    pub etc: &'a Path,
    pub uid: u32,
    /// More folders mounted read-only at their own paths (interpreters and their libraries).
    pub read_only: Vec<PathBuf>,
    /// A Node environment's packages (one of `read_only`), linked from the working
    /// folder's `node_modules` (see [`crate::analysis::node_env`]).
    pub node_modules: Option<PathBuf>,
}

impl Jail<'_> {
    /// Write the synthetic `/etc` files.
    pub fn prepare(&self) -> io::Result<()> {
        let uid = self.uid;
        std::fs::write(
            self.etc.join("passwd"),
            format!(
                "root:x:0:0:root:/root:/usr/sbin/nologin\napp:x:{uid}:{uid}:app:/tmp:/bin/sh\n\
                 nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
            ),
        )?;
        std::fs::write(
            self.etc.join("group"),
            format!("root:x:0:\napp:x:{uid}:\nnogroup:x:65534:\n"),
        )?;
        std::fs::write(
            self.etc.join("hosts"),
            "127.0.0.1 localhost app\n::1 localhost ip6-localhost ip6-loopback\n",
        )?;
        Ok(())
    }

    /// bubblewrap's arguments, up to and including the command. bwrap, and `setpriv`
    /// inside it, run as root with an empty environment: nothing of the app's recipe (an
    /// `LD_PRELOAD`, a `PATH`) reaches a privileged process. Only after `setpriv` has
    /// dropped to the app's user does `env -i` set the app's environment (`env`, which
    /// must hold `PATH`) and run the command, found on that `PATH`.
    ///
    /// The app runs in a copy of itself at `/app` (a size-capped tmpfs, filled from the
    /// read-only original at [`APP_SOURCE_INSIDE`] by the app's own user just before its
    /// command), in the folder `workdir` of it: apps write next to their code (a SQLite
    /// file, `instance/`, uploads), and those writes stay in the instance.
    pub fn bwrap_args(
        &self,
        tools: &Tools,
        env: &[(String, OsString)],
        workdir: &str,
        command: &[String],
    ) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        let mut push = |parts: &[&std::ffi::OsStr]| args.extend(parts.iter().map(|p| p.into()));
        push(&[
            "--clearenv".as_ref(),
            "--die-with-parent".as_ref(),
            "--new-session".as_ref(),
            "--unshare-pid".as_ref(),
            "--unshare-ipc".as_ref(),
            "--unshare-uts".as_ref(),
            "--unshare-cgroup-try".as_ref(),
            "--hostname".as_ref(),
            "app".as_ref(),
            "--ro-bind".as_ref(),
            "/usr".as_ref(),
            "/usr".as_ref(),
        ]);
        // Merged-/usr systems link these into /usr; older ones have real folders.
        for top in ["/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32"] {
            match std::fs::read_link(top) {
                Ok(target) => push(&["--symlink".as_ref(), target.as_os_str(), top.as_ref()]),
                Err(_) if Path::new(top).is_dir() => {
                    push(&["--ro-bind".as_ref(), top.as_ref(), top.as_ref()])
                }
                Err(_) => {}
            }
        }
        // As with the interpreters' folders: made readable first, or bwrap makes `/etc`
        // as private as root's.
        push(&[
            "--perms".as_ref(),
            "0755".as_ref(),
            "--dir".as_ref(),
            "/etc".as_ref(),
        ]);
        for etc in ETC_READ_ONLY {
            push(&["--ro-bind-try".as_ref(), etc.as_ref(), etc.as_ref()]);
        }
        for (file, dest) in [
            ("passwd", "/etc/passwd"),
            ("group", "/etc/group"),
            ("hosts", "/etc/hosts"),
        ] {
            push(&[
                "--ro-bind".as_ref(),
                self.etc.join(file).as_os_str(),
                dest.as_ref(),
            ]);
        }
        // The app's own mounts first: an interpreter's folder may live under `/tmp` (a
        // checkout there with its venv), and a later `/tmp` bind would hide it.
        push(&[
            "--proc".as_ref(),
            "/proc".as_ref(),
            "--dev".as_ref(),
            "/dev".as_ref(),
            // Shared memory (Python's multiprocessing wants it), bounded: tmpfs is memory.
            "--perms".as_ref(),
            "1777".as_ref(),
            "--size".as_ref(),
            SHM_BYTES.as_ref(),
            "--tmpfs".as_ref(),
            "/dev/shm".as_ref(),
            // Made first: a folder bwrap makes for a mount point is 0700.
            "--perms".as_ref(),
            "0755".as_ref(),
            "--dir".as_ref(),
            "/run".as_ref(),
            "--ro-bind".as_ref(),
            self.app_dir.as_os_str(),
            APP_SOURCE_INSIDE.as_ref(),
            "--perms".as_ref(),
            "1777".as_ref(),
            "--size".as_ref(),
            SCRATCH_SIZE.as_ref(),
            "--tmpfs".as_ref(),
            "/app".as_ref(),
            // In memory, not on the worker's disk: an app that writes without end fills
            // its own tmpfs (ENOSPC), and its memory limit counts it.
            "--perms".as_ref(),
            "1777".as_ref(),
            "--size".as_ref(),
            SCRATCH_SIZE.as_ref(),
            "--tmpfs".as_ref(),
            "/tmp".as_ref(),
            "--dir".as_ref(),
            "/var".as_ref(),
            "--symlink".as_ref(),
            "../tmp".as_ref(),
            "/var/tmp".as_ref(),
        ]);
        // bwrap makes the folders above a mount point as private as their originals
        // (`/root` is 0700): made first, world-traversable, the app's user can reach in.
        let mut made: Vec<PathBuf> = Vec::new();
        for dir in &self.read_only {
            for ancestor in dir
                .ancestors()
                .skip(1)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
            {
                if ancestor == Path::new("/") || made.iter().any(|m| m == ancestor) {
                    continue;
                }
                made.push(ancestor.to_path_buf());
                push(&[
                    "--perms".as_ref(),
                    "0755".as_ref(),
                    "--dir".as_ref(),
                    ancestor.as_os_str(),
                ]);
            }
            push(&["--ro-bind".as_ref(), dir.as_os_str(), dir.as_os_str()]);
        }
        push(&[
            "--ro-bind".as_ref(),
            tools.assay.as_os_str(),
            ASSAY_INSIDE.as_ref(),
            "--chdir".as_ref(),
            "/app".as_ref(),
            "--".as_ref(),
            tools.setpriv.as_os_str(),
        ]);
        let uid = self.uid.to_string();
        args.extend(
            [
                format!("--reuid={uid}"),
                format!("--regid={uid}"),
                "--clear-groups".into(),
                "--inh-caps=-all".into(),
                "--bounding-set=-all".into(),
                "--no-new-privs".into(),
                "--".into(),
                ASSAY_INSIDE.into(),
                crate::seccomp::SUBCOMMAND.into(),
                "--".into(),
            ]
            .into_iter()
            .map(OsString::from),
        );
        args.push(tools.env.clone().into());
        args.push("-i".into());
        for (name, value) in env {
            let mut pair = OsString::from(name);
            pair.push("=");
            pair.push(value);
            args.push(pair);
        }
        args.extend(
            [
                "/bin/sh",
                "-c",
                COPY_THEN_RUN,
                "assay-app",
                &format!("/app/{workdir}"),
            ]
            .iter()
            .map(OsString::from),
        );
        args.push(
            self.node_modules
                .as_ref()
                .map(|p| p.as_os_str().to_owned())
                .unwrap_or_default(),
        );
        args.extend(command.iter().map(OsString::from));
        args
    }
}

/// Where the app's read-only original is mounted inside, for its copy at `/app`.
pub const APP_SOURCE_INSIDE: &str = "/run/app-source";
/// Run by the app's user, under the filter: fill `/app` from the original, enter the
/// working folder, link its `node_modules` to the packages in `$2` (when not empty),
/// become the app's command. `$1` is the folder, the rest the command.
const COPY_THEN_RUN: &str = "cp -R /run/app-source/. /app/ && cd -- \"$1\" && \
    if [ -n \"$2\" ]; then rm -rf node_modules && mkdir node_modules && \
    for f in \"$2\"/* \"$2\"/.[!.]*; do if [ -e \"$f\" ]; then ln -s \"$f\" node_modules/ || exit 1; fi; done; fi && \
    shift 2 && exec \"$@\"";

/// The size of an app's `/dev/shm`.
const SHM_BYTES: &str = "67108864";
/// The most an app may write to its `/tmp` (its database, uploads, caches).
pub const SCRATCH_BYTES: u64 = 512 << 20;
const SCRATCH_SIZE: &str = "536870912";

/// Read-only from the host's `/etc`: what programs need to load libraries, verify TLS,
/// know the time zone and MIME types. Never `shadow`, never the host's `hosts`.
const ETC_READ_ONLY: &[&str] = &[
    "/etc/alternatives",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/localtime",
    "/etc/timezone",
    "/etc/mime.types",
    "/etc/protocols",
    "/etc/services",
    "/etc/nsswitch.conf",
];

/// The folders to mount read-only so that the interpreters on `dirs` (e.g. a virtualenv's
/// `bin`) work inside: each folder's parent (the environment's root), and the prefix of
/// every interpreter it links to elsewhere (a pyenv or uv Python). Folders under `/usr`
/// are there already.
pub fn interpreter_mounts(dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut mounts: Vec<PathBuf> = Vec::new();
    let mut add = |dir: PathBuf| {
        if dir.starts_with("/usr") || dir == Path::new("/") {
            return;
        }
        if !mounts.iter().any(|m| dir.starts_with(m)) {
            mounts.retain(|m| !m.starts_with(&dir));
            mounts.push(dir);
        }
    };
    for dir in dirs {
        let Ok(dir) = dir.canonicalize() else {
            continue;
        };
        // A virtualenv's root holds its packages; any other folder is mounted alone.
        match dir.parent() {
            Some(root) if root.join("pyvenv.cfg").is_file() => add(root.to_path_buf()),
            _ => add(dir.clone()),
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let is_link = entry.file_type().is_ok_and(|t| t.is_symlink());
            let Some(target) = is_link.then(|| entry.path().canonicalize().ok()).flatten() else {
                continue;
            };
            let Some(bin) = target.parent() else { continue };
            // `PREFIX/bin/python3.11`: a Python's prefix holds its standard library; the
            // prefix of anything else (a home's `.cargo`) is not the app's to read.
            match bin.parent() {
                Some(prefix) if is_python_prefix(prefix) => add(prefix.to_path_buf()),
                _ => add(bin.to_path_buf()),
            }
        }
    }
    mounts.retain(|m| !too_wide(m));
    mounts
}

fn is_python_prefix(prefix: &Path) -> bool {
    std::fs::read_dir(prefix.join("lib")).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("python"))
    })
}

/// Folders never mounted whole, whatever a `PATH` points into: the root, homes, and the
/// machine's temporary folders (they hold other apps' scratch).
fn too_wide(dir: &Path) -> bool {
    dir == Path::new("/")
        || dir == Path::new("/tmp")
        || dir == Path::new("/var/tmp")
        || dir == Path::new("/root")
        || dir == Path::new("/home")
        || dir.parent() == Some(Path::new("/home"))
        || std::env::var_os("HOME").is_some_and(|home| dir == Path::new(&home))
}

/// A network namespace with only a loopback interface, up. A thread of the worker lives
/// in it and makes sockets there on request; the namespace ends when this is dropped and
/// the last process in it has exited.
pub struct AppNetwork {
    namespace: Arc<OwnedFd>,
    requests: std::sync::mpsc::Sender<SocketRequest>,
}

/// What the namespace's thread does on request: make a socket there, or say which TCP
/// ports are listened on there.
enum SocketRequest {
    Socket {
        v6: bool,
        reply: tokio::sync::oneshot::Sender<io::Result<OwnedFd>>,
    },
    Listening {
        reply: tokio::sync::oneshot::Sender<Vec<u16>>,
    },
}

impl AppNetwork {
    pub fn new() -> io::Result<AppNetwork> {
        let (requests, incoming) = std::sync::mpsc::channel::<SocketRequest>();
        let (ready, made) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("app-network".into())
            .spawn(move || {
                let setup = (|| -> io::Result<OwnedFd> {
                    // Only this thread moves: the rest of the worker stays where it is.
                    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)?;
                    loopback_up()?;
                    let fd = nix::fcntl::open(
                        "/proc/thread-self/ns/net",
                        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
                        nix::sys::stat::Mode::empty(),
                    )?;
                    // SAFETY: a descriptor just opened, owned by no one else.
                    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
                })();
                let ok = setup.is_ok();
                let _ = ready.send(setup);
                if !ok {
                    return;
                }
                for request in incoming {
                    match request {
                        SocketRequest::Socket { v6, reply } => {
                            let _ = reply.send(tcp_socket(v6));
                        }
                        SocketRequest::Listening { reply } => {
                            let _ = reply.send(listening_ports());
                        }
                    }
                }
            })?;
        let namespace = made
            .recv()
            .map_err(|_| io::Error::other("the namespace thread died"))??;
        Ok(AppNetwork {
            namespace: Arc::new(namespace),
            requests,
        })
    }

    /// The namespace, for [`crate::supervise::SupervisedCommand::network_namespace`].
    pub fn namespace(&self) -> Arc<OwnedFd> {
        self.namespace.clone()
    }

    /// A connection to `port` on the namespace's loopback (IPv4, else IPv6).
    pub async fn connect(&self, port: u16) -> io::Result<tokio::net::TcpStream> {
        let mut last = io::Error::from(io::ErrorKind::ConnectionRefused);
        for v6 in [false, true] {
            let (reply, socket) = tokio::sync::oneshot::channel();
            self.requests
                .send(SocketRequest::Socket { v6, reply })
                .map_err(|_| io::Error::other("the namespace thread is gone"))?;
            let fd = socket
                .await
                .map_err(|_| io::Error::other("the namespace thread is gone"))??;
            let socket = tokio::net::TcpSocket::from_std_stream(std::net::TcpStream::from(fd));
            let addr: std::net::SocketAddr = if v6 {
                (std::net::Ipv6Addr::LOCALHOST, port).into()
            } else {
                (std::net::Ipv4Addr::LOCALHOST, port).into()
            };
            match socket.connect(addr).await {
                Ok(stream) => return Ok(stream),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The TCP ports something listens on inside the namespace, lowest first.
    pub async fn listening(&self) -> Vec<u16> {
        let (reply, ports) = tokio::sync::oneshot::channel();
        if self
            .requests
            .send(SocketRequest::Listening { reply })
            .is_err()
        {
            return Vec::new();
        }
        ports.await.unwrap_or_default()
    }
}

/// The listening TCP ports of the calling thread's network namespace, from
/// `/proc/thread-self/net/tcp{,6}` (per namespace: the thread's own).
fn listening_ports() -> Vec<u16> {
    let mut ports: Vec<u16> = ["tcp", "tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(format!("/proc/thread-self/net/{f}")).ok())
        .flat_map(|table| parse_listening(&table))
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// Rows of a `/proc/net/tcp` table in state `0A` (LISTEN): their local ports.
fn parse_listening(table: &str) -> Vec<u16> {
    table
        .lines()
        .skip(1)
        .filter_map(|row| {
            let mut fields = row.split_whitespace();
            let local = fields.nth(1)?;
            let state = fields.nth(1)?;
            (state == "0A").then_some(())?;
            u16::from_str_radix(local.rsplit(':').next()?, 16).ok()
        })
        .collect()
}

/// A non-blocking TCP socket made in the calling thread's network namespace.
fn tcp_socket(v6: bool) -> io::Result<OwnedFd> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    let family = if v6 {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    };
    Ok(socket(
        family,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?)
}

/// `ip link set lo up`, in the calling thread's network namespace.
fn loopback_up() -> io::Result<()> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is plain data; the ioctls read and write only it.
    unsafe {
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (dst, src) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) < 0 {
            return Err(io::Error::last_os_error());
        }
        ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Limits on the whole app, not on each of its processes: a cgroup of its own in the memory,
/// pids and (v1) cpu controllers (cgroup v1 hierarchies, as on this machine, or v2 where those
/// controllers are enabled for children). Without either, the per-process limits are what
/// holds, and the worker says so once.
pub struct AppCgroup {
    dirs: Vec<PathBuf>,
    procs: Vec<std::ffi::CString>,
}

impl AppCgroup {
    /// A cgroup for one app of this worker, named after the worker's pid (so that a later
    /// worker can tell a dead one's leftovers, [`sweep_cgroups`]) and `tag`.
    pub fn for_app(tag: &str, memory: u64, processes: u64) -> AppCgroup {
        let name = format!("{CGROUP_PREFIX}{}-{tag}", std::process::id());
        AppCgroup::create(&name, memory, processes)
    }

    /// A cgroup named `name` under this process's own, with at most `memory` bytes
    /// (swap included) and `processes` tasks.
    pub fn create(name: &str, memory: u64, processes: u64) -> AppCgroup {
        let mut made = AppCgroup {
            dirs: Vec::new(),
            procs: Vec::new(),
        };
        for parent in own_cgroup_parents() {
            let limits: &[(&str, u64)] = match parent.1 {
                "unified" => &[
                    ("memory.max", memory),
                    ("memory.swap.max", 0),
                    ("pids.max", processes),
                ],
                "memory" => &[
                    ("memory.limit_in_bytes", memory),
                    ("memory.memsw.limit_in_bytes", memory),
                ],
                // One core's worth of time per period, however many processes it runs.
                "cpu" => &[
                    ("cpu.cfs_period_us", CPU_PERIOD_US),
                    ("cpu.cfs_quota_us", CPU_PERIOD_US * APP_CPUS),
                ],
                _ => &[("pids.max", processes)],
            };
            made.add(&parent.0.join(name), limits);
        }
        if made.dirs.is_empty() {
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                tracing::warn!(
                    "no cgroup for apps here (memory and pids controllers not available): \
                     their limits hold per process, not per app"
                )
            });
        }
        made
    }

    fn add(&mut self, dir: &Path, limits: &[(&str, u64)]) {
        if std::fs::create_dir(dir).is_err() {
            return;
        }
        // The memory limit must hold before swap's (v1 refuses memsw below it), and a limit
        // a kernel lacks (no swap accounting) is no reason to go without the others.
        let set: Vec<bool> = limits
            .iter()
            .map(|(file, value)| std::fs::write(dir.join(file), value.to_string()).is_ok())
            .collect();
        if !set.first().copied().unwrap_or(false) {
            let _ = std::fs::remove_dir(dir);
            return;
        }
        if let Ok(procs) =
            std::ffi::CString::new(dir.join("cgroup.procs").as_os_str().as_encoded_bytes())
        {
            self.procs.push(procs);
            self.dirs.push(dir.to_path_buf());
        }
    }

    /// The `cgroup.procs` files a process joins between fork and exec.
    pub fn procs(&self) -> Vec<std::ffi::CString> {
        self.procs.clone()
    }

    pub fn is_empty(&self) -> bool {
        self.dirs.is_empty()
    }
}

impl Drop for AppCgroup {
    fn drop(&mut self) {
        // The app's processes are gone by now (the namespace ended with its init); the
        // kernel may take a moment to let go of the last one.
        for dir in &self.dirs {
            for _ in 0..50 {
                if std::fs::remove_dir(dir).is_ok() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }
}

const CGROUP_PREFIX: &str = "assay-app-";
/// The cores an app's processes may use together (cgroup v1 `cpu`).
pub const APP_CPUS: u64 = 1;
const CPU_PERIOD_US: u64 = 100_000;

/// This process's cgroup in each hierarchy that can limit apps: (folder, which): cgroup
/// v2 where memory and pids are enabled for children, else v1's memory and pids.
fn own_cgroup_parents() -> Vec<(PathBuf, &'static str)> {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let root = Path::new("/sys/fs/cgroup");
    if root.join("cgroup.controllers").is_file() {
        let path = own
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .unwrap_or("/");
        let parent = root.join(path.trim_start_matches('/'));
        let enabled =
            std::fs::read_to_string(parent.join("cgroup.subtree_control")).unwrap_or_default();
        return if enabled.contains("memory") && enabled.contains("pids") {
            vec![(parent, "unified")]
        } else {
            Vec::new()
        };
    }
    ["memory", "pids", "cpu"]
        .into_iter()
        .filter_map(|controller| {
            let path = own.lines().find_map(|l| {
                let mut parts = l.splitn(3, ':');
                let (_, list, path) = (parts.next()?, parts.next()?, parts.next()?);
                list.split(',').any(|c| c == controller).then_some(path)
            })?;
            let parent = root.join(controller).join(path.trim_start_matches('/'));
            parent.is_dir().then_some((parent, controller))
        })
        .collect()
}

/// Remove the app cgroups of workers that no longer run (killed before they could): run
/// at a worker's start. A cgroup still holding a process cannot be removed, so a live
/// app's never goes. Returns how many went.
pub fn sweep_cgroups() -> usize {
    let mut removed = 0;
    for (parent, _) in own_cgroup_parents() {
        let Ok(entries) = std::fs::read_dir(&parent) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(pid) = name
                .strip_prefix(CGROUP_PREFIX)
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<i32>().ok())
            else {
                continue;
            };
            let alive =
                pid == std::process::id() as i32 || Path::new(&format!("/proc/{pid}")).exists();
            if !alive && std::fs::remove_dir(entry.path()).is_ok() {
                removed += 1;
            }
        }
    }
    removed
}

/// Carries connections to a host loopback port into an app's namespace, until dropped.
pub struct Forwarder {
    task: tokio::task::JoinHandle<()>,
}

impl Forwarder {
    /// Listen on `listener` (the host side) and connect each accepted connection to
    /// `port` inside `network`. A connection the app refuses is closed at once, which
    /// the caller sees as the app not answering yet.
    ///
    /// An app that ignores the port it was given and listens on one of its own (a
    /// hard-coded 5000, say) is found: when `port` refuses, the connection goes to the
    /// port the app does listen on (the lowest, if several), and that one is kept.
    pub fn start(
        listener: std::net::TcpListener,
        network: Arc<AppNetwork>,
        port: u16,
    ) -> io::Result<Forwarder> {
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let target = Arc::new(std::sync::atomic::AtomicU16::new(port));
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((mut outside, _)) = accepted else { continue };
                        let network = network.clone();
                        let target = target.clone();
                        connections.spawn(async move {
                            let _ = outside.set_nodelay(true);
                            if let Ok(mut inside) = connect_to_app(&network, &target).await {
                                let _ = inside.set_nodelay(true);
                                let _ = tokio::io::copy_bidirectional(&mut outside, &mut inside).await;
                            }
                        });
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        Ok(Forwarder { task })
    }
}

async fn connect_to_app(
    network: &AppNetwork,
    target: &std::sync::atomic::AtomicU16,
) -> io::Result<tokio::net::TcpStream> {
    let port = target.load(Ordering::Relaxed);
    let refused = match network.connect(port).await {
        Ok(stream) => return Ok(stream),
        Err(e) => e,
    };
    for other in network.listening().await {
        if other == port {
            continue;
        }
        if let Ok(stream) = network.connect(other).await {
            target.store(other, Ordering::Relaxed);
            return Ok(stream);
        }
    }
    Err(refused)
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        // Its connections are in a JoinSet the task owns: they end with it.
        self.task.abort();
    }
}

/// Copy an app's output into its log, keeping the first `cap` bytes and a line saying how
/// much was dropped. Reads to the end whatever the cap (an app must never block on a full
/// pipe); runs on a thread of its own, which ends when the app's last process has.
pub fn capped_log(output: OwnedFd, log: std::fs::File, cap: u64) -> io::Result<()> {
    use std::io::{Read, Write};
    std::thread::Builder::new()
        .name("app-log".into())
        .spawn(move || {
            let mut output = std::fs::File::from(output);
            let mut log = log;
            let mut kept: u64 = 0;
            let mut dropped: u64 = 0;
            let mut noted = false;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match output.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                };
                let room = cap.saturating_sub(kept).min(n as u64) as usize;
                if room > 0 && log.write_all(&buf[..room]).is_err() {
                    break;
                }
                kept += room as u64;
                dropped += (n - room) as u64;
                if room < n && !noted {
                    noted = true;
                    let _ = writeln!(
                        log,
                        "\n[assay: the log is capped at {cap} bytes; the rest is dropped]"
                    );
                }
            }
            if dropped > 0 {
                let _ = writeln!(log, "[assay: {dropped} bytes of output dropped]");
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_ports_are_read_from_the_tcp_table() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 00000000:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0\n\
   1: 0100007F:1389 0100007F:D2C4 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1\n";
        assert_eq!(parse_listening(table), vec![8000]);
    }

    #[test]
    fn interpreter_prefixes_are_mounted_once_and_usr_never() {
        let root = tempfile::tempdir().unwrap();
        let venv = root.path().join("venv");
        let python = root.path().join("pythons/3.11");
        std::fs::create_dir_all(venv.join("bin")).unwrap();
        std::fs::write(venv.join("pyvenv.cfg"), "home = x\n").unwrap();
        std::fs::create_dir_all(python.join("bin")).unwrap();
        std::fs::create_dir_all(python.join("lib/python3.11")).unwrap();
        std::fs::write(python.join("bin/python3.11"), "").unwrap();
        // A console script linked from a home's tools: only its own folder, not the home.
        let home = root.path().join("home/.cargo");
        std::fs::create_dir_all(home.join("bin")).unwrap();
        std::fs::write(home.join("credentials.toml"), "token = 1").unwrap();
        std::fs::write(home.join("bin/ruff"), "").unwrap();
        std::os::unix::fs::symlink(home.join("bin/ruff"), venv.join("bin/ruff")).unwrap();
        std::os::unix::fs::symlink(python.join("bin/python3.11"), venv.join("bin/python")).unwrap();
        std::os::unix::fs::symlink("/usr/bin/env", venv.join("bin/env")).unwrap();
        let mounts = interpreter_mounts(&[venv.join("bin"), venv.join("bin")]);
        let venv = venv.canonicalize().unwrap();
        let python = python.canonicalize().unwrap();
        let cargo_bin = home.join("bin").canonicalize().unwrap();
        assert_eq!(mounts.len(), 3, "{mounts:?}");
        assert!(
            mounts.contains(&venv) && mounts.contains(&python) && mounts.contains(&cargo_bin),
            "{mounts:?}"
        );
    }

    #[test]
    fn the_jail_drops_to_the_apps_user_and_mounts_the_app_read_only() {
        let dir = tempfile::tempdir().unwrap();
        let jail = Jail {
            app_dir: Path::new("/srv/app"),
            etc: dir.path(),
            uid: APP_UID_BASE + 20_001,
            read_only: vec![PathBuf::from("/opt/venv")],
            node_modules: None,
        };
        let tools = Tools {
            bwrap: "/usr/bin/bwrap".into(),
            setpriv: "/usr/bin/setpriv".into(),
            env: "/usr/bin/env".into(),
            assay: "/opt/assay/bin/assay".into(),
        };
        let env = [
            ("PATH".to_string(), OsString::from("/opt/venv/bin:/usr/bin")),
            ("LD_PRELOAD".to_string(), OsString::from("/app/evil.so")),
        ];
        let args: Vec<String> = jail
            .bwrap_args(
                &tools,
                &env,
                "backend",
                &["python3".into(), "app.py".into()],
            )
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        let joined = args.join(" ");
        assert!(
            joined.contains(
                "--ro-bind /srv/app /run/app-source --perms 1777 --size 536870912 --tmpfs /app"
            ),
            "{joined}"
        );
        assert!(
            joined.contains("--perms 1777 --size 536870912 --tmpfs /tmp"),
            "{joined}"
        );
        assert_eq!(SCRATCH_SIZE.parse::<u64>().unwrap(), SCRATCH_BYTES);
        assert!(joined.contains("--ro-bind /opt/venv /opt/venv"), "{joined}");
        assert!(
            joined.find("--tmpfs /tmp").unwrap() < joined.find("/opt/venv /opt/venv").unwrap(),
            "an interpreter under /tmp must be mounted after /tmp, not hidden by it: {joined}"
        );
        assert!(joined.contains("--unshare-pid"), "{joined}");
        assert!(
            joined.contains("--ro-bind /opt/assay/bin/assay /run/assay"),
            "{joined}"
        );
        assert!(!joined.contains("--share-net"), "{joined}");
        assert!(
            joined.starts_with("--clearenv "),
            "bwrap and setpriv get no environment: {joined}"
        );
        assert!(!joined.contains("--setenv"), "{joined}");
        assert!(
            joined.ends_with(&format!(
                "/usr/bin/setpriv --reuid={0} --regid={0} --clear-groups --inh-caps=-all --bounding-set=-all --no-new-privs -- /run/assay __seccomp -- /usr/bin/env -i PATH=/opt/venv/bin:/usr/bin LD_PRELOAD=/app/evil.so /bin/sh -c {1} assay-app /app/backend  python3 app.py",
                APP_UID_BASE + 20_001,
                COPY_THEN_RUN
            )),
            "{joined}"
        );
    }

    #[test]
    fn a_log_keeps_its_cap_and_says_what_it_dropped() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.log");
        let (read, write) = nix::unistd::pipe().unwrap();
        capped_log(read, std::fs::File::create(&path).unwrap(), 1000).unwrap();
        let mut writer = std::fs::File::from(write);
        for _ in 0..100 {
            writer.write_all(&[b'x'; 100]).unwrap();
        }
        drop(writer);
        let mut text = String::new();
        for _ in 0..200 {
            text = std::fs::read_to_string(&path).unwrap();
            if text.contains("dropped]") {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(text.bytes().filter(|b| *b == b'x').count(), 1000, "{text}");
        assert!(text.contains("capped at 1000 bytes"), "{text}");
        assert!(text.contains("9000 bytes of output dropped"), "{text}");
    }
}
