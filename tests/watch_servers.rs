//! `deltapush-mda --watch` (issue 20) against the servers of the internet as the stand-in IMAP
//! server (tests/common/imap.rs) plays them: floods, tricklers, endless literals, hostile text,
//! Gmail's connection limit, Outlook's expiring tokens and throttling, an IDLE that stops
//! telling, keepalives, and the refusals that end the watcher. Each case asserts the exit
//! status and stderr, the connections, logins and commands the server received, the POSTs at the
//! relay, and the watcher's peak memory where a server could make it grow.
//!
//! The watcher's clock runs faster where a case would otherwise wait it out
//! (`DELTAPUSH_WATCH_SPEEDUP`); `--timeout` is not scaled. The cases run side by side.

mod common;

use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::imap::{Act, Connection, ImapServer, On};
use common::realmail::{Daemon, poll, wait_for};
use common::{PLAIN, Relay, Sandbox, TOKEN_BODY, bounce, chat, line, run_cases, token};

const USER: &str = "me@example.org";
const PASSWORD: &str = "pw-stand-in";
/// The most the watcher may hold resident at its peak, whatever a server sends (KiB).
const PEAK_KIB: u64 = 16 * 1024;
/// How long a case waits for something the watcher should do at once.
const SOON: Duration = Duration::from_secs(5);
/// How much sooner than its nominal time a wait may end: the watcher waits in poll(2), which
/// counts whole milliseconds.
const MS: Duration = Duration::from_millis(2);

/// A stand-in server, a relay and a sandbox: where every case starts.
struct Site {
    imap: ImapServer,
    relay: Relay,
    sandbox: Sandbox,
    password_file: PathBuf,
    token: String,
    /// The watcher's clock runs this many times faster.
    speedup: u32,
}

impl Site {
    fn new(speedup: u32) -> Site {
        let sandbox = Sandbox::new();
        let password_file = sandbox.write("password", format!("{PASSWORD}\n"));
        fs::set_permissions(&password_file, fs::Permissions::from_mode(0o600)).unwrap();
        Site {
            imap: ImapServer::start(),
            relay: Relay::start(),
            sandbox,
            password_file,
            token: token(20),
            speedup,
        }
    }

    fn url(&self) -> String {
        self.imap.url(USER)
    }

    /// The watcher on `url`, waking with `--interval 0`, logging in with the password file
    /// unless `extra` gives a `--password-command`.
    fn command(&self, url: &str, extra: &[&str]) -> Command {
        let mut cmd = self.sandbox.command();
        cmd.args(["--watch", url, "--interval", "0", "--url", &self.relay.url])
            .args(extra)
            .arg(&self.token)
            .env("DELTAPUSH_WATCH_SPEEDUP", self.speedup.to_string());
        if !extra.contains(&"--password-command") {
            cmd.arg("--password-file").arg(&self.password_file);
        }
        cmd
    }

    fn watch(&self, extra: &[&str]) -> Watcher {
        Watcher::spawn(self.sandbox.home.path(), self.command(&self.url(), extra))
    }

    /// Delivers `message`; returns when it landed.
    fn deliver(&self, message: &[u8]) -> Instant {
        self.imap.deliver(message);
        Instant::now()
    }

    /// Waits until connection `n` is in IDLE, the `k`th time (from 1).
    fn wait_idle(&self, n: usize, k: usize) {
        wait_for(SOON * 2, &format!("IDLE {k} on connection {n}"), || {
            self.imap.connections().get(n).is_some_and(|c| {
                c.verbs().last().is_some_and(|v| v == "IDLE")
                    && c.verbs().iter().filter(|v| *v == "IDLE").count() == k
            })
        });
    }

    /// Waits until connection `n` is in IDLE, whichever time it is.
    fn wait_in_idle(&self, n: usize) {
        wait_for(SOON, &format!("IDLE on connection {n}"), || {
            self.imap
                .connections()
                .get(n)
                .is_some_and(|c| c.verbs().last().is_some_and(|v| v == "IDLE"))
        });
    }

    /// Waits for the `n`th POST (from 1) and returns when each arrived.
    fn wait_posts(&self, n: usize, limit: Duration) -> Vec<Instant> {
        let got = poll(limit, || self.relay.posts().len() >= n);
        let times = self.relay.post_times(&self.token);
        assert!(
            got.is_some(),
            "{} POSTs within {limit:?}, expected {n}",
            times.len()
        );
        times
    }

    /// The connections so far, at least `n` of them (waiting for them if need be).
    fn connections(&self, n: usize) -> Vec<Connection> {
        wait_for(SOON * 2, &format!("{n} connections"), || {
            self.imap.connections().len() >= n
        });
        self.imap.connections()
    }

    /// Asserts the logins the server received, in order: (connection, secret), user `USER`.
    fn assert_logins(&self, how: &str, want: &[(usize, &str)]) {
        let got: Vec<(usize, String)> = self
            .imap
            .logins()
            .into_iter()
            .map(|l| {
                assert_eq!((l.how, l.user.as_str()), (how, USER), "{l:?}");
                (l.connection, l.secret)
            })
            .collect();
        let want: Vec<(usize, String)> = want.iter().map(|(n, s)| (*n, s.to_string())).collect();
        assert_eq!(got, want);
    }
}

/// One run of the watcher, its stderr in a file.
struct Watcher {
    daemon: Daemon,
    stderr: PathBuf,
}

impl Watcher {
    fn spawn(dir: &Path, mut cmd: Command) -> Watcher {
        let stderr = dir.join("watcher.stderr");
        cmd.stdout(File::create(dir.join("watcher.stdout")).unwrap())
            .stderr(File::create(&stderr).unwrap());
        Watcher {
            daemon: Daemon::spawn("deltapush-mda --watch", cmd),
            stderr,
        }
    }

    /// Its stderr so far, which never shows a token or password, nor a panic.
    fn stderr(&self) -> String {
        let text = fs::read_to_string(&self.stderr).unwrap_or_default();
        for secret in [TOKEN_BODY, PASSWORD, "ya29."] {
            assert!(!text.contains(secret), "a secret shown: {text}");
        }
        assert!(!text.contains("panicked"), "a panic: {text}");
        text
    }

    /// Waits until stderr holds `want` (whole lines) and returns when.
    fn wait_stderr(&self, want: &str, limit: Duration) -> Instant {
        let found = poll(limit, || self.stderr().contains(want));
        assert!(
            found.is_some(),
            "no {want:?} within {limit:?}; stderr:\n{}",
            self.stderr()
        );
        Instant::now()
    }

    /// Its peak resident memory so far (VmHWM), in KiB.
    fn peak_kib(&self) -> u64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.daemon.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no VmHWM in {status}"))
    }

    /// Asserts the peak memory bound, then SIGTERM: exit status and stderr.
    fn terminate(mut self) -> (Option<i32>, String) {
        let peak = self.peak_kib();
        let case = std::thread::current().name().unwrap_or("").to_string();
        println!("{case}: peak {peak} KiB");
        assert!(
            peak <= PEAK_KIB,
            "peak resident memory {peak} KiB, more than {PEAK_KIB} KiB"
        );
        // SAFETY: a plain syscall on the watcher this test started.
        unsafe { libc::kill(self.daemon.pid() as libc::pid_t, libc::SIGTERM) };
        let status = self.daemon.wait(SOON);
        (status.code(), self.stderr())
    }

    /// Waits for the watcher to end by itself: exit status and stderr.
    fn exit(mut self) -> (Option<i32>, String) {
        let limit = SOON * 3;
        if poll(limit, || self.daemon.exited().is_some()).is_none() {
            panic!("still running after {limit:?}; stderr:\n{}", self.stderr());
        }
        (self.daemon.wait(SOON).code(), self.stderr())
    }
}

fn watching(url: &str) -> String {
    line(&format!("watching {url} with IDLE"))
}

/// The line of a connection that ended and is tried again after `secs` (nominal).
fn again(url: &str, why: &str, secs: u64) -> String {
    line(&format!("{url}: {why}; trying again in {secs} s"))
}

fn verbs(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

/// Asserts that a connection that watched did what a watcher does and nothing else: log in,
/// ask for the capabilities (the login's tagged OK carries them, unread), EXAMINE, catch up,
/// then rounds of IDLE, DONE and a fetch (after news, or NOOP and a fetch at a renewal), until
/// SIGTERM ends it with LOGOUT: inside IDLE (after DONE) or wherever a round was. Returns the
/// number of whole rounds.
fn assert_watched(c: &Connection, login: &str) -> usize {
    let v = c.verbs();
    let start = verbs(&[login, "CAPABILITY", "EXAMINE", "UID FETCH"]);
    let bad = || format!("not a watcher's session: {v:?}");
    assert!(
        v.starts_with(&start) && v.last().is_some_and(|l| l == "LOGOUT"),
        "{}",
        bad()
    );
    let rounds = [
        verbs(&["IDLE", "DONE", "UID FETCH"]),
        verbs(&["IDLE", "DONE", "NOOP", "UID FETCH"]),
    ];
    let mut rest = &v[start.len()..v.len() - 1];
    let mut whole = 0;
    while let Some(round) = rounds.iter().find(|r| rest.starts_with(r)) {
        rest = &rest[round.len()..];
        whole += 1;
    }
    // Where SIGTERM found it: in IDLE (which it ends with DONE), or amid a renewal.
    assert!(
        [
            verbs(&["IDLE", "DONE"]),
            verbs(&["IDLE", "DONE", "NOOP"]),
            verbs(&[])
        ]
        .contains(&rest.to_vec()),
        "{}",
        bad()
    );
    whole
}

/// The fetches of a connection: its `UID FETCH` lines.
fn fetches(c: &Connection) -> Vec<String> {
    c.lines
        .iter()
        .filter(|l| l.starts_with("UID FETCH"))
        .cloned()
        .collect()
}

// ---------------------------------------------------------------------------------------------

/// The baseline: a server that behaves, a chat message woken once, a bounce not at all, and
/// exactly the commands a watcher needs.
fn a_well_behaved_server() {
    let site = Site::new(1);
    site.deliver(PLAIN.as_bytes());
    let w = site.watch(&[]);
    let url = site.url();
    w.wait_stderr(&watching(&url), SOON);
    site.wait_idle(0, 1);
    site.deliver(&bounce());
    site.wait_idle(0, 2);
    let landed = site.deliver(&chat());
    let posts = site.wait_posts(1, SOON);
    assert!(posts[0] > landed && posts[0] - landed < Duration::from_secs(1));
    site.wait_idle(0, 3);
    let (status, stderr) = w.terminate();
    assert_eq!((status, stderr), (Some(0), watching(&url)));
    let c = site.connections(1);
    assert_eq!(c.len(), 1);
    assert_eq!(
        c[0].verbs(),
        verbs(&[
            "LOGIN",
            "CAPABILITY",
            "EXAMINE",
            "UID FETCH",
            "IDLE",
            "DONE",
            "UID FETCH",
            "IDLE",
            "DONE",
            "UID FETCH",
            "IDLE",
            "DONE",
            "LOGOUT",
        ])
    );
    // From UIDNEXT on: the message there before the start wakes no one.
    assert_eq!(
        fetches(&c[0]),
        [2, 2, 3].map(|n| format!("UID FETCH {n}:* (UID BODY.PEEK[HEADER]<0.262144>)"))
    );
    assert_eq!(c[0].lines[2], "EXAMINE INBOX");
    site.assert_logins("LOGIN", &[(0, PASSWORD)]);
    assert_eq!(site.relay.posts().len(), 1);
}

/// Untagged `* OK [CODE …]` lines inside IDLE, 6 MiB of them (about 2.5 s' worth here, some
/// 250,000 lines; 0.3.0 kept about 54 bytes of each): nothing piles up, and the message
/// delivered meanwhile is woken once they are over.
fn a_flood_of_untagged_codes_costs_no_memory() {
    let site = Site::new(1);
    let flood = 6 << 20;
    site.imap.script(
        On::Idling,
        1,
        vec![Act::Flood(
            [
                vec![b"* OK [UIDNEXT 5] x".to_vec(); 9],
                vec![b"* OK [ALERT] System maintenance on Sunday, 02:00 to 04:00 UTC".to_vec()],
            ]
            .concat(),
            flood,
        )],
    );
    let w = site.watch(&[]);
    let url = site.url();
    w.wait_stderr(&watching(&url), SOON);
    site.wait_idle(0, 1);
    let started = Instant::now();
    // Announced once the flood is over.
    site.deliver(&chat());
    site.wait_posts(1, SOON * 3);
    let sent = site.imap.connections()[0].sent;
    assert!(sent >= flood, "a flood of only {sent} bytes");
    site.wait_idle(0, 2);
    println!(
        "flood: {} MiB in {:?}, peak {} KiB",
        sent >> 20,
        started.elapsed(),
        w.peak_kib()
    );
    let (status, stderr) = w.terminate();
    assert_eq!((status, stderr), (Some(0), watching(&url)));
    let c = site.connections(1);
    assert_eq!(c.len(), 1);
    assert_eq!(assert_watched(&c[0], "LOGIN"), 1);
    assert_eq!(site.relay.posts().len(), 1);
}

/// A server that sends its greeting one byte every 2 s, with `--timeout 3s`: dropped after 3 s,
/// then a connection to a server that behaves, after the backoff.
fn a_trickled_greeting_is_dropped_at_the_timeout() {
    let site = Site::new(100);
    site.imap.script(
        On::Greeting,
        1,
        vec![Act::Trickle(
            b"* OK [CAPABILITY IMAP4rev1 IDLE] ready\r\n".to_vec(),
            Duration::from_secs(2),
        )],
    );
    let c = dropped_then_watching(&site, "3s");
    assert_dropped_after(&c[0], c[0].opened, Duration::from_secs(3));
    assert!(c[0].verbs().is_empty(), "{:?}", c[0].lines);
    assert!(c[1].opened - c[0].closed.unwrap() < Duration::from_secs(1));
    assert_watched(&c[1], "LOGIN");
    site.assert_logins("LOGIN", &[(1, PASSWORD)]);
    assert!(site.relay.posts().is_empty());
}

/// Runs a watcher with `--timeout` against a server whose first connection is spoilt: the
/// watcher says once that it did not answer in time, and watches over the second connection
/// after the backoff. Returns the two connections, for the case to check what each received.
fn dropped_then_watching(site: &Site, timeout: &str) -> Vec<Connection> {
    let w = site.watch(&["--timeout", timeout]);
    let url = site.url();
    let want = format!(
        "{}{}",
        again(&url, "the server did not answer in time", 1),
        watching(&url)
    );
    w.wait_stderr(&want, Duration::from_secs(8));
    site.wait_idle(1, 1);
    let (status, stderr) = w.terminate();
    assert_eq!((status, stderr), (Some(0), want));
    let c = site.connections(2);
    assert_eq!(c.len(), 2);
    c
}

/// Asserts that the watcher hung up on `c` the timeout after `from`, not sooner and not much
/// later.
fn assert_dropped_after(c: &Connection, from: Instant, timeout: Duration) {
    let closed = c.closed.expect("the connection is still open");
    let after = closed - from;
    println!("dropped {after:?} after it began, with a timeout of {timeout:?}");
    assert!(
        after >= timeout - Duration::from_millis(50) && after < timeout + Duration::from_secs(1),
        "dropped {after:?} after it began, with a timeout of {timeout:?}"
    );
}

/// The answer to EXAMINE trickled: the command's whole answer is due within `--timeout`.
fn a_trickled_answer_is_dropped_at_the_timeout() {
    let site = Site::new(100);
    site.imap.script(
        On::Command("EXAMINE"),
        1,
        vec![Act::Trickle(
            b"* 0 EXISTS\r\n* OK [UIDVALIDITY 1] x\r\n{tag} OK done\r\n".to_vec(),
            Duration::from_millis(500),
        )],
    );
    let c = dropped_then_watching(&site, "3s");
    // The login takes a few ms: the EXAMINE began about when the connection did.
    assert_dropped_after(&c[0], c[0].opened, Duration::from_secs(3));
    assert_eq!(c[0].verbs(), verbs(&["LOGIN", "CAPABILITY", "EXAMINE"]));
    assert_watched(&c[1], "LOGIN");
    site.assert_logins("LOGIN", &[(0, PASSWORD), (1, PASSWORD)]);
}

/// Inside IDLE, 1.5 s of silence are fine with `--timeout 1s`; a line that then trickles (a
/// byte every 400 ms) is not.
fn a_trickled_line_inside_idle_is_dropped_at_the_timeout() {
    // The renewal (30 s here) stays out of the way.
    let site = Site::new(10);
    let silence = Duration::from_millis(1500);
    site.imap.script(
        On::Idling,
        1,
        vec![
            Act::Pause(silence),
            Act::Trickle(b"* OK Still here\r\n".to_vec(), Duration::from_millis(400)),
        ],
    );
    let w = site.watch(&["--timeout", "1s"]);
    let url = site.url();
    w.wait_stderr(&watching(&url), SOON);
    site.wait_idle(0, 1);
    let idled = Instant::now();
    let want = format!(
        "{}{}{}",
        watching(&url),
        again(&url, "the server did not answer in time", 1),
        watching(&url)
    );
    w.wait_stderr(&want, SOON);
    site.wait_idle(1, 1);
    let (status, stderr) = w.terminate();
    assert_eq!((status, stderr), (Some(0), want));
    let c = site.connections(2);
    assert_eq!(c.len(), 2);
    assert_dropped_after(&c[0], idled + silence, Duration::from_secs(1));
    assert_eq!(
        c[0].verbs(),
        verbs(&["LOGIN", "CAPABILITY", "EXAMINE", "UID FETCH", "IDLE"])
    );
    assert_watched(&c[1], "LOGIN");
}

/// A FETCH answer announcing a literal of 2 GiB: refused when announced, not read; then a
/// reconnect that works.
fn a_huge_literal_is_refused_unread() {
    let site = Site::new(100);
    site.deliver(&chat());
    site.imap.script(
        On::Command("UID FETCH"),
        1,
        vec![Act::Stream(
            b"* 1 FETCH (UID 2 BODY[HEADER]<0> {2147483648}\r\n".to_vec(),
            2_147_483_648,
        )],
    );
    let w = site.watch(&[]);
    let url = site.url();
    let want = format!(
        "{}{}",
        again(
            &url,
            "the server announced a literal of 2147483648 bytes, more than the 262144 asked for",
            1
        ),
        watching(&url)
    );
    w.wait_stderr(&want, SOON);
    site.wait_idle(1, 1);
    let landed = site.deliver(&chat());
    let posts = site.wait_posts(1, SOON);
    assert!(posts[0] > landed);
    site.wait_idle(1, 2);
    let (status, stderr) = w.terminate();
    assert_eq!((status, stderr), (Some(0), want));
    let c = site.connections(2);
    assert_eq!(c.len(), 2);
    println!("a literal of 2 GiB: {} bytes sent", c[0].sent);
    assert!(
        c[0].sent < 1 << 20,
        "{} bytes of the literal sent",
        c[0].sent
    );
    assert!(c[0].closed.unwrap() - c[0].opened < Duration::from_secs(1));
    assert_eq!(
        c[0].verbs(),
        verbs(&["LOGIN", "CAPABILITY", "EXAMINE", "UID FETCH"])
    );
    assert_eq!(assert_watched(&c[1], "LOGIN"), 1);
    assert_eq!(site.relay.posts().len(), 1);
}

/// A line without end inside IDLE (the 200 MiB of issue 20): refused once it is longer than
/// any answer the watcher takes, having read far less than 1 MiB of it.
fn a_line_without_end_is_refused() {
    let site = Site::new(100);
    site.imap.script(
        On::Idling,
        1,
        vec![Act::Stream(b"* OK ".to_vec(), 200 << 20)],
    );
    let w = site.watch(&[]);
    let url = site.url();
    let want = [
        watching(&url),
        again(
            &url,
            "the server sent a response of more than 278528 bytes",
            1,
        ),
        watching(&url),
    ]
    .concat();
    w.wait_stderr(&want, SOON);
    site.wait_idle(1, 1);
    let (status, stderr) = w.terminate();
    assert_eq!((status, stderr), (Some(0), want));
    let c = site.connections(2);
    assert_eq!(c.len(), 2);
    println!("a line without end: {} bytes sent", c[0].sent);
    assert!(c[0].sent < 1 << 20, "{} bytes of the line sent", c[0].sent);
    assert_eq!(
        c[0].verbs(),
        verbs(&["LOGIN", "CAPABILITY", "EXAMINE", "UID FETCH", "IDLE"])
    );
    assert_watched(&c[1], "LOGIN");
}

/// Untagged lines as fast as they go in answer to EXAMINE, for longer than `--timeout 2s`: the
/// command's whole answer is due within it, however busy the server is.
fn a_flood_in_answer_to_a_command_is_dropped_at_the_timeout() {
    let site = Site::new(100);
    site.imap.script(
        On::Command("EXAMINE"),
        1,
        vec![
            // Far more than a machine takes in 2 s: it ends when the watcher hangs up.
            Act::Flood(vec![b"* OK [UIDNEXT 5] x".to_vec()], 1 << 30),
            Act::Normal,
        ],
    );
    let c = dropped_then_watching(&site, "2s");
    assert_eq!(c[0].verbs(), verbs(&["LOGIN", "CAPABILITY", "EXAMINE"]));
    assert_dropped_after(&c[0], c[0].at[2], Duration::from_secs(2));
    assert_watched(&c[1], "LOGIN");
}

/// A catch-up whose answer comes slower than `--timeout` allows (10 messages 300 ms apart,
/// `--timeout 2s`): what came whole before the cut counts, the phone is woken for it, and the
/// next connection goes on from there instead of starting over (which never ended).
fn a_slow_catch_up_still_makes_progress() {
    let site = Site::new(100);
    // Found at the renewal, so that the slow answer is the one scripted below.
    site.imap.silent_idle();
    let w = site.watch(&["--timeout", "2s"]);
    let url = site.url();
    w.wait_stderr(&watching(&url), SOON);
    site.wait_idle(0, 1);
    let message = chat();
    let uids: Vec<u32> = (0..10).map(|_| site.imap.deliver(&message)).collect();
    // The header block, up to and with its blank line (the corpus message ends lines in LF).
    let header = &message[..message.windows(2).position(|w| w == b"\n\n").unwrap() + 2];
    let mut acts = Vec::new();
    for (i, uid) in uids.iter().enumerate() {
        let mut response = format!(
            "* {} FETCH (UID {uid} BODY[HEADER]<0> {{{}}}\r\n",
            i + 1,
            header.len()
        )
        .into_bytes();
        response.extend_from_slice(header);
        response.extend_from_slice(b")\r\n");
        acts.push(Act::Send(response));
        acts.push(Act::Pause(Duration::from_millis(300)));
    }
    acts.push(Act::tagged("OK done"));
    site.imap.script(On::Command("UID FETCH"), 1, acts);
    let want = format!(
        "{}{}{}",
        watching(&url),
        again(&url, "the server did not answer in time", 1),
        watching(&url)
    );
    w.wait_stderr(&want, SOON * 2);
    // One wakeup for what came before the cut, one for the rest.
    let posts = site.wait_posts(2, SOON);
    let (status, stderr) = w.terminate();
    assert_eq!((status, stderr), (Some(0), want));
    assert_eq!(posts.len(), 2);
    let c = site.connections(2);
    assert_eq!(c.len(), 2);
    let fetches: Vec<String> = c[1]
        .lines
        .iter()
        .filter(|l| l.contains("UID FETCH"))
        .cloned()
        .collect();
    // The second connection asks only for what the first did not get whole: from a UID past
    // the first few, not from the first one again.
    let from: u32 = fetches[0]
        .split("UID FETCH ")
        .nth(1)
        .and_then(|rest| rest.split(':').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{fetches:?}"));
    assert!(
        from > uids[3] && from <= uids[9],
        "{fetches:?}, UIDs {uids:?}"
    );
}

/// 30 messages whose header blocks are each as big as the watcher asks for (256 KiB), in one
/// fetch: handed on as they come, one wakeup, memory bounded.
fn big_header_blocks_in_one_fetch() {
    let site = Site::new(1);
    let w = site.watch(&[]);
    let url = site.url();
    w.wait_stderr(&watching(&url), SOON);
    site.wait_idle(0, 1);
    let mut big = b"From: Dave <dave@example.net>\r\nSubject: big\r\n".to_vec();
    for n in 0.. {
        if big.len() > 262_144 {
            break;
        }
        big.extend_from_slice(format!("X-Filler-{n}: {}\r\n", "a".repeat(60)).as_bytes());
    }
    big.extend_from_slice(b"\r\nhi\r\n");
    let landed = Instant::now();
    site.imap.deliver_all(&vec![big; 30]);
    let posts = site.wait_posts(1, SOON);
    assert!(posts[0] > landed);
    site.wait_idle(0, 2);
    let (status, stderr) = w.terminate();
    assert_eq!((status, stderr), (Some(0), watching(&url)));
    let c = site.connections(1);
    assert_eq!(c.len(), 1);
    assert_eq!(assert_watched(&c[0], "LOGIN"), 1);
    assert!(c[0].sent > 30 * 262_144, "{} bytes sent", c[0].sent);
    assert_eq!(site.relay.posts().len(), 1);
}

/// Gmail refuses an XOAUTH2 token with a challenge (a JSON error in base64), answered with an
/// empty line, then `NO [AUTHENTICATIONFAILED]`. With `--password-command` that is retried at
/// the login pace with a fresh token each time, said once.
fn gmail_xoauth2_refusal_is_retried_with_a_fresh_token() {
    let site = Site::new(200);
    let helper = token_helper(&site);
    site.imap.script(
        On::Command("AUTHENTICATE"),
        2,
        vec![
            // {"status":"400","schemes":"Bearer","scope":"https://mail.google.com/"}
            Act::line(concat!(
                "+ eyJzdGF0dXMiOiI0MDAiLCJzY2hlbWVzIjoiQmVhcmVyIiwic2NvcGUiOiJodHRwczovL21ha",
                "WwuZ29vZ2xlLmNvbS8ifQ=="
            )),
            Act::Expect,
            Act::tagged("NO [AUTHENTICATIONFAILED] Invalid credentials (Failure)"),
        ],
    );
    let w = site.watch(&[
        "--auth",
        "xoauth2",
        "--password-command",
        helper.to_str().unwrap(),
    ]);
    let url = site.url();
    let want = [
        again(
            &url,
            "the server refused the login: Invalid credentials (Failure)",
            120,
        ),
        watching(&url),
    ]
    .concat();
    w.wait_stderr(&want, SOON * 2);
    site.wait_idle(2, 1);
    let (status, stderr) = w.terminate();
    assert_eq!((status, stderr), (Some(0), want));
    let c = site.connections(3);
    assert_eq!(c.len(), 3);
    for (n, ms) in [(1, 600), (2, 1200)] {
        assert_eq!(c[n - 1].verbs(), verbs(&["AUTHENTICATE", ""]));
        let waited = c[n].opened - *c[n - 1].at.last().unwrap();
        assert!(
            waited + MS >= Duration::from_millis(ms),
            "connection {n} after {waited:?}, expected at least {ms} ms"
        );
    }
    assert_watched(&c[2], "AUTHENTICATE");
    site.assert_logins(
        "XOAUTH2",
        &[
            (0, "ya29.fresh-1"),
            (1, "ya29.fresh-2"),
            (2, "ya29.fresh-3"),
        ],
    );
}

/// A token helper as OAuth users have: a fresh token at every run (`ya29.fresh-N`), its runs
/// counted in `<helper>.runs`.
fn token_helper(site: &Site) -> PathBuf {
    let helper = site.sandbox.write(
        "token-helper",
        "#!/bin/sh\nn=$(( $(cat \"$0.runs\" 2>/dev/null || echo 0) + 1 ))\necho $n > \"$0.runs\"\n\
         echo ya29.fresh-$n\n",
    );
    fs::set_permissions(&helper, fs::Permissions::from_mode(0o700)).unwrap();
    helper
}

/// Terminal sequences a hostile server may put in its text, all within what IMAP's grammar
/// allows (7-bit, no CR or NUL): a cleared and coloured terminal, a bell, a window title, a
/// backspace and a DEL.
fn escapes(words: &str) -> (Vec<u8>, String) {
    let text = format!("\x1b[2J\x1b[1;31m{words}\x07 \x1b]0;owned\x07now\x08 \x7fdone.");
    (text.into_bytes(), format!("{words} now done"))
}

/// Puts `text` (the words with a hostile server's bytes around them) in a greeting BYE, an
/// EXAMINE BAD, a BYE inside IDLE, a login `NO [ALERT]` and a bare login NO, in this order over
/// five connections.
fn script_hostile_text(site: &Site, text: fn(&str) -> Vec<u8>) {
    let with = |head: &str, words: &str| {
        let mut t = head.as_bytes().to_vec();
        t.extend(text(words));
        t.extend_from_slice(b"\r\n");
        t
    };
    let imap = &site.imap;
    imap.script(
        On::Greeting,
        1,
        vec![Act::Send(with("* BYE ", "greeting")), Act::Close],
    );
    imap.script(
        On::Command("EXAMINE"),
        1,
        vec![Act::Send(with("{tag} BAD ", "examine"))],
    );
    imap.script(
        On::Idling,
        1,
        vec![Act::Send(with("* BYE ", "idle")), Act::Close],
    );
    imap.script(On::Command("LOGIN"), 2, vec![Act::Normal]);
    imap.script(
        On::Command("LOGIN"),
        1,
        vec![Act::Send(with("{tag} NO [ALERT] ", "alert"))],
    );
    imap.script(
        On::Command("LOGIN"),
        1,
        vec![Act::Send(with("{tag} NO ", "refused"))],
    );
}

/// The connections of [`script_hostile_text`], as the server saw them.
fn assert_hostile_connections(site: &Site, n: usize) {
    let c = site.connections(n);
    let login = ["LOGIN", "CAPABILITY", "EXAMINE"];
    let mut want = vec![
        verbs(&[]),
        verbs(&login),
        verbs(&[&login[..], &["UID FETCH", "IDLE"]].concat()),
        verbs(&["LOGIN"]),
        verbs(&["LOGIN"]),
    ];
    want.truncate(n);
    assert_eq!(
        c[..n].iter().map(Connection::verbs).collect::<Vec<_>>(),
        want
    );
    let logins: Vec<(usize, &str)> = (1..c.len()).map(|n| (n, PASSWORD)).collect();
    site.assert_logins("LOGIN", &logins);
}

/// Terminal escapes in server text: every line clean and exact, every refusal read as it means.
fn terminal_escapes_in_server_text_are_dropped() {
    let site = Site::new(100);
    script_hostile_text(&site, |words| escapes(words).0);
    let cleaned = |words: &str| escapes(words).1;
    let w = site.watch(&[]);
    let url = site.url();
    let (status, stderr) = w.exit();
    let want = [
        again(
            &url,
            &format!("the server said BYE: {}", cleaned("greeting")),
            1,
        ),
        again(&url, &format!("EXAMINE refused: {}", cleaned("examine")), 2),
        watching(&url),
        again(
            &url,
            &format!("the server said BYE: {}", cleaned("idle")),
            4,
        ),
        again(
            &url,
            &format!("the server refused the login: {}", cleaned("alert")),
            120,
        ),
        line(&format!(
            "{url}: the server refused the login: {}; fix the password, then start again",
            cleaned("refused")
        )),
    ]
    .concat();
    assert_eq!((status, stderr), (Some(77), want));
    assert_eq!(site.connections(5).len(), 5);
    assert_hostile_connections(&site, 5);
}

/// Bytes IMAP's grammar has no room for in text (RFC 3501 TEXT-CHAR: 7-bit, no CR, no NUL),
/// which servers send all the same: a CR and a NUL to forge a line, a bidi override, invalid
/// UTF-8. Such an answer is not IMAP: none of it reaches a line, and an answer to the login
/// that is not IMAP, which may be a refusal in another language, is tried again at the login
/// pace, never faster (`-v` shows each try).
fn bytes_beyond_imap_text_never_reach_a_line() {
    let site = Site::new(100);
    script_hostile_text(&site, |words| {
        let mut text = words.as_bytes().to_vec();
        text.extend_from_slice(b"\rdeltapush-mda: forged\x00 \xe2\x80\xaeevil \xff\xfe end.");
        text
    });
    let w = site.watch(&["-v"]);
    let url = site.url();
    let garbled = "the server's answer: Received malformed message";
    let want = [
        again(&url, garbled, 1),
        again(&url, garbled, 2),
        watching(&url),
        again(&url, garbled, 4),
        again(&url, garbled, 120),
        again(&url, garbled, 240),
        watching(&url),
    ]
    .concat();
    w.wait_stderr(&want, SOON * 2);
    site.wait_idle(5, 1);
    let (status, stderr) = w.terminate();
    assert_eq!((status, stderr), (Some(0), want));
    let c = site.connections(6);
    assert_eq!(c.len(), 6);
    assert_hostile_connections(&site, 5);
    for (n, ms) in [(4, 1200), (5, 2400)] {
        let waited = c[n].opened - *c[n - 1].at.last().unwrap();
        assert!(
            waited + MS >= Duration::from_millis(ms),
            "connection {n} after {waited:?}, expected at least {ms} ms"
        );
    }
    assert_watched(&c[5], "LOGIN");
}

/// Gmail's 16th connection: `NO [ALERT] Too many simultaneous connections. (Failure)`, three
/// times, then the login works. Never an exit: retried at the login pace, said once.
fn gmail_connection_limit_is_retried_at_the_login_pace() {
    let site = Site::new(200);
    site.imap.script(
        On::Command("LOGIN"),
        3,
        vec![Act::tagged(
            "NO [ALERT] Too many simultaneous connections. (Failure)",
        )],
    );
    let w = site.watch(&[]);
    let url = site.url();
    let want = format!(
        "{}{}",
        again(
            &url,
            "the server refused the login: Too many simultaneous connections. (Failure)",
            120
        ),
        watching(&url)
    );
    w.wait_stderr(&want, Duration::from_secs(15));
    site.wait_idle(3, 1);
    let landed = site.deliver(&chat());
    let posts = site.wait_posts(1, SOON);
    assert!(posts[0] > landed && posts[0] - landed < Duration::from_secs(1));
    let (status, stderr) = w.terminate();
    assert_eq!((status, stderr), (Some(0), want));
    let c = site.connections(4);
    assert_eq!(c.len(), 4);
    // 120 s, 240 s, 480 s, at 200 times the speed.
    for (i, pace) in [600, 1200, 2400].into_iter().enumerate() {
        let waited = c[i + 1].opened - c[i].at[0];
        assert!(
            waited + MS >= Duration::from_millis(pace)
                && waited < Duration::from_millis(pace + 1000),
            "connection {}: waited {waited:?}, expected {pace} ms",
            i + 1
        );
        assert_eq!(c[i].verbs(), verbs(&["LOGIN"]));
    }
    assert_watched(&c[3], "LOGIN");
    site.assert_logins(
        "LOGIN",
        &[(0, PASSWORD), (1, PASSWORD), (2, PASSWORD), (3, PASSWORD)],
    );
    assert_eq!(site.relay.posts().len(), 1);
}

/// Outlook: XOAUTH2 with a token from the command, fresh at every login. The session ends with
/// `AccessTokenExpired`; the next token is refused with a bare NO twice (retried at the login
/// pace, said once); EXAMINE is throttled with a suggested backoff time, honoured.
fn outlook_expired_tokens_and_throttling() {
    let site = Site::new(100);
    let helper = token_helper(&site);
    site.imap.script(
        On::Idling,
        1,
        vec![
            Act::line("* BYE Session invalidated - AccessTokenExpired"),
            Act::Close,
        ],
    );
    site.imap
        .script(On::Command("AUTHENTICATE"), 1, vec![Act::Normal]);
    site.imap.script(
        On::Command("AUTHENTICATE"),
        2,
        vec![Act::tagged("NO AUTHENTICATE failed.")],
    );
    site.imap
        .script(On::Command("EXAMINE"), 1, vec![Act::Normal]);
    site.imap.script(
        On::Command("EXAMINE"),
        1,
        vec![Act::tagged(
            "BAD Request is throttled. Suggested Backoff Time: 30000 milliseconds",
        )],
    );
    let w = site.watch(&[
        "--auth",
        "xoauth2",
        "--password-command",
        helper.to_str().unwrap(),
    ]);
    let url = site.url();
    let want = [
        watching(&url),
        again(
            &url,
            "the server said BYE: Session invalidated - AccessTokenExpired",
            1,
        ),
        again(
            &url,
            "the server refused the login: AUTHENTICATE failed",
            120,
        ),
        again(
            &url,
            "EXAMINE refused: Request is throttled. Suggested Backoff Time: 30000 milliseconds",
            30,
        ),
        watching(&url),
    ]
    .concat();
    w.wait_stderr(&want, Duration::from_secs(15));
    site.wait_idle(4, 1);
    let landed = site.deliver(&chat());
    let posts = site.wait_posts(1, SOON);
    assert!(posts[0] > landed);
    let (status, stderr) = w.terminate();
    assert_eq!((status, stderr), (Some(0), want));
    let c = site.connections(5);
    assert_eq!(c.len(), 5);
    // From the refused command on: the watcher cannot have begun to wait before it.
    let waited = |n: usize| c[n].opened - *c[n - 1].at.last().unwrap();
    // The login pace, 120 s then 240 s; the server's 30 s rather than a backoff of 2 s.
    for (n, ms) in [(2, 1200), (3, 2400), (4, 300)] {
        assert!(
            waited(n) + MS >= Duration::from_millis(ms),
            "connection {n} after {:?}, expected at least {ms} ms",
            waited(n)
        );
    }
    assert_eq!(
        c[0].verbs(),
        verbs(&["AUTHENTICATE", "CAPABILITY", "EXAMINE", "UID FETCH", "IDLE"])
    );
    assert_eq!(c[1].verbs(), verbs(&["AUTHENTICATE"]));
    assert_eq!(c[2].verbs(), verbs(&["AUTHENTICATE"]));
    assert_eq!(
        c[3].verbs(),
        verbs(&["AUTHENTICATE", "CAPABILITY", "EXAMINE"])
    );
    assert_watched(&c[4], "AUTHENTICATE");
    let tokens: Vec<String> = (1..=5).map(|n| format!("ya29.fresh-{n}")).collect();
    site.assert_logins(
        "XOAUTH2",
        &tokens
            .iter()
            .enumerate()
            .map(|(n, t)| (n, t.as_str()))
            .collect::<Vec<_>>(),
    );
    let runs = fs::read_to_string(helper.with_extension("runs")).unwrap_or_default();
    assert_eq!(runs, "5\n", "the helper's runs");
    assert_eq!(site.relay.posts().len(), 1);
}

/// An IDLE that never tells of new mail: the message is found at the renewal (300 s, here 3 s),
/// the watcher says once that it renews every 60 s from now on, and the next such message is
/// woken within that.
fn a_silent_idle_is_renewed_more_often() {
    let site = Site::new(100);
    site.imap.silent_idle();
    let w = site.watch(&[]);
    let url = site.url();
    w.wait_stderr(&watching(&url), SOON);
    site.wait_idle(0, 1);
    let idled = Instant::now();
    site.deliver(&chat());
    let learned = line(&format!(
        "{url}: IDLE did not announce new mail; renewing it every 60 s from now on"
    ));
    let posts = site.wait_posts(1, SOON);
    let late = posts[0] - idled;
    assert!(
        late >= Duration::from_millis(2900) && late < Duration::from_millis(4000),
        "woken {late:?} after IDLE began, expected at its renewal after 3 s"
    );
    w.wait_stderr(&learned, SOON);
    for n in 2..=3 {
        // Inside IDLE, not amid a renewal, where the renewal's fetch would find it.
        site.wait_in_idle(0);
        let landed = site.deliver(&chat());
        let posts = site.wait_posts(n, SOON);
        let late = posts[n - 1] - landed;
        assert!(
            late < Duration::from_millis(1000),
            "message {n} woken {late:?} after it landed, expected within 600 ms"
        );
    }
    let (status, stderr) = w.terminate();
    assert_eq!(
        (status, stderr),
        (Some(0), format!("{}{learned}", watching(&url)))
    );
    let c = site.connections(1);
    assert_eq!(c.len(), 1);
    assert_watched(&c[0], "LOGIN");
    assert_eq!(site.relay.posts().len(), 3);
}

/// `* OK Still here` every 200 ms inside IDLE: no fetch for them, no memory.
fn keepalives_cost_nothing() {
    let site = Site::new(1);
    site.imap
        .keepalive("* OK Still here", Duration::from_millis(200));
    let w = site.watch(&[]);
    let url = site.url();
    w.wait_stderr(&watching(&url), SOON);
    site.wait_idle(0, 1);
    // A wakeup first: what a POST costs is in the peak before the keepalives are counted.
    let landed = site.deliver(&chat());
    let posts = site.wait_posts(1, SOON);
    assert!(posts[0] > landed && posts[0] - landed < Duration::from_secs(1));
    site.wait_idle(0, 2);
    let before = (w.peak_kib(), site.imap.connections()[0].sent);
    let keepalive = "* OK Still here\r\n".len() as u64;
    let keepalives = || (site.imap.connections()[0].sent - before.1) / keepalive;
    wait_for(SOON, "10 keepalives", || keepalives() >= 10);
    let after = (w.peak_kib(), keepalives());
    assert!(
        after.0 <= before.0 + 64,
        "the peak grew from {} to {} KiB with {} keepalives",
        before.0,
        after.0,
        after.1
    );
    let (status, stderr) = w.terminate();
    assert_eq!((status, stderr), (Some(0), watching(&url)));
    let c = site.connections(1);
    assert_eq!(
        c[0].verbs(),
        verbs(&[
            "LOGIN",
            "CAPABILITY",
            "EXAMINE",
            "UID FETCH",
            "IDLE",
            "DONE",
            "UID FETCH",
            "IDLE",
            "DONE",
            "LOGOUT",
        ])
    );
    assert_eq!(site.relay.posts().len(), 1);
}

/// With a password file, `NO [AUTHENTICATIONFAILED]` and a bare NO end the watcher after
/// exactly one login (exit 77); `NO [UNAVAILABLE]` is tried again.
fn wrong_credentials_end_the_watcher_and_unavailable_does_not() {
    for (answer, said) in [
        (
            "NO [AUTHENTICATIONFAILED] Invalid credentials (Failure)",
            "Invalid credentials (Failure)",
        ),
        ("NO LOGIN failed.", "LOGIN failed"),
    ] {
        let site = Site::new(100);
        site.imap
            .script(On::Command("LOGIN"), usize::MAX, vec![Act::tagged(answer)]);
        let w = site.watch(&[]);
        let (status, stderr) = w.exit();
        assert_eq!(
            (status, stderr),
            (
                Some(77),
                line(&format!(
                    "{}: the server refused the login: {said}; fix the password, then start \
                     again",
                    site.url()
                ))
            ),
            "{answer}"
        );
        let c = site.connections(1);
        assert_eq!(c.len(), 1, "{answer}");
        assert_eq!(c[0].verbs(), verbs(&["LOGIN"]), "{answer}");
        site.assert_logins("LOGIN", &[(0, PASSWORD)]);
    }
    let site = Site::new(100);
    site.imap.script(
        On::Command("LOGIN"),
        1,
        vec![Act::tagged("NO [UNAVAILABLE] Maintenance, try again later")],
    );
    let w = site.watch(&[]);
    let url = site.url();
    let want = format!(
        "{}{}",
        again(
            &url,
            "login failed for now: Maintenance, try again later",
            1
        ),
        watching(&url)
    );
    w.wait_stderr(&want, SOON);
    site.wait_idle(1, 1);
    let (status, stderr) = w.terminate();
    assert_eq!((status, stderr), (Some(0), want));
    let c = site.connections(2);
    assert_eq!(c.len(), 2);
    assert_eq!(c[0].verbs(), verbs(&["LOGIN"]));
    assert_watched(&c[1], "LOGIN");
    site.assert_logins("LOGIN", &[(0, PASSWORD), (1, PASSWORD)]);
}

/// EXAMINE answered with a NO that says the mailbox is not there for this user: exit 78 after
/// one try. A NO that says "not now" is tried again.
fn a_mailbox_that_is_not_there_ends_the_watcher() {
    for (answer, said) in [
        (
            "NO [NONEXISTENT] Mailbox doesn't exist: Chats",
            "Mailbox doesn't exist: Chats",
        ),
        ("NO [NOPERM] Permission denied.", "Permission denied"),
        ("NO Mailbox does not exist", "Mailbox does not exist"),
    ] {
        let site = Site::new(100);
        site.imap.script(
            On::Command("EXAMINE"),
            usize::MAX,
            vec![Act::tagged(answer)],
        );
        let url = format!("{}/Chats", site.url());
        let w = Watcher::spawn(site.sandbox.home.path(), site.command(&url, &[]));
        let (status, stderr) = w.exit();
        assert_eq!(
            (status, stderr),
            (
                Some(78),
                line(&format!(
                    "{url}: the server cannot open the mailbox: {said}"
                ))
            ),
            "{answer}"
        );
        let c = site.connections(1);
        assert_eq!(c.len(), 1, "{answer}");
        assert_eq!(c[0].verbs(), verbs(&["LOGIN", "CAPABILITY", "EXAMINE"]));
        assert_eq!(c[0].lines[2], "EXAMINE Chats");
        site.assert_logins("LOGIN", &[(0, PASSWORD)]);
    }
}

/// A refused UID FETCH, IDLE, EXAMINE (`NO [UNAVAILABLE]`) and NOOP: each tried again after the
/// backoff, which starts over after a connection that watched for its 60 s.
fn refused_commands_are_tried_again() {
    let site = Site::new(100);
    site.imap.script(
        On::Command("UID FETCH"),
        1,
        vec![Act::tagged("NO [SERVERBUG] Internal error")],
    );
    site.imap.script(
        On::Command("IDLE"),
        1,
        vec![Act::tagged("BAD Command not allowed now.")],
    );
    site.imap
        .script(On::Command("EXAMINE"), 2, vec![Act::Normal]);
    site.imap.script(
        On::Command("EXAMINE"),
        1,
        vec![Act::tagged("NO [UNAVAILABLE] Mailbox is locked")],
    );
    site.imap.script(
        On::Command("NOOP"),
        1,
        vec![Act::tagged("NO [SERVERBUG] Try again")],
    );
    let w = site.watch(&[]);
    let url = site.url();
    let want = [
        again(&url, "UID FETCH refused: Internal error", 1),
        watching(&url),
        again(&url, "IDLE refused: Command not allowed now", 2),
        again(&url, "EXAMINE refused: Mailbox is locked", 4),
        watching(&url),
        // At the renewal (300 s, here 3 s): a connection that watched that long was fine.
        again(&url, "NOOP refused: Try again", 1),
        watching(&url),
    ]
    .concat();
    w.wait_stderr(&want, SOON * 2);
    site.wait_idle(4, 1);
    let (status, stderr) = w.terminate();
    assert_eq!((status, stderr), (Some(0), want));
    let c = site.connections(5);
    assert_eq!(c.len(), 5);
    let login = ["LOGIN", "CAPABILITY", "EXAMINE"];
    assert_eq!(
        c[..4].iter().map(Connection::verbs).collect::<Vec<_>>(),
        [
            verbs(&[&login[..], &["UID FETCH"]].concat()),
            verbs(&[&login[..], &["UID FETCH", "IDLE"]].concat()),
            verbs(&login),
            verbs(&[&login[..], &["UID FETCH", "IDLE", "DONE", "NOOP"]].concat()),
        ]
    );
    assert_watched(&c[4], "LOGIN");
}

/// A server without IDLE is asked every 30 s (here 300 ms): a NOOP and a fetch each time.
fn a_server_without_idle_is_polled() {
    let site = Site::new(100);
    site.imap.capabilities("IMAP4rev1");
    let w = site.watch(&[]);
    let url = site.url();
    let want = line(&format!(
        "watching {url}, asking every 30 s: the server offers no IDLE"
    ));
    w.wait_stderr(&want, SOON);
    let landed = site.deliver(&chat());
    let posts = site.wait_posts(1, SOON);
    let late = posts[0] - landed;
    assert!(late < Duration::from_millis(800), "woken after {late:?}");
    let noops = || {
        site.imap.connections()[0]
            .verbs()
            .iter()
            .filter(|v| *v == "NOOP")
            .count()
    };
    wait_for(SOON, "5 polls", || noops() >= 5);
    let (status, stderr) = w.terminate();
    assert_eq!((status, stderr), (Some(0), want));
    let c = site.connections(1);
    assert_eq!(c.len(), 1);
    let v = c[0].verbs();
    // Each poll a NOOP and a fetch; a fetch that heard of new mail (the message landed between
    // the NOOP and it) fetches again, once; SIGTERM may find it between a NOOP and its fetch.
    let start = verbs(&["LOGIN", "CAPABILITY", "EXAMINE", "UID FETCH"]);
    assert!(
        v.starts_with(&start) && v.ends_with(&verbs(&["LOGOUT"])),
        "{v:?}"
    );
    let mut rest = &v[start.len()..v.len() - 1];
    let mut refetched = 0;
    while !rest.is_empty() {
        let fetches = rest[1..].iter().take_while(|v| *v == "UID FETCH").count();
        assert!(rest[0] == "NOOP" && fetches <= 2, "not polls: {v:?}");
        refetched += fetches.saturating_sub(1);
        rest = &rest[1 + fetches..];
    }
    assert!(refetched <= 1, "fetched again {refetched} times: {v:?}");
    let asked: Vec<Instant> = (0..v.len())
        .filter(|&i| v[i] == "NOOP")
        .map(|i| c[0].at[i])
        .collect();
    for pair in asked.windows(2) {
        let every = pair[1] - pair[0];
        assert!(
            every + MS >= Duration::from_millis(300) && every < Duration::from_millis(800),
            "polled after {every:?}, expected 300 ms"
        );
    }
    assert_eq!(site.relay.posts().len(), 1);
}

#[test]
fn watch_against_the_servers_of_the_internet() {
    run_cases(&[
        ("a_well_behaved_server", a_well_behaved_server),
        (
            "a_flood_of_untagged_codes_costs_no_memory",
            a_flood_of_untagged_codes_costs_no_memory,
        ),
        (
            "a_trickled_greeting_is_dropped_at_the_timeout",
            a_trickled_greeting_is_dropped_at_the_timeout,
        ),
        (
            "a_trickled_answer_is_dropped_at_the_timeout",
            a_trickled_answer_is_dropped_at_the_timeout,
        ),
        (
            "a_trickled_line_inside_idle_is_dropped_at_the_timeout",
            a_trickled_line_inside_idle_is_dropped_at_the_timeout,
        ),
        (
            "a_huge_literal_is_refused_unread",
            a_huge_literal_is_refused_unread,
        ),
        (
            "a_slow_catch_up_still_makes_progress",
            a_slow_catch_up_still_makes_progress,
        ),
        (
            "terminal_escapes_in_server_text_are_dropped",
            terminal_escapes_in_server_text_are_dropped,
        ),
        (
            "bytes_beyond_imap_text_never_reach_a_line",
            bytes_beyond_imap_text_never_reach_a_line,
        ),
        (
            "gmail_connection_limit_is_retried_at_the_login_pace",
            gmail_connection_limit_is_retried_at_the_login_pace,
        ),
        (
            "outlook_expired_tokens_and_throttling",
            outlook_expired_tokens_and_throttling,
        ),
        (
            "a_silent_idle_is_renewed_more_often",
            a_silent_idle_is_renewed_more_often,
        ),
        ("keepalives_cost_nothing", keepalives_cost_nothing),
        (
            "wrong_credentials_end_the_watcher_and_unavailable_does_not",
            wrong_credentials_end_the_watcher_and_unavailable_does_not,
        ),
        (
            "a_mailbox_that_is_not_there_ends_the_watcher",
            a_mailbox_that_is_not_there_ends_the_watcher,
        ),
        (
            "refused_commands_are_tried_again",
            refused_commands_are_tried_again,
        ),
        (
            "a_server_without_idle_is_polled",
            a_server_without_idle_is_polled,
        ),
        (
            "a_line_without_end_is_refused",
            a_line_without_end_is_refused,
        ),
        (
            "a_flood_in_answer_to_a_command_is_dropped_at_the_timeout",
            a_flood_in_answer_to_a_command_is_dropped_at_the_timeout,
        ),
        (
            "big_header_blocks_in_one_fetch",
            big_header_blocks_in_one_fetch,
        ),
        (
            "gmail_xoauth2_refusal_is_retried_with_a_fresh_token",
            gmail_xoauth2_refusal_is_retried_with_a_fresh_token,
        ),
    ]);
}
