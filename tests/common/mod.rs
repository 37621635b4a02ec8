//! Test support: a scriptable stand-in relay on 127.0.0.1 and a sandboxed way to run the binary.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

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
    /// Close the connection in the middle of the answer.
    Reset,
}

/// One request as the relay saw it.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// When the relay had read the whole request: the moment the phone would be woken.
    pub at: Instant,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

struct State {
    script: VecDeque<Reply>,
    default: Reply,
    requests: Vec<Request>,
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
    pub fn start() -> Relay {
        Relay::scripted(Reply::Status(200), [])
    }

    pub fn scripted(default: Reply, script: impl IntoIterator<Item = Reply>) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State {
            script: script.into_iter().collect(),
            default,
            requests: Vec::new(),
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

    /// The POSTs received, in order (`--check` sends a GET, which is not a wakeup).
    pub fn posts(&self) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == "POST")
            .collect()
    }

    pub fn set_default(&self, reply: Reply) {
        self.state.lock().unwrap().default = reply;
    }
}

fn serve(stream: TcpStream, state: &Mutex<State>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    // Keep-alive: one connection may carry several requests.
    while let Some(request) = read_request(&mut reader) {
        let reply = {
            let mut s = state.lock().unwrap();
            s.requests.push(request);
            s.script.pop_front().unwrap_or_else(|| s.default.clone())
        };
        match reply {
            Reply::Status(code) => answer(&mut out, code),
            Reply::With(code, fields) => {
                let fields: String = fields
                    .iter()
                    .map(|(n, v)| format!("{n}: {v}\r\n"))
                    .collect();
                let text = format!("HTTP/1.1 {code} X\r\n{fields}Content-Length: 2\r\n\r\nok");
                let _ = out.write_all(text.as_bytes());
            }
            Reply::Delay(wait, code) => {
                thread::sleep(wait);
                answer(&mut out, code);
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
            Reply::Reset => {
                let _ = out.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npart");
                let _ = out.shutdown(Shutdown::Both);
                return;
            }
        }
    }
}

fn answer(out: &mut TcpStream, code: u16) {
    let text = format!("HTTP/1.1 {code} X\r\nContent-Length: 2\r\n\r\nok");
    let _ = out.write_all(text.as_bytes());
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
        method,
        path,
        headers,
        body,
        at: Instant::now(),
    })
}

/// A port on 127.0.0.1 where nothing listens.
pub fn refused_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A home, cache and config of its own for each test.
pub struct Sandbox {
    pub home: TempDir,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        Sandbox {
            home: tempfile::tempdir().unwrap(),
        }
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.home.path().join("cache/deltapush-mda")
    }

    /// The binary with HOME and XDG_CACHE_HOME in the sandbox and nothing inherited that
    /// could change its behaviour.
    pub fn cmd(&self) -> assert_cmd::Command {
        let mut c = assert_cmd::Command::new(bin());
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.home.path())
            .env("XDG_CACHE_HOME", self.home.path().join("cache"));
        c
    }

    /// The same as a plain `std::process::Command`, for spawning many at once.
    pub fn std_cmd(&self) -> std::process::Command {
        let mut c = std::process::Command::new(bin());
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.home.path())
            .env("XDG_CACHE_HOME", self.home.path().join("cache"));
        c
    }

    /// Runs the binary once against `relay` with `input` on stdin: (exit code, stderr).
    pub fn deliver(&self, relay: &Relay, input: &[u8], args: &[&str]) -> (i32, String) {
        let out = self
            .cmd()
            .arg("--url")
            .arg(&relay.url)
            .args(args)
            .write_stdin(input)
            .output()
            .unwrap();
        (
            out.status.code().unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    }

    /// The same with a file of `tests/data/` as stdin, the way getmail hands over a message.
    pub fn deliver_file(&self, relay: &Relay, name: &str, args: &[&str]) -> (i32, String) {
        let out = self
            .cmd()
            .arg("--url")
            .arg(&relay.url)
            .args(args)
            .pipe_stdin(data(name))
            .unwrap()
            .output()
            .unwrap();
        (
            out.status.code().unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    }

    pub fn write(&self, name: &str, content: impl AsRef<[u8]>) -> PathBuf {
        let path = self.home.path().join(name);
        std::fs::write(&path, content).unwrap();
        path
    }

    /// The stamp file of a token (sha256 of it, in hex).
    pub fn stamp(&self, token: &str) -> PathBuf {
        self.cache_dir().join(sha256_hex(token.as_bytes()))
    }
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_deltapush-mda"))
}

/// Tokens shaped like the real ones: long, with `/`, `+` and `=`.
pub fn token(n: u32) -> String {
    let mut t = format!("openpgp:wcFMA{n:04}x/y+z");
    while t.len() < 920 {
        t.push_str("AbCdEf0123+/");
    }
    t.push_str("==");
    t
}

pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    format!("{:x}", Sha256::digest(data))
}

/// A plain message from a person.
pub const PLAIN: &str = "From: alice@example.org\nTo: bob@example.net\nSubject: hi\n\
Message-ID: <1@example.org>\n\nHello Bob\n";

pub fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

/// A token as the binary names it: its kind and the first 8 hex digits of its SHA-256.
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

/// Polls `cond` every 5 ms; panics with `what` after `limit`. Returns how long it took.
pub fn wait_for(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < limit,
            "{what} did not happen within {limit:?}"
        );
        thread::sleep(Duration::from_millis(5));
    }
    start.elapsed()
}
