//! Support for driving the real mail programs: a guard that kills everything a test started, a
//! CA made per run with openssl, TLS in front of the plain stand-in relay with socat, and the
//! unprivileged user the mail programs run as.

use std::ffi::CString;
use std::fs::{self, File};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

/// The full path of a program the scenario drives; panics (never skips) when it is missing.
pub fn require(program: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path).chain([PathBuf::from("/usr/sbin")]) {
        let candidate = dir.join(program);
        if candidate
            .metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        {
            return candidate;
        }
    }
    panic!(
        "`{program}` is not installed; run `sudo .ci/setup` (this scenario drives the real program)"
    );
}

/// A port on 127.0.0.1 that was free a moment ago, for a server that cannot be told to pick one.
/// Never the same one twice in a test process: the kernel may hand a port it just freed to the
/// next caller, and two servers started side by side would then race for it, one of them
/// listening where the test expects the other.
/// A command that runs a program (its path and arguments to follow) under chroot in `root`, as
/// root, with /proc, /dev and /tmp bound in a mount namespace of its own, so no mount outlives
/// it; unshare and sh exec, so its pid is the program's. `who` names the tests that need it.
pub fn in_root(root: &Path, who: &str) -> Command {
    // SAFETY: geteuid(2) cannot fail.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "{who} run it under chroot in {}: run them as root",
        root.display()
    );
    let mut cmd = Command::new(require("unshare"));
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(
            "set -e; r=$1; shift; mount --rbind /proc \"$r/proc\"; \
             mount --rbind /dev \"$r/dev\"; mount --bind /tmp \"$r/tmp\"; \
             exec chroot \"$r\" \"$@\"",
        )
        .arg("sh")
        .arg(root);
    cmd
}

/// A port for a server a test starts, free when asked. Below the kernel's ephemeral range
/// (32768 and up): a port that bind(0) handed out and this gave back could be handed out again
/// at once, to a relay of a case running beside, and the server would then find it taken while
/// `wait_listening` found the relay listening. Each process starts at a place of its own.
pub fn free_port() -> u16 {
    const FIRST: u16 = 10_000;
    const COUNT: u32 = 22_000;
    static NEXT: std::sync::Mutex<Option<u32>> = std::sync::Mutex::new(None);
    let mut next = NEXT.lock().unwrap();
    let n = next.get_or_insert_with(|| std::process::id().wrapping_mul(7_919) % COUNT);
    loop {
        let port = FIRST + (*n % COUNT) as u16;
        *n = n.wrapping_add(1);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Polls `cond` every 5 ms until it holds, for at most `limit`: how long it took, or `None`.
/// The one polling loop of the tests: they never sleep for a fixed time.
pub fn poll(limit: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if cond() {
            return Some(start.elapsed());
        }
        if start.elapsed() >= limit {
            return None;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// [`poll`], panicking with `what` after `limit`. Returns how long it took.
pub fn wait_for(limit: Duration, what: &str, cond: impl FnMut() -> bool) -> Duration {
    poll(limit, cond).unwrap_or_else(|| panic!("{what} did not happen within {limit:?}"))
}

/// Waits until `port` accepts connections, or panics with `why()` once `daemon` died or 10 s passed.
pub fn wait_listening(port: u16, daemon: &mut Daemon, why: impl Fn() -> String) {
    let limit = Duration::from_secs(10);
    let up = poll(limit, || {
        if let Some(status) = daemon.exited() {
            panic!(
                "{} exited ({status}) before listening on {port}: {}",
                daemon.name,
                why()
            );
        }
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    assert!(
        up.is_some(),
        "{} not listening on {port} after {limit:?}: {}",
        daemon.name,
        why()
    );
}

/// What becomes of the processes a program leaves behind in its group once it has ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Leftovers {
    /// Killed with it: nothing a test started outlives the test.
    Kill,
    /// Left alone, as an MTA does: procmail does not wait for a pipe recipe without `w`, so
    /// the run it started may still be going.
    Keep,
}

/// A program started by a test, in a process group of its own: dropping it (also when the test
/// panics) stops the whole group, children included, while the program runs; once it has ended,
/// as its [`Leftovers`] say.
pub struct Daemon {
    pub name: String,
    child: Child,
    status: Option<ExitStatus>,
    leftovers: Leftovers,
}

impl Daemon {
    pub fn spawn(name: &str, cmd: Command) -> Daemon {
        Daemon::spawn_with(name, cmd, Stdio::null(), Leftovers::Kill)
    }

    pub fn spawn_with(name: &str, mut cmd: Command, stdin: Stdio, leftovers: Leftovers) -> Daemon {
        cmd.process_group(0).stdin(stdin);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        Daemon {
            name: name.to_string(),
            child,
            status: None,
            leftovers,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, if the program has ended.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().unwrap();
        }
        self.status
    }

    /// Waits up to `limit` for the program to end by itself; kills the group if it does not.
    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        if poll(limit, || self.exited().is_some()).is_none() {
            self.stop();
            panic!("{} still running after {limit:?}; killed it", self.name);
        }
        self.stop();
        self.status.unwrap()
    }

    /// Stops the whole group now: SIGTERM, then SIGKILL to whatever is left.
    pub fn stop(&mut self) {
        let pid = self.pid();
        if self.exited().is_none() {
            signal_group(pid, libc::SIGTERM);
            poll(Duration::from_secs(3), || self.exited().is_some());
        } else if self.leftovers == Leftovers::Keep {
            return;
        }
        // The leader is gone or will be; anything it left behind in its group goes too.
        signal_group(pid, libc::SIGKILL);
        if self.status.is_none() {
            self.status = self.child.wait().ok();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

fn signal_group(pgid: u32, signal: libc::c_int) {
    // ESRCH (group already gone) is the normal case.
    unsafe { libc::kill(-(pgid as libc::pid_t), signal) };
}

/// What a one-shot program did.
#[derive(Debug)]
pub struct Ran {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// Why writing the input failed, if it did.
    pub write_error: Option<String>,
}

impl Ran {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

/// Runs a program to its end (at most `limit`), stdout and stderr captured through files in
/// `dir` so a chatty program can never block on a full pipe.
pub fn run(name: &str, cmd: Command, dir: &Path, limit: Duration) -> Ran {
    run_with_input(name, cmd, dir, limit, None)
}

/// [`run`], with `input` written to the program's stdin through a pipe, as an MTA does.
pub fn run_with_input(
    name: &str,
    cmd: Command,
    dir: &Path,
    limit: Duration,
    input: Option<Vec<u8>>,
) -> Ran {
    run_leaving(name, cmd, dir, limit, input, Leftovers::Kill)
}

/// Hands `input` to a mail program as an MTA does, through a pipe, and waits for the program
/// (at most 20 s), leaving alone whatever it left running.
pub fn hand_over(name: &str, cmd: Command, dir: &Path, input: &[u8]) -> Ran {
    let limit = Duration::from_secs(20);
    run_leaving(name, cmd, dir, limit, Some(input.to_vec()), Leftovers::Keep)
}

fn run_leaving(
    name: &str,
    mut cmd: Command,
    dir: &Path,
    limit: Duration,
    input: Option<Vec<u8>>,
    leftovers: Leftovers,
) -> Ran {
    let out = dir.join(format!("{name}.stdout"));
    let err = dir.join(format!("{name}.stderr"));
    cmd.stdout(File::create(&out).unwrap())
        .stderr(File::create(&err).unwrap());
    let stdin = if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    };
    let mut daemon = Daemon::spawn_with(name, cmd, stdin, leftovers);
    let writer = input.map(|bytes| {
        let mut pipe = daemon.child.stdin.take().unwrap();
        // A program that stops reading early makes this fail with EPIPE: the caller sees that
        // in the Ran it gets back.
        thread::spawn(move || std::io::Write::write_all(&mut pipe, &bytes).err())
    });
    let status = daemon.wait(limit);
    let write_error = writer.and_then(|w| w.join().unwrap());
    Ran {
        status,
        stdout: fs::read_to_string(&out).unwrap_or_default(),
        stderr: fs::read_to_string(&err).unwrap_or_default(),
        write_error: write_error.map(|e| e.to_string()),
    }
}

/// The account the mail programs run as. getmail refuses to run a command as root, and a real
/// setup runs them as the mailbox owner, so under root the tests use `nobody`.
#[derive(Clone, Copy, Debug)]
pub struct MailUser {
    pub uid: u32,
    pub gid: u32,
    switch: bool,
}

impl MailUser {
    pub fn get() -> MailUser {
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        if uid != 0 {
            return MailUser {
                uid,
                gid,
                switch: false,
            };
        }
        let name = CString::new("nobody").unwrap();
        let pw = unsafe { libc::getpwnam(name.as_ptr()) };
        assert!(
            !pw.is_null(),
            "no user `nobody` to run the mail programs as"
        );
        let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
        MailUser {
            uid,
            gid,
            switch: true,
        }
    }

    /// The user running the tests, for the programs that must run as the caller.
    pub fn current() -> MailUser {
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        MailUser {
            uid,
            gid,
            switch: false,
        }
    }

    /// Makes `cmd` run as this user.
    pub fn apply(&self, cmd: &mut Command) {
        if self.switch {
            cmd.uid(self.uid).gid(self.gid);
        }
    }

    /// Gives `path` and everything below it to this user.
    /// Not the binary under test, which homes link to (`mailhome::install_binary`): its inode
    /// is the build's and stays as it is.
    pub fn own(&self, path: &Path) {
        if !self.switch || is_the_binary(path) {
            return;
        }
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid)).unwrap();
        if path.is_dir() && !path.is_symlink() {
            for entry in fs::read_dir(path).unwrap() {
                self.own(&entry.unwrap().path());
            }
        }
    }

    pub fn name(&self) -> String {
        let pw = unsafe { libc::getpwuid(self.uid) };
        assert!(!pw.is_null(), "uid {} has no name", self.uid);
        unsafe { std::ffi::CStr::from_ptr((*pw).pw_name) }
            .to_string_lossy()
            .into_owned()
    }

    pub fn is_root_switch(&self) -> bool {
        self.switch
    }
}

/// Whether `path` is (or leads to) the binary under test.
fn is_the_binary(path: &Path) -> bool {
    static BINARY: OnceLock<(u64, u64)> = OnceLock::new();
    let id = |m: fs::Metadata| (m.dev(), m.ino());
    let binary = *BINARY.get_or_init(|| id(fs::metadata(super::bin()).unwrap()));
    fs::metadata(path).is_ok_and(|m| id(m) == binary)
}

/// A CA and a server certificate for 127.0.0.1 and localhost, made with openssl for this run.
pub struct Ca {
    pub cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

impl Ca {
    pub fn new(dir: &Path) -> Ca {
        let openssl = require("openssl");
        fs::create_dir_all(dir).unwrap();
        let p = |name: &str| dir.join(name).to_str().unwrap().to_string();
        let ext = dir.join("server.ext");
        fs::write(
            &ext,
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let steps: [Vec<String>; 3] = [
            [
                &["req", "-x509"],
                &ec[..],
                &[
                    "-keyout",
                    &p("ca.key"),
                    "-out",
                    &p("ca.crt"),
                    "-days",
                    "2",
                    "-subj",
                    "/CN=deltapush-mda test CA",
                ],
            ]
            .concat()
            .iter()
            .map(|s| s.to_string())
            .collect(),
            [
                &["req"],
                &ec[..],
                &[
                    "-keyout",
                    &p("server.key"),
                    "-out",
                    &p("server.csr"),
                    "-subj",
                    "/CN=localhost",
                ],
            ]
            .concat()
            .iter()
            .map(|s| s.to_string())
            .collect(),
            [
                "x509",
                "-req",
                "-in",
                &p("server.csr"),
                "-CA",
                &p("ca.crt"),
                "-CAkey",
                &p("ca.key"),
                "-CAcreateserial",
                "-out",
                &p("server.crt"),
                "-days",
                "2",
                "-extfile",
                &p("server.ext"),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        ];
        for args in steps {
            let out = Command::new(&openssl).args(&args).output().unwrap();
            assert!(
                out.status.success(),
                "openssl {} failed: {}",
                args[0],
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // The servers read the key as other users (dovecot's, socat's).
        for f in ["ca.crt", "server.crt", "server.key"] {
            fs::set_permissions(dir.join(f), fs::Permissions::from_mode(0o644)).unwrap();
        }
        Ca {
            cert: dir.join("ca.crt"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
        }
    }
}

/// TLS in front of a plain-HTTP relay: socat with the per-run certificate.
pub struct TlsFront {
    pub url: String,
    /// Where it listens on 127.0.0.1.
    pub port: u16,
    _daemon: Daemon,
}

impl TlsFront {
    pub fn start(ca: &Ca, backend_port: u16, logs: &Path) -> TlsFront {
        let socat = require("socat");
        let port = free_port();
        let mut cmd = Command::new(socat);
        cmd.arg(format!(
            "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,verify=0,cert={},key={}",
            ca.server_cert.display(),
            ca.server_key.display()
        ))
        .arg(format!("TCP:127.0.0.1:{backend_port}"))
        .stdout(Stdio::null())
        .stderr(File::create(logs.join("socat.log")).unwrap());
        let mut daemon = Daemon::spawn("socat", cmd);
        let log = logs.join("socat.log");
        wait_listening(port, &mut daemon, || {
            fs::read_to_string(&log).unwrap_or_default()
        });
        TlsFront {
            url: format!("https://127.0.0.1:{port}/notify"),
            port,
            _daemon: daemon,
        }
    }
}

/// `systemd-analyze verify` of a user unit as the user's systemd would load it, for a user whose
/// home is `home` (and whose $XDG_CONFIG_HOME is `config`, if given): no error, not a word.
pub fn verify_user_unit(home: &Path, config: Option<&Path>, unit: &Path) {
    let analyze = require("systemd-analyze");
    let runtime = home.join("runtime");
    fs::create_dir_all(&runtime).unwrap();
    fs::set_permissions(&runtime, fs::Permissions::from_mode(0o700)).unwrap();
    let mut cmd = Command::new(analyze);
    cmd.env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", home)
        .env("XDG_RUNTIME_DIR", &runtime);
    if let Some(config) = config {
        cmd.env("XDG_CONFIG_HOME", config);
    }
    let out = cmd
        .args(["--user", "--man=no", "verify"])
        .arg(unit)
        .output()
        .unwrap();
    assert_eq!(
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).as_ref()
        ),
        (Some(0), ""),
        "{out:?}"
    );
}
