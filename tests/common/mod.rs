//! The one test harness: a sandbox per test and the one way to run the binary in it (everything
//! it writes is checked for panics and for tokens), the one stand-in relay on 127.0.0.1 that
//! records its hits, TLS in front of it, realistic tokens, and each expected line built in one
//! place. `realmail` drives the real mail programs; `dovecot` is a mail server of a test's own,
//! `lmtp` the clients that talk to it, `imap` a scriptable IMAP server that plays the ones a
//! watcher meets, and `examples` the shipped files as the tests render them.
#![allow(dead_code)]

pub mod courier;
pub mod dovecot;
pub mod examples;
pub mod imap;
pub mod lmtp;
pub mod mailhome;
pub mod realmail;

use std::collections::{BTreeSet, VecDeque};
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime};

use tempfile::TempDir;

use realmail::free_port;

// ---------------------------------------------------------------------------------------------
// Tokens, and the lines the binary writes about them

/// What every realistic token carries after its kind prefix. No output of the binary may hold
/// it: a token is only ever named, never shown.
pub const TOKEN_BODY: &str = "wcFMA";

/// Tokens shaped like the real ones: long, with `/`, `+` and `=`.
pub fn token(n: u32) -> String {
    let mut t = format!("openpgp:{TOKEN_BODY}{n:04}x/y+z");
    while t.len() < 920 {
        t.push_str("AbCdEf0123+/");
    }
    t.push_str("==");
    t
}

/// A token, valid or not, as the binary names it: its kind and the first 8 hex digits of its
/// SHA-256. The one place that knows how a token is named.
pub fn shown(token: &str) -> String {
    let kind = [
        ("fcm-", "fcm"),
        ("sandbox:", "sandbox"),
        ("ubports-", "ubports"),
        ("webpush:", "webpush"),
        ("openpgp:", "openpgp"),
    ]
    .iter()
    .find(|(prefix, _)| token.starts_with(prefix))
    .map(|(_, kind)| *kind)
    .unwrap_or(
        if token.len() >= 32 && token.bytes().all(|b| b.is_ascii_hexdigit()) {
            "apns"
        } else {
            "token"
        },
    );
    format!("{kind}#{}", &sha256_hex(token.as_bytes())[..8])
}

/// One line of the binary's stderr.
pub fn line(text: &str) -> String {
    format!("deltapush-mda: {text}\n")
}

/// The line about one token.
pub fn token_line(token: &str, text: &str) -> String {
    line(&format!("token {}: {text}", shown(token)))
}

/// `-v` after a successful POST.
pub fn notified(token: &str) -> String {
    token_line(token, "notified: 200")
}

/// A token that could not be notified this time, with what its last attempt met.
pub fn not_notified(token: &str, detail: &str) -> String {
    let (head, tail) = not_notified_around(token);
    format!("{head}{detail}{tail}")
}

/// The not-notified line of `token` before and after its cause.
pub fn not_notified_around(token: &str) -> (String, String) {
    let head = format!("deltapush-mda: token {}: not notified: ", shown(token));
    (head, "; the next message will try again\n".to_string())
}

/// Asserts that `stderr` is one not-notified line for `token` whose cause is someone else's
/// wording (a TLS or HTTP library's): only our prefix, suffix and the one line are ours.
pub fn assert_not_notified_line(stderr: &str, token: &str) {
    let (head, tail) = not_notified_around(token);
    assert!(
        stderr.starts_with(&head) && stderr.ends_with(&tail) && stderr.lines().count() == 1,
        "not one not-notified line for {}: {stderr:?}",
        shown(token)
    );
}

/// `-v` when a rule said the message needs no wakeup.
pub fn skipped(reason: &str) -> String {
    line(&format!("skipped: {reason}"))
}

/// Why a token is refused before anything is sent (exit 64); `named` is how the text names it.
pub fn bad_token(named: &str, why: &str) -> String {
    format!("token {named} {why}; copy it again from Delta Chat")
}

/// Why a token with a control, blank or non-ASCII character is refused.
pub fn invisible_at(byte: usize) -> String {
    format!("has a character that is not visible ASCII at byte {byte}")
}

/// The error for a cache dir (or a file in it) that cannot be used (exit 78).
pub fn cache_dir_line(path: &Path, why: &str) -> String {
    line(&format!(
        "cache dir {}: {why}; fix it or give another with --cache-dir",
        path.display()
    ))
}

pub const NO_TOKEN: &str = "no token given: pass TOKEN or --token-file PATH (see --help)";

// ---------------------------------------------------------------------------------------------
// Messages

/// A plain message from a person.
pub const PLAIN: &str = "From: alice@example.org\nTo: bob@example.net\nSubject: hi\n\
Message-ID: <1@example.org>\n\nHello Bob\n";

/// A file of `tests/data/`.
pub fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

/// A message from the corpus of real mail in `tests/data/corpus/`.
pub fn corpus(name: &str) -> PathBuf {
    data(&format!("corpus/{name}"))
}

/// A message from the corpus of real mail, whole.
fn corpus_message(name: &str) -> Vec<u8> {
    fs::read(corpus(name)).unwrap()
}

/// A chat message from the corpus: a person wrote it, so it notifies.
pub fn chat() -> Vec<u8> {
    corpus_message("text_from_alice_encrypted.eml")
}

/// A bounce from the corpus, marked `Auto-Submitted: auto-replied`: never notifies.
pub fn bounce() -> Vec<u8> {
    let m = corpus_message("gmx_ndn.eml");
    assert!(String::from_utf8_lossy(&m).contains("Auto-Submitted: auto-replied"));
    m
}

pub type Writer = Box<dyn FnOnce(&mut ChildStdin) -> io::Result<()> + Send>;

/// What the binary gets on standard input.
pub enum Input {
    Null,
    /// A regular file, the way getmail hands over a message.
    File(PathBuf),
    /// Through a pipe, the way procmail, maildrop and fetchmail do.
    Bytes(Vec<u8>),
    /// Written by a thread while the binary reads; for inputs too big to hold.
    Stream(Writer),
}

impl From<&str> for Input {
    fn from(text: &str) -> Input {
        Input::Bytes(text.as_bytes().to_vec())
    }
}

impl From<Vec<u8>> for Input {
    fn from(bytes: Vec<u8>) -> Input {
        Input::Bytes(bytes)
    }
}

impl From<PathBuf> for Input {
    fn from(path: PathBuf) -> Input {
        Input::File(path)
    }
}

// ---------------------------------------------------------------------------------------------
// Running the binary

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_deltapush-mda"))
}

/// A home, cache dir and config of its own for each test.
pub struct Sandbox {
    pub home: TempDir,
}

impl Default for Sandbox {
    fn default() -> Sandbox {
        Sandbox::new()
    }
}

impl Sandbox {
    pub fn new() -> Sandbox {
        Sandbox {
            home: tempfile::tempdir().unwrap(),
        }
    }

    /// A sandbox and a relay that answers 200 to everything: where most tests start.
    pub fn with_relay() -> (Sandbox, Relay) {
        (Sandbox::new(), Relay::start())
    }

    /// The default cache dir of a run in this sandbox.
    pub fn cache_dir(&self) -> PathBuf {
        self.home.path().join("cache/deltapush-mda")
    }

    /// The token state of `token` in the default cache dir: named by the SHA-256 of the token.
    pub fn state(&self, token: &str) -> PathBuf {
        self.cache_dir().join(sha256_hex(token.as_bytes()))
    }

    pub fn write(&self, name: &str, content: impl AsRef<[u8]>) -> PathBuf {
        let path = self.home.path().join(name);
        fs::write(&path, content).unwrap();
        path
    }

    /// The binary with HOME and XDG_CACHE_HOME in the sandbox and nothing inherited that could
    /// change its behaviour.
    pub fn command(&self) -> Command {
        self.command_for(bin())
    }

    /// Another program (script, time) in the same environment, to run the binary under it.
    pub fn command_for(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new(program);
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.home.path())
            .env("XDG_CACHE_HOME", self.home.path().join("cache"));
        c
    }

    /// Starts the binary with `args`; [`Running::finish`] waits for it.
    pub fn start(&self, args: &[&str], input: impl Into<Input>) -> Running {
        let mut cmd = self.command();
        cmd.args(args);
        start(cmd, input.into())
    }

    pub fn run(&self, args: &[&str], input: impl Into<Input>) -> Run {
        self.start(args, input).finish()
    }

    /// Runs the binary once against `relay`: (exit code, stderr).
    pub fn deliver(&self, relay: &Relay, input: impl Into<Input>, args: &[&str]) -> (i32, String) {
        let r = self.run(&[&["--url", relay.url.as_str()], args].concat(), input);
        (r.code, r.stderr)
    }
}

/// A run's deferred senders live on after it: whatever a test left waiting goes with its sandbox.
impl Drop for Sandbox {
    fn drop(&mut self) {
        kill_senders(self.home.path());
    }
}

// ---------------------------------------------------------------------------------------------
// Deferred senders, as /proc shows them

/// A deferred sender: a process whose command line has `--send-deferred`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sender {
    pub pid: i32,
    pub pgrp: i32,
    pub session: i32,
    pub args: Vec<String>,
}

impl Sender {
    /// The process `pid`, if it is a living deferred sender (or, with `flag`
    /// `--wait-stored`, a waiter for a stored message).
    fn read(pid: i32, flag: &str) -> Option<Sender> {
        // The command line first: most processes are not senders, and one read tells.
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let args: Vec<String> = cmdline
            .split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if !args.iter().any(|a| a == flag) {
            return None;
        }
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // pid (comm) state ppid pgrp session ...: comm may hold anything, so split after ')'.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        // A zombie has let go of everything (its locks too): it counts as gone. Nothing reaps
        // an orphaned sender on some machines, so zombies do stay around.
        if fields.first()? == &"Z" {
            return None;
        }
        Some(Sender {
            pid,
            pgrp: fields.get(2)?.parse().ok()?,
            session: fields.get(3)?.parse().ok()?,
            args,
        })
    }

    /// Whether it still runs (and its pid was not taken by another process).
    pub fn alive(&self) -> bool {
        let flag = &self.args[1];
        Sender::read(self.pid, flag).is_some_and(|p| p.args == self.args)
    }

    /// Its open descriptors: number and what they point to.
    pub fn fds(&self) -> Vec<(u32, String)> {
        let mut fds: Vec<(u32, String)> = fs::read_dir(format!("/proc/{}/fd", self.pid))
            .map(|d| {
                d.flatten()
                    .filter_map(|e| {
                        let n = e.file_name().to_str()?.parse().ok()?;
                        let to = fs::read_link(e.path()).ok()?;
                        Some((n, to.to_string_lossy().into_owned()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        fds.sort();
        fds
    }

    /// The cache dir it was started for.
    fn cache_dir(&self) -> Option<&Path> {
        self.args
            .windows(2)
            .find(|w| w[0] == "--cache-dir")
            .map(|w| Path::new(&w[1]))
    }
}

/// The living deferred senders whose cache dir is `dir` or below it.
pub fn senders(dir: &Path) -> Vec<Sender> {
    background(dir, "--send-deferred")
}

/// The living waiters for a stored message (of `--hold`) whose cache dir is `dir` or below it.
pub fn waiters(dir: &Path) -> Vec<Sender> {
    background(dir, "--wait-stored")
}

fn background(dir: &Path, flag: &str) -> Vec<Sender> {
    let Ok(procs) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter_map(|pid| Sender::read(pid, flag))
        .filter(|p| p.cache_dir().is_some_and(|c| c.starts_with(dir)))
        .collect()
}

/// Kills every deferred sender and waiter whose cache dir is `dir` or below it: a test that
/// failed leaves no process behind.
pub fn kill_senders(dir: &Path) {
    for p in senders(dir).into_iter().chain(waiters(dir)) {
        // SAFETY: a plain syscall; the pid was a sender of the test's own cache dir.
        unsafe { libc::kill(p.pid, libc::SIGKILL) };
    }
}

/// Rewrites the `KEY TIME` line of a token state as if it had been written `ago` earlier:
/// the clock, set without sleeping.
pub fn backdate(state: &Path, key: &str, ago: Duration) {
    let secs = (SystemTime::now() - ago)
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let text = fs::read_to_string(state).unwrap();
    let prefix = format!("{key} ");
    assert!(
        text.lines().any(|l| l.starts_with(&prefix)),
        "no {key} in {text}"
    );
    let text: String = text
        .lines()
        .map(|l| match l.starts_with(&prefix) {
            true => format!("{key} {secs}.000\n"),
            false => format!("{l}\n"),
        })
        .collect();
    fs::write(state, text).unwrap();
}

/// What one run of the binary did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub started: Instant,
    /// Until its exit and the end of its stdout and stderr: what a caller waits for.
    pub elapsed: Duration,
    /// What the writer of a piped message saw: an EPIPE here means the mail was not drained.
    pub written: io::Result<()>,
}

impl Run {
    /// Exit code and stderr, the two things every caller sees.
    pub fn said(&self) -> (i32, &str) {
        (self.code, &self.stderr)
    }

    /// When the caller had all of it.
    pub fn ended(&self) -> Instant {
        self.started + self.elapsed
    }
}

/// How long a run may take before the test gives up on it and kills it: a run that hangs (one
/// that waited for its own deferred sender would hold the token's lock against it, and neither
/// would ever end) fails its test instead of holding up the suite.
pub const RUN_LIMIT: Duration = Duration::from_secs(30);

/// A run of the binary (or a program wrapping it) under way; killed if dropped before its end.
pub struct Running {
    /// Taken by [`Running::finish`].
    child: Option<Child>,
    feeder: Option<JoinHandle<io::Result<()>>>,
    started: Instant,
}

/// Starts `cmd` with `input` on stdin, stdout and stderr captured.
pub fn start(mut cmd: Command, input: Input) -> Running {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let writer: Option<Writer> = match input {
        Input::Null => {
            cmd.stdin(Stdio::null());
            None
        }
        Input::File(path) => {
            cmd.stdin(File::open(path).unwrap());
            None
        }
        Input::Bytes(bytes) => {
            cmd.stdin(Stdio::piped());
            Some(Box::new(move |w: &mut ChildStdin| w.write_all(&bytes)))
        }
        Input::Stream(f) => {
            cmd.stdin(Stdio::piped());
            Some(f)
        }
    };
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let feeder = child.stdin.take().map(|mut pipe| {
        let write = writer.unwrap();
        thread::spawn(move || write(&mut pipe))
    });
    Running {
        child: Some(child),
        feeder,
        started,
    }
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Waits for the end and for its output to end: the output ends only once nothing else
    /// holds the pipes, as for a caller. Panics if it took more than [`RUN_LIMIT`] (and kills
    /// it), if a signal ended it, or if its output holds a panic or any part of a realistic
    /// token beyond its kind.
    pub fn finish(mut self) -> Run {
        let child = self.child.take().unwrap();
        let pid = child.id() as libc::pid_t;
        let (done, limit) = mpsc::channel::<()>();
        let watchdog = thread::spawn(move || {
            let late = limit.recv_timeout(RUN_LIMIT) == Err(RecvTimeoutError::Timeout);
            if late {
                // SAFETY: a plain syscall; the run is not reaped before `done` is dropped.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            late
        });
        let out = child.wait_with_output().unwrap();
        drop(done);
        let elapsed = self.started.elapsed();
        assert!(
            !watchdog.join().unwrap(),
            "a run still going after {RUN_LIMIT:?}; killed it"
        );
        let written = self.feeder.take().map_or(Ok(()), |f| f.join().unwrap());
        let stdout = String::from_utf8(out.stdout).expect("stdout is UTF-8");
        let stderr = String::from_utf8(out.stderr).expect("stderr is UTF-8");
        for text in [&stdout, &stderr] {
            assert!(!text.contains("panicked"), "a panic: {text}");
            assert!(
                !text.contains(TOKEN_BODY),
                "more of a token than its name: {text}"
            );
        }
        let Some(code) = out.status.code() else {
            panic!(
                "killed by signal {:?}; stderr: {stderr}",
                out.status.signal()
            )
        };
        Run {
            code,
            stdout,
            stderr,
            started: self.started,
            elapsed,
            written,
        }
    }

    /// Kills it with SIGKILL and reaps it.
    pub fn kill(mut self) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// [`Sandbox::command`] and friends, run to the end.
pub fn exec(cmd: Command, input: impl Into<Input>) -> Run {
    start(cmd, input.into()).finish()
}

/// Runs each case in a thread of its own name, all at once, and fails naming those that failed
/// (each one's panic is printed above): for cases that mostly wait on real time, so that a file
/// takes about as long as its longest case.
pub fn run_cases(cases: &[(&'static str, fn())]) {
    let started = Instant::now();
    let running: Vec<_> = cases
        .iter()
        .map(|&(name, case)| {
            let t = thread::Builder::new().name(name.into()).spawn(move || {
                let start = Instant::now();
                case();
                println!("{name}: {} ms", start.elapsed().as_millis());
            });
            (name, t.unwrap())
        })
        .collect();
    let failed: Vec<&str> = running
        .into_iter()
        .filter_map(|(name, t)| t.join().is_err().then_some(name))
        .collect();
    println!("all cases: {} ms", started.elapsed().as_millis());
    assert!(failed.is_empty(), "failed cases: {failed:?}");
}

// ---------------------------------------------------------------------------------------------
// The stand-in relay

/// What the stand-in relay does with one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Answer with this status and an empty body.
    Status(u16),
    /// Answer with this status and these extra header fields.
    With(u16, Vec<(&'static str, &'static str)>),
    /// Read the request, then say nothing and keep the connection open.
    Hang,
    /// Wait this long, then answer with the status.
    Delay(Duration, u16),
    /// Answer with bytes that are not HTTP.
    Garbage,
    /// A whole status line and headers, then the connection closes in the body.
    CloseInBody,
    /// Half a status line, then a TCP reset.
    ResetInStatus,
}

/// One request as the relay saw it. A TLS handshake sent to this plain-HTTP relay is recorded
/// as method `TLS` and answered with the reply's plain HTTP: garbage to a TLS client.
#[derive(Clone, Debug)]
pub struct Request {
    /// When the relay had read it.
    pub at: Instant,
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// What the relay's observer ([`Relay::observe`]) said the moment the request arrived,
    /// before it was answered.
    pub observed: Option<String>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A look at the world the moment a request arrives (what a phone woken by it would find).
type Observer = Arc<dyn Fn(&Request) -> String + Send + Sync>;

struct State {
    script: VecDeque<Reply>,
    default: Reply,
    requests: Vec<Request>,
    observer: Option<Observer>,
}

/// A relay on 127.0.0.1:0 that records every request and answers from a script, then with the
/// default reply. It lives as long as the test process.
#[derive(Clone)]
pub struct Relay {
    pub url: String,
    pub port: u16,
    state: Arc<Mutex<State>>,
}

impl Relay {
    /// Answers 200 to everything.
    pub fn start() -> Relay {
        Relay::scripted(Reply::Status(200), [])
    }

    /// Answers `reply` to everything.
    pub fn always(reply: Reply) -> Relay {
        Relay::scripted(reply, [])
    }

    pub fn scripted(default: Reply, script: impl IntoIterator<Item = Reply>) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State {
            script: script.into_iter().collect(),
            default,
            requests: Vec::new(),
            observer: None,
        }));
        let shared = Arc::clone(&state);
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let state = Arc::clone(&shared);
                thread::spawn(move || serve(stream, &state));
            }
        });
        Relay {
            url: format!("http://127.0.0.1:{port}/notify"),
            port,
            state,
        }
    }

    pub fn requests(&self) -> Vec<Request> {
        self.state.lock().unwrap().requests.clone()
    }

    /// The bodies received, in order, as text.
    pub fn bodies(&self) -> Vec<String> {
        self.requests()
            .into_iter()
            .map(|r| String::from_utf8(r.body).unwrap())
            .collect()
    }

    /// Asserts that the relay received exactly these bodies, in order. A failure names each
    /// body as the binary does and by a hash, never whole.
    pub fn assert_bodies(&self, want: &[&str]) {
        let got = self.bodies();
        if got != want {
            let brief = |b: &str| {
                format!(
                    "{} ({} bytes, sha256 {})",
                    shown(b),
                    b.len(),
                    &sha256_hex(b.as_bytes())[..12]
                )
            };
            let got: Vec<String> = got.iter().map(|b| brief(b)).collect();
            let want: Vec<String> = want.iter().map(|b| brief(b)).collect();
            panic!("the relay received {got:?}, expected {want:?}");
        }
    }

    /// The POSTs received, in order (`--check` sends a GET, which is not a wakeup).
    pub fn posts(&self) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == "POST")
            .collect()
    }

    /// When each POST arrived, in order; each must have carried `token` and nothing else.
    pub fn post_times(&self, token: &str) -> Vec<Instant> {
        self.posts()
            .into_iter()
            .map(|r| {
                assert!(r.body == token.as_bytes(), "a POST of something else");
                r.at
            })
            .collect()
    }

    pub fn set_default(&self, reply: Reply) {
        self.state.lock().unwrap().default = reply;
    }

    /// Runs `look` for each request as it arrives, before it is answered, and keeps its answer
    /// in the request's `observed`.
    pub fn observe(&self, look: impl Fn(&Request) -> String + Send + Sync + 'static) {
        self.state.lock().unwrap().observer = Some(Arc::new(look));
    }
}

fn serve(stream: TcpStream, state: &Mutex<State>) {
    let mut first = [0u8; 1];
    // 0x16 starts a TLS handshake record: a client that thinks this relay speaks TLS.
    let tls = stream.peek(&mut first).ok() == Some(1) && first[0] == 0x16;
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    // Keep-alive: one connection may carry several requests.
    loop {
        let mut request = if tls {
            let mut hello = [0u8; 4096];
            let _ = reader.read(&mut hello);
            Request {
                at: Instant::now(),
                method: "TLS".into(),
                path: String::new(),
                headers: Vec::new(),
                body: Vec::new(),
                observed: None,
            }
        } else {
            match read_request(&mut reader) {
                Some(r) => r,
                None => return,
            }
        };
        // Outside the lock: a look may take a while, and the test may ask for requests meanwhile.
        let observer = state.lock().unwrap().observer.clone();
        if let Some(look) = observer {
            request.observed = Some(look(&request));
        }
        let reply = {
            let mut s = state.lock().unwrap();
            s.requests.push(request);
            s.script.pop_front().unwrap_or_else(|| s.default.clone())
        };
        match reply {
            Reply::Status(code) => answer(&mut out, code, &[]),
            Reply::With(code, headers) => answer(&mut out, code, &headers),
            Reply::Delay(wait, code) => {
                thread::sleep(wait);
                answer(&mut out, code, &[]);
            }
            Reply::Hang => {
                thread::sleep(Duration::from_secs(600));
                return;
            }
            Reply::Garbage => {
                let _ = out.write_all(b"SSH-2.0-OpenSSH_9.2\r\n\x00\x01\x02 not http\r\n\r\n");
                let _ = out.shutdown(Shutdown::Both);
                return;
            }
            Reply::CloseInBody => {
                let _ = out.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npart");
                let _ = out.shutdown(Shutdown::Both);
                return;
            }
            Reply::ResetInStatus => {
                let _ = out.write_all(b"HTTP/1.1 20");
                reset(out);
                return;
            }
        }
        if tls {
            let _ = out.shutdown(Shutdown::Both);
            return;
        }
    }
}

fn answer(out: &mut TcpStream, code: u16, headers: &[(&str, &str)]) {
    let mut text = format!("HTTP/1.1 {code} X\r\nContent-Length: 2\r\n");
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("\r\nok");
    let _ = out.write_all(text.as_bytes());
}

/// Sends a TCP RST: SO_LINGER with a zero timeout, then close.
fn reset(stream: TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket and a correctly sized option value.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
}

fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (name, value) = h.split_once(':')?;
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
    let len: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body).ok()?;
    Some(Request {
        at: Instant::now(),
        method,
        path,
        headers,
        body,
        observed: None,
    })
}

/// A relay URL on 127.0.0.1 where nothing listens.
pub fn refused_url() -> String {
    format!("http://127.0.0.1:{}/notify", free_port())
}

/// The stand-in relay behind TLS (socat) with a certificate from a CA made for this run, which
/// no system store knows: `SSL_CERT_FILE=ca` makes the binary trust it.
pub struct Https {
    pub url: String,
    pub ca: PathBuf,
    _front: realmail::TlsFront,
    _dir: TempDir,
}

impl Https {
    pub fn before(relay: &Relay) -> Https {
        let dir = tempfile::tempdir().unwrap();
        let ca = realmail::Ca::new(dir.path());
        let front = realmail::TlsFront::start(&ca, relay.port, dir.path());
        Https {
            url: front.url.clone(),
            ca: ca.cert,
            _front: front,
            _dir: dir,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Files

/// Writes a token state as 0.1.0 did, an empty file whose mtime is the last POST, with that
/// mtime at `last`: how a test moves the clock instead of waiting for it.
pub fn write_legacy_state(path: &Path, last: SystemTime) {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path.parent().unwrap())
        .unwrap();
    let file = File::options()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    file.set_modified(last).unwrap();
}

/// Runs the calling test `name` again in a mount namespace of its own, where it may mount a
/// tmpfs whatever happens to the test (the mount goes with the namespace); in a user namespace
/// too where the tests do not run as root, so no privilege is needed. Returns true in that inner
/// run; the outer run checks that the inner one passed and gets false.
pub fn in_own_mount_namespace(name: &str) -> bool {
    const INNER: &str = "DELTAPUSH_TEST_OWN_MOUNTS";
    if std::env::var_os(INNER).is_some() {
        return true;
    }
    let mut cmd = Command::new(realmail::require("unshare"));
    // SAFETY: geteuid(2) cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        cmd.args(["--user", "--map-root-user"]);
    }
    cmd.args(["--mount", "--propagation", "private"])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads", "1"])
        .env(INNER, "1");
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(&format!("test {name} ... ok")),
        "{name} in a mount namespace of its own: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    false
}

/// A tmpfs mounted by a test in its own mount namespace; unmounted on drop, so the test's temp
/// dir can go.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    pub fn mount(dir: &Path, options: &str) -> Tmpfs {
        fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount a tmpfs on {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    format!("{:x}", Sha256::digest(data))
}

/// Every path under `root`, relative to it.
pub fn tree(root: &Path) -> BTreeSet<PathBuf> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<PathBuf>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            out.insert(path.strip_prefix(root).unwrap().to_path_buf());
            if entry.file_type().unwrap().is_dir() {
                walk(root, &path, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(root, root, &mut out);
    out
}

pub fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().mode() & 0o7777
}
