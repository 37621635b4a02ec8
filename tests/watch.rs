//! `deltapush-mda --watch` (issue 17) against the host's real Dovecot 2.3 on 127.0.0.1, with
//! the stand-in relay recording each wakeup: every chat message woken, automatic mail not,
//! reconnects, restarts, a refused login, TLS both ways, a server without IDLE, SIGTERM.
//!
//! The cases mostly wait on real time, so they run side by side (`run_cases`), each with a
//! Dovecot and a relay of its own.

mod common;

use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use common::courier::Courier;
use common::dovecot::{Dovecot, MailServer, USER, Variant, Version};
use common::lmtp::Lmtp;
use common::realmail::{Ca, Daemon, MailUser, poll, wait_for};
use common::{Relay, Sandbox, TOKEN_BODY, bounce, chat, line, run_cases, token};

/// How long a chat message may wait for its wakeup with `--interval 0`.
const WITHIN: Duration = Duration::from_secs(1);

/// A Dovecot, a relay and a sandbox: what every watcher case starts from.
struct Site {
    dc: Dovecot,
    relay: Relay,
    sandbox: Sandbox,
    ca: Ca,
    password_file: PathBuf,
    token: String,
    // Last: the server stops before its files go.
    dir: tempfile::TempDir,
}

impl Site {
    fn new(variant: Variant) -> Site {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new(&dir.path().join("ca"));
        let dc = Dovecot::start_variant(&dir.path().join("dovecot"), &ca, MailUser::get(), variant);
        let sandbox = Sandbox::new();
        let password_file = sandbox.write("password", format!("{}\n", dc.password));
        fs::set_permissions(&password_file, fs::Permissions::from_mode(0o600)).unwrap();
        Site {
            dc,
            relay: Relay::start(),
            sandbox,
            ca,
            password_file,
            token: token(17),
            dir,
        }
    }

    fn url(&self) -> String {
        let scheme = match self.is_starttls() {
            true => "imap",
            false => "imaps",
        };
        format!(
            "{scheme}://{}@127.0.0.1:{}",
            USER.replace('@', "%40"),
            self.dc.port
        )
    }

    fn is_starttls(&self) -> bool {
        fs::read_to_string(self.dir.path().join("dovecot/dovecot.conf"))
            .unwrap()
            .contains("imaps {\n    address = 127.0.0.1\n    port = 0\n")
    }

    /// The watcher's command line: this site's URL, password file, relay and token.
    fn command(&self, extra: &[&str]) -> Command {
        self.command_for(&self.url(), extra)
    }

    fn command_for(&self, url: &str, extra: &[&str]) -> Command {
        let mut cmd = self.sandbox.command();
        cmd.arg("--watch")
            .arg(url)
            .arg("--password-file")
            .arg(&self.password_file)
            .args(["--url", &self.relay.url])
            .args(extra)
            .arg(&self.token)
            .env("SSL_CERT_FILE", &self.ca.cert);
        cmd
    }

    /// Starts a watcher and waits until it idles (or polls) on the mailbox.
    fn watch(&self, extra: &[&str]) -> Watcher {
        let w = self.watch_unready(self.command(extra));
        w.wait_line(&format!("watching {}", self.url()), Duration::from_secs(10));
        w
    }

    fn watch_unready(&self, cmd: Command) -> Watcher {
        Watcher::spawn(self.dir.path(), cmd)
    }

    /// Delivers `message` into INBOX; returns when it landed.
    fn deliver(&self, message: &[u8]) -> Instant {
        self.dc.deliver(message);
        Instant::now()
    }

    /// Waits until the relay has `n` POSTs (each of this site's token).
    fn wait_posts(&self, n: usize, limit: Duration) -> Vec<Instant> {
        let got = poll(limit, || self.relay.posts().len() >= n);
        let times = self.relay.post_times(&self.token);
        assert!(
            got.is_some(),
            "{} POSTs within {limit:?}, expected {n}; dovecot log:\n{}",
            times.len(),
            self.dc.log()
        );
        times
    }

    fn assert_woken(&self, landed: &[Instant]) {
        assert_woken(&self.relay, &self.token, landed);
    }

    fn assert_nothing_seen(&self) {
        let messages = self.dc.messages();
        assert!(!messages.is_empty());
        assert!(
            messages.iter().all(|m| !m.seen && !m.flags().contains('S')),
            "a message marked \\Seen: {messages:?}"
        );
    }
}

/// Asserts that every landing has a POST after it within [`WITHIN`], and that no POST came
/// without one: messages fetched together share a wakeup, so there may be fewer POSTs.
fn assert_woken(relay: &Relay, token: &str, landed: &[Instant]) {
    let covered = |posts: &[Instant]| {
        landed
            .iter()
            .all(|l| posts.iter().any(|p| p >= l && *p - *l <= WITHIN))
    };
    let done = poll(Duration::from_secs(10), || {
        covered(&relay.post_times(token))
    });
    let posts = relay.post_times(token);
    for (i, l) in landed.iter().enumerate() {
        assert!(
            done.is_some() || posts.iter().any(|p| p >= l && *p - *l <= WITHIN),
            "message {i} not woken within {WITHIN:?}; POSTs after it: {:?}",
            posts
                .iter()
                .filter(|p| *p >= l)
                .map(|p| *p - *l)
                .collect::<Vec<_>>()
        );
    }
    assert!(done.is_some());
    assert!(posts.len() <= landed.len(), "a POST without a message");
    assert!(posts[0] >= landed[0], "a POST before the first message");
}

struct Watcher {
    daemon: Daemon,
    stderr: PathBuf,
}

impl Watcher {
    /// Starts `cmd`, its stdout and stderr in files of `dir`.
    fn spawn(dir: &std::path::Path, mut cmd: Command) -> Watcher {
        static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let stderr = dir.join(format!("watcher-{n}.stderr"));
        cmd.stdout(File::create(dir.join("watcher.stdout")).unwrap())
            .stderr(File::create(&stderr).unwrap());
        Watcher {
            daemon: Daemon::spawn("deltapush-mda --watch", cmd),
            stderr,
        }
    }

    fn stderr(&self) -> String {
        let text = fs::read_to_string(&self.stderr).unwrap_or_default();
        assert!(!text.contains(TOKEN_BODY), "a token shown: {text}");
        assert!(!text.contains("pw-"), "a password shown: {text}");
        assert!(!text.contains("panicked"), "a panic: {text}");
        text
    }

    fn wait_line(&self, start: &str, limit: Duration) {
        let want = format!("deltapush-mda: {start}");
        let found = poll(limit, || {
            self.stderr().lines().any(|l| l.starts_with(&want))
        });
        assert!(
            found.is_some(),
            "no line {want:?} within {limit:?}; stderr:\n{}",
            self.stderr()
        );
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: a plain syscall on the watcher this test started.
        unsafe { libc::kill(self.daemon.pid() as libc::pid_t, signal) };
    }

    /// SIGTERM, then its exit status (within 5 s).
    fn terminate(mut self) -> (ExitStatus, String) {
        self.signal(libc::SIGTERM);
        let status = self.daemon.wait(Duration::from_secs(5));
        (status, self.stderr())
    }
}

fn watching(site: &Site) -> String {
    line(&format!("watching {} with IDLE", site.url()))
}

// ---------------------------------------------------------------------------------------------

fn every_chat_message_is_woken() {
    let site = Site::new(Variant::default());
    // Old mail is not news: the first start begins from now.
    site.deliver(&chat());
    let w = site.watch(&["--interval", "0"]);
    let mut landed = vec![site.deliver(&chat())];
    site.assert_woken(&landed);
    for gap in [30, 100, 300, 540, 1000] {
        landed.push(site.deliver(&chat()));
        std::thread::sleep(Duration::from_millis(gap));
        landed.push(site.deliver(&chat()));
        site.assert_woken(&landed);
    }
    // Right after an automatic message, where getmail misses them.
    for gap in [0, 100, 520] {
        site.deliver(&bounce());
        std::thread::sleep(Duration::from_millis(gap));
        landed.push(site.deliver(&chat()));
        site.assert_woken(&landed);
    }
    for _ in 0..10 {
        landed.push(site.deliver(&chat()));
    }
    site.assert_woken(&landed);
    site.assert_nothing_seen();
    let (status, stderr) = w.terminate();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert_eq!(stderr, watching(&site));
    assert!(
        site.dc.log().contains("Logged out"),
        "no LOGOUT on SIGTERM:\n{}",
        site.dc.log()
    );
}

fn automatic_mail_and_the_rules_wake_no_one() {
    let site = Site::new(Variant::default());
    let w = site.watch(&["--interval", "0", "--skip-from", "carol@example.net"]);
    site.deliver(&bounce());
    site.deliver(b"From: Carol <carol@example.net>\r\nSubject: from my other device\r\n\r\nhi\r\n");
    // The chat message after them is the only one woken, and proves both were seen.
    let landed = site.deliver(&chat());
    site.assert_woken(&[landed]);
    // A header block of 2 MB is read as far as a delivery reads one, and woken.
    let mut huge = b"From: Dave <dave@example.net>\r\n".to_vec();
    for n in 0..30_000 {
        huge.extend_from_slice(format!("X-Filler-{n}: {}\r\n", "a".repeat(60)).as_bytes());
    }
    huge.extend_from_slice(b"\r\nhi\r\n");
    let big = site.deliver(&huge);
    site.assert_woken(&[landed, big]);
    let (status, stderr) = w.terminate();
    assert_eq!((status.code(), stderr), (Some(0), watching(&site)));
}

fn reconnects_after_the_imap_process_is_killed() {
    let site = Site::new(Variant::default());
    let w = site.watch(&["--interval", "0"]);
    let before = site.deliver(&chat());
    site.assert_woken(&[before]);
    // Killed, and mail arrives while the session is gone.
    assert_eq!(site.dc.kill_sessions(), 1);
    let landed = site.deliver(&chat());
    // Back within the first backoff (1 s), then the message that landed meanwhile.
    let posts = site.wait_posts(2, Duration::from_secs(5));
    assert!(posts[1] > landed && posts[1] - landed < Duration::from_secs(3));
    let after = site.deliver(&chat());
    let posts = site.wait_posts(3, Duration::from_secs(5));
    assert!(posts[2] - after <= WITHIN);
    let (status, stderr) = w.terminate();
    assert_eq!(status.code(), Some(0));
    assert_eq!(
        stderr,
        format!(
            "{}{}{}",
            watching(&site),
            line(&format!(
                "{}: the server closed the connection; trying again in 1 s",
                site.url()
            )),
            watching(&site)
        )
    );
    assert_eq!(site.relay.posts().len(), 3, "one wakeup each");
}

fn reconnects_after_the_server_restarts() {
    let mut site = Site::new(Variant::default());
    // The backoff on a clock 16 times faster: 1, 2, 4, 8, 16, 32 s are 1/16 s and so on.
    let w = site.watch(&["--interval", "0", "--watch-speedup", "16"]);
    let landed = std::cell::Cell::new(None);
    // Down for 3 s, with mail arriving meanwhile. The watcher tries again after 1/16, 3/16, 7/16,
    // 15/16, 31/16 and 63/16 s: the last one finds the server back.
    site.dc.restart(|dc| {
        dc.deliver(&chat());
        std::thread::sleep(Duration::from_millis(1500));
        dc.deliver(&chat());
        landed.set(Some(Instant::now()));
        std::thread::sleep(Duration::from_millis(1500));
    });
    // Both fetched at once after the reconnect: one wakeup for the two.
    let posts = site.wait_posts(1, Duration::from_secs(15));
    assert!(posts[0] > landed.get().unwrap());
    let after = site.deliver(&chat());
    let posts = site.wait_posts(2, Duration::from_secs(5));
    assert!(posts[1] - after <= WITHIN);
    let (status, stderr) = w.terminate();
    assert_eq!(status.code(), Some(0));
    let lines: Vec<&str> = stderr.lines().collect();
    let url = site.url();
    assert_eq!(lines[0], format!("deltapush-mda: watching {url} with IDLE"));
    // Dovecot says BYE on its way down, unless the session process is gone first.
    assert!(
        [
            format!("deltapush-mda: {url}: the server said BYE: Server shutting down; trying again in 1 s"),
            format!("deltapush-mda: {url}: the server closed the connection; trying again in 1 s"),
        ]
        .contains(&lines[1].to_string()),
        "{stderr}"
    );
    // The retries until the server is back find nobody listening, said once; the first may
    // still meet a login process of the old server, which resets the connection.
    let refused = format!(
        "deltapush-mda: {url}: connecting to 127.0.0.1:{}: connection refused; trying again in",
        site.dc.port
    );
    let middle = &lines[2..lines.len() - 1];
    assert!(
        (1..=2).contains(&middle.len())
            && middle.last().unwrap().starts_with(&refused)
            && middle
                .iter()
                .all(|l| l.starts_with(&format!("deltapush-mda: {url}: "))),
        "{stderr}"
    );
    assert_eq!(
        lines.last().unwrap(),
        &format!("deltapush-mda: watching {url} with IDLE")
    );
    assert_eq!(site.relay.posts().len(), 2, "none woken twice");
}

fn a_restarted_watcher_wakes_once_for_mail_that_came_meanwhile() {
    let site = Site::new(Variant::default());
    let w = site.watch(&["--interval", "0"]);
    // One watcher per mailbox and cache dir: a second would wake the phone twice.
    let mut second = site.watch_unready(site.command(&["--interval", "0"]));
    assert_eq!(second.daemon.wait(Duration::from_secs(5)).code(), Some(69));
    assert_eq!(
        second.stderr(),
        line(&format!(
            "{}: another deltapush-mda --watch watches this mailbox with this cache dir",
            site.url()
        ))
    );
    let (status, _) = w.terminate();
    assert_eq!(status.code(), Some(0));
    let state: Vec<PathBuf> = fs::read_dir(site.sandbox.cache_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("watch-")
        })
        .collect();
    // The state, and the lock that keeps a second watcher off it.
    assert_eq!(state.len(), 2, "{state:?}");
    assert!(
        state
            .iter()
            .any(|p| p.extension().is_some_and(|e| e == "lock"))
    );
    for p in &state {
        assert_eq!(common::mode(p), 0o600, "{}", p.display());
    }
    assert_eq!(common::mode(&site.sandbox.cache_dir()), 0o700);
    let landed = [site.deliver(&chat()), site.deliver(&chat())];
    let w = site.watch(&["--interval", "0"]);
    // One wakeup for the two that came meanwhile.
    let posts = site.wait_posts(1, Duration::from_secs(5));
    assert!(posts[0] > landed[1]);
    // And nothing twice: a third message gets the second POST, no more.
    let third = site.deliver(&chat());
    site.wait_posts(2, Duration::from_secs(5));
    let (status, stderr) = w.terminate();
    assert_eq!((status.code(), stderr), (Some(0), watching(&site)));
    let posts = site.relay.post_times(&site.token);
    assert_eq!(posts.len(), 2);
    assert!(posts[1] - third <= WITHIN);
}

fn a_refused_login_is_one_line_and_exit_77() {
    let site = Site::new(Variant::default());
    fs::write(&site.password_file, "wrong\n").unwrap();
    let mut w = site.watch_unready(site.command(&[]));
    let status = w.daemon.wait(Duration::from_secs(15));
    assert_eq!(status.code(), Some(77));
    assert_eq!(
        w.stderr(),
        line(&format!(
            "{}: the server refused the login: Authentication failed; fix the password, then \
             start again",
            site.url()
        ))
    );
    // Dovecot logs the attempt once the client has gone.
    wait_for(
        Duration::from_secs(5),
        "the failed login in dovecot's log",
        || site.dc.log().contains("auth failed"),
    );
    assert_eq!(
        site.dc.log().matches("auth failed").count(),
        1,
        "{}",
        site.dc.log()
    );
    assert!(
        site.dc.log().contains("auth failed, 1 attempts"),
        "{}",
        site.dc.log()
    );
}

fn a_mailbox_that_cannot_be_opened_is_one_line_and_exit_78() {
    let site = Site::new(Variant::default());
    let url = format!("{}/No%20such", site.url());
    let mut w = site.watch_unready(site.command_for(&url, &[]));
    let status = w.daemon.wait(Duration::from_secs(10));
    assert_eq!(status.code(), Some(78));
    // Dovecot's own words follow, with its timings.
    let stderr = w.stderr();
    let ours = line(&format!(
        "{url}: the server cannot open the mailbox: Mailbox doesn't exist: No such"
    ));
    assert!(
        stderr.starts_with(ours.trim_end()) && stderr.lines().count() == 1,
        "{stderr}"
    );
}

/// A password command that fails is retried with the backoff, said once; the password command
/// is run at every login, so a fixed one is picked up by the next try.
fn a_failing_password_command_is_retried_without_a_flood() {
    let site = Site::new(Variant::default());
    let helper = site.sandbox.write("helper", "#!/bin/sh\nexit 3\n");
    fs::set_permissions(&helper, fs::Permissions::from_mode(0o700)).unwrap();
    let mut cmd = site.sandbox.command();
    cmd.arg("--watch")
        .arg(site.url())
        .arg("--password-command")
        .arg(&helper)
        .args(["--interval", "0", "--url", &site.relay.url])
        .arg(&site.token)
        .env("SSL_CERT_FILE", &site.ca.cert);
    let w = site.watch_unready(cmd);
    let failed = line(&format!(
        "{}: --password-command: failed (exit status: 3); trying again in 1 s",
        site.url()
    ));
    wait_for(Duration::from_secs(5), "the failed command's line", || {
        w.stderr() == failed
    });
    // Fixed before the retry after 1 s (or the one after 3 s): it logs in.
    // Renamed into place: the watcher may be running the old one at this very moment.
    let fixed = site.sandbox.write(
        "helper.new",
        format!("#!/bin/sh\necho {}\n", site.dc.password),
    );
    fs::set_permissions(&fixed, fs::Permissions::from_mode(0o700)).unwrap();
    fs::rename(&fixed, &helper).unwrap();
    w.wait_line(&format!("watching {}", site.url()), Duration::from_secs(8));
    let landed = site.deliver(&chat());
    site.assert_woken(&[landed]);
    let (status, stderr) = w.terminate();
    assert_eq!(status.code(), Some(0));
    assert!(
        stderr.starts_with(&failed) && stderr.ends_with(&watching(&site)),
        "{stderr}"
    );
}

fn starttls_with_a_private_ca() {
    let site = Site::new(Variant {
        starttls: true,
        ..Variant::default()
    });
    assert!(site.url().starts_with("imap://"));
    let w = site.watch(&["--interval", "0"]);
    let landed = site.deliver(&chat());
    site.assert_woken(&[landed]);
    let (status, stderr) = w.terminate();
    assert_eq!((status.code(), stderr), (Some(0), watching(&site)));
    assert!(site.dc.log().contains("TLS"), "{}", site.dc.log());
}

fn an_untrusted_certificate_is_refused() {
    for variant in [
        Variant::default(),
        Variant {
            starttls: true,
            ..Variant::default()
        },
    ] {
        let site = Site::new(variant);
        // The backoff on a clock 4 times faster.
        let mut cmd = site.command(&["--watch-speedup", "4"]);
        cmd.env_remove("SSL_CERT_FILE");
        let w = site.watch_unready(cmd);
        let want = line(&format!(
            "{}: TLS handshake: invalid peer certificate: UnknownIssuer; trying again in 1 s",
            site.url()
        ));
        wait_for(Duration::from_secs(5), "the TLS refusal", || {
            w.stderr() == want
        });
        // Its retries (after 1 s and 3 s, here 1/4 and 3/4 s) say the same, so they say
        // nothing.
        std::thread::sleep(Duration::from_millis(1000));
        let (status, stderr) = w.terminate();
        assert_eq!((status.code(), stderr), (Some(0), want));
        assert!(
            !site.dc.log().contains("Login:"),
            "logged in over an untrusted connection:\n{}",
            site.dc.log()
        );
    }
}

fn a_server_without_idle_is_polled() {
    let site = Site::new(Variant {
        no_idle: true,
        ..Variant::default()
    });
    // Every 30 s on a clock 30 times faster: every second.
    let w = site.watch(&["--interval", "0", "--watch-speedup", "30"]);
    let landed = site.deliver(&chat());
    let posts = site.wait_posts(1, Duration::from_secs(3));
    assert!(posts[0] > landed);
    let (status, stderr) = w.terminate();
    assert_eq!(status.code(), Some(0));
    assert_eq!(
        stderr,
        line(&format!(
            "watching {}, asking every 30 s: the server offers no IDLE",
            site.url()
        ))
    );
    site.assert_nothing_seen();
}

fn a_uidvalidity_change_starts_over_without_a_flood() {
    let site = Site::new(Variant::default());
    let w = site.watch(&["--interval", "0"]);
    let first = site.deliver(&chat());
    site.assert_woken(&[first]);
    let (status, _) = w.terminate();
    assert_eq!(status.code(), Some(0));
    site.deliver(&chat());
    // The mailbox is numbered anew, as after a restore from backup: its UIDVALIDITY (the `V` of
    // dovecot-uidlist) changes, and the indexes that remember the old one go.
    let maildir = site.dir.path().join("dovecot/mail/Maildir");
    let uidlist = maildir.join("dovecot-uidlist");
    let text = fs::read_to_string(&uidlist).unwrap();
    let (header, rest) = text.split_once('\n').unwrap();
    let header: Vec<String> = header
        .split(' ')
        .map(|f| match f.strip_prefix('V') {
            Some(v) => format!("V{}", v.parse::<u32>().unwrap() + 1000),
            None => f.to_string(),
        })
        .collect();
    fs::write(&uidlist, format!("{}\n{rest}", header.join(" "))).unwrap();
    for entry in fs::read_dir(&maildir).unwrap() {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("dovecot.index")
        {
            fs::remove_file(path).unwrap();
        }
    }
    let w = site.watch(&["--interval", "0"]);
    let landed = site.deliver(&chat());
    let posts = site.wait_posts(2, Duration::from_secs(5));
    assert!(posts[1] > landed && posts[1] - landed <= WITHIN);
    let (status, stderr) = w.terminate();
    assert_eq!(status.code(), Some(0));
    assert_eq!(
        stderr,
        format!(
            "{}{}",
            line(&format!(
                "{}: the mailbox's UIDVALIDITY changed; starting over from the mail there now",
                site.url()
            )),
            watching(&site)
        )
    );
    assert_eq!(site.relay.posts().len(), 2, "no flood of old mail");
}

/// A message inside the interval (3 s here; 10 s by default) is woken at its end: within the
/// interval plus 1 s of landing.
fn the_interval_defers_the_next_wakeup_to_its_end() {
    let site = Site::new(Variant::default());
    let w = site.watch(&["--interval", "3s"]);
    let first = site.deliver(&chat());
    site.assert_woken(&[first]);
    let second = site.deliver(&chat());
    let third = site.deliver(&chat());
    let posts = site.wait_posts(2, Duration::from_secs(5));
    assert!(posts[1] - posts[0] >= Duration::from_secs(3), "{posts:?}");
    for landed in [second, third] {
        assert!(posts[1] > landed && posts[1] - landed <= Duration::from_secs(4));
    }
    let (status, stderr) = w.terminate();
    assert_eq!((status.code(), stderr), (Some(0), watching(&site)));
    // The sender's POST was the last: one for both messages.
    assert_eq!(site.relay.posts().len(), 2);
}

fn sigterm_leaves_a_deferred_wakeup_to_its_sender() {
    let site = Site::new(Variant::default());
    let w = site.watch(&["--interval", "2s"]);
    let first = site.deliver(&chat());
    site.assert_woken(&[first]);
    // Inside the interval: deferred to its end, then the watcher is told to stop.
    site.deliver(&chat());
    wait_for(Duration::from_secs(3), "a deferred sender", || {
        common::senders(&site.sandbox.cache_dir()).len() == 1
    });
    let (status, stderr) = w.terminate();
    assert_eq!((status.code(), stderr), (Some(0), watching(&site)));
    let posts = site.wait_posts(2, Duration::from_secs(5));
    assert!(posts[1] - posts[0] >= Duration::from_secs(2));
    assert!(site.dc.log().contains("Logged out"), "{}", site.dc.log());
}

fn check_logs_in_and_tells_what_the_mailbox_holds() {
    let site = Site::new(Variant::default());
    site.deliver(&chat());
    let r = common::exec(site.command(&["--check"]), common::Input::Null);
    let url = site.url();
    let watch_lines: Vec<&str> = r.stdout.lines().filter(|l| l.contains(&url)).collect();
    assert_eq!(
        (r.code, watch_lines),
        (
            0,
            vec![
                format!("ok    {url}: logged in as {USER}").as_str(),
                format!("ok    {url}: the server offers IDLE").as_str(),
                format!(
                    "ok    {url}: INBOX holds 1 message, the next UID is 2; the watcher has not \
                     run on it yet"
                )
                .as_str(),
            ]
        ),
        "{}{}",
        r.stdout,
        r.stderr
    );
    assert!(site.relay.posts().is_empty(), "--check posted");
    // And after a watcher ran: how far it got.
    let w = site.watch(&["--interval", "0", "-v"]);
    let landed = site.deliver(&chat());
    site.assert_woken(&[landed]);
    let (status, stderr) = w.terminate();
    assert_eq!(status.code(), Some(0));
    assert_eq!(
        stderr,
        format!(
            "{}{}{}",
            watching(&site),
            line("new message, UID 2"),
            common::notified(&site.token)
        )
    );
    let r = common::exec(site.command(&["--check"]), common::Input::Null);
    assert!(
        r.stdout.contains(&format!(
            "ok    {url}: INBOX holds 2 messages, the next UID is 3; the watcher has handled up \
             to UID 2\n"
        )),
        "{}",
        r.stdout
    );
    site.assert_nothing_seen();
    // A wrong password fails the check with the watcher's own line and status.
    fs::write(&site.password_file, "wrong\n").unwrap();
    let r = common::exec(site.command(&["--check"]), common::Input::Null);
    assert_eq!(r.code, 77, "{}", r.stdout);
    assert!(
        r.stdout.contains(&format!(
            "FAIL  {url}: the server refused the login: Authentication failed; fix the password, \
             then start again\n"
        )),
        "{}",
        r.stdout
    );
}

/// `examples/watch/account.env` as a user fills it in, as the unit hands it over: the
/// environment, with the unit's default token file.
fn the_environment_file_runs_the_watcher() {
    let site = Site::new(Variant::default());
    let shipped = fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/watch/account.env"),
    )
    .unwrap();
    let tokens = site
        .sandbox
        .home
        .path()
        .join(".config/deltapush-mda/tokens");
    fs::create_dir_all(tokens.parent().unwrap()).unwrap();
    fs::write(&tokens, format!("{}\n", site.token)).unwrap();
    let mut cmd = site.sandbox.command();
    cmd.env("SSL_CERT_FILE", &site.ca.cert)
        .env("DELTAPUSH_TOKEN_FILE", &tokens)
        .env("DELTAPUSH_URL", &site.relay.url)
        .env("DELTAPUSH_INTERVAL", "0");
    let mut set = Vec::new();
    for l in shipped
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (name, _example) = l.split_once('=').unwrap();
        let value = match name {
            "DELTAPUSH_WATCH" => site.url(),
            "DELTAPUSH_PASSWORD_FILE" => site.password_file.to_str().unwrap().to_string(),
            other => panic!("{other} in account.env: give it a test value"),
        };
        assert!(!value.is_empty());
        cmd.env(name, &value);
        set.push(name);
    }
    assert_eq!(set, ["DELTAPUSH_WATCH", "DELTAPUSH_PASSWORD_FILE"]);
    // ExecStart, with ${DELTAPUSH_WATCH} expanded.
    cmd.arg("--watch").arg(site.url());
    let w = site.watch_unready(cmd);
    w.wait_line(&format!("watching {}", site.url()), Duration::from_secs(10));
    let landed = site.deliver(&chat());
    site.assert_woken(&[landed]);
    let (status, stderr) = w.terminate();
    assert_eq!((status.code(), stderr), (Some(0), watching(&site)));
}

#[test]
fn the_unit_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let shipped = fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples/watch/deltapush-watch@.service"),
    )
    .unwrap();
    assert!(shipped.contains("ExecStart=/usr/bin/deltapush-mda --watch ${DELTAPUSH_WATCH}\n"));
    // The program is where the package puts it only once installed: the build stands in.
    let unit = dir.path().join("deltapush-watch@.service");
    fs::write(
        &unit,
        shipped.replace("/usr/bin/deltapush-mda", common::bin().to_str().unwrap()),
    )
    .unwrap();
    common::realmail::verify_user_unit(
        dir.path(),
        None,
        &dir.path().join("deltapush-watch@work.service"),
    );
}

/// A stand-in OAuth 2 token introspection endpoint (RFC 7662) on 127.0.0.1: `token` is an
/// active token of `USER`, anything else is not. Returns its URL and the tokens it was asked about.
fn token_endpoint(token: &'static str) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "http://127.0.0.1:{}/introspect",
        listener.local_addr().unwrap().port()
    );
    let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = asked.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut len = 0;
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 {
                    break;
                }
                let h = h.trim_end();
                if h.is_empty() {
                    break;
                }
                if let Some((name, value)) = h.split_once(':')
                    && name.eq_ignore_ascii_case("content-length")
                {
                    len = value.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; len];
            if reader.read_exact(&mut body).is_err() {
                continue;
            }
            let form = String::from_utf8_lossy(&body).into_owned();
            let given = form
                .split('&')
                .find_map(|kv| kv.strip_prefix("token="))
                .unwrap_or("")
                .to_string();
            let json = match given == token {
                true => format!("{{\"active\": true, \"username\": \"{USER}\"}}"),
                false => "{\"active\": false}".to_string(),
            };
            seen.lock().unwrap().push(given);
            let mut out = stream;
            let _ = write!(
                out,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{json}",
                json.len()
            );
        }
    });
    (url, asked)
}

fn xoauth2_with_a_token_from_the_command() {
    const TOKEN: &str = "ya29.stand-in-access-token";
    let (url, asked) = token_endpoint(TOKEN);
    let site = Site::new(Variant {
        oauth2: Some(url),
        ..Variant::default()
    });
    let helper = site
        .sandbox
        .write("token-helper", format!("#!/bin/sh\necho {TOKEN}\n"));
    fs::set_permissions(&helper, fs::Permissions::from_mode(0o700)).unwrap();
    let with_helper = |helper: &std::path::Path| {
        let mut cmd = site.sandbox.command();
        cmd.arg("--watch")
            .arg(site.url())
            .arg("--password-command")
            .arg(helper)
            .args([
                "--auth",
                "xoauth2",
                "--interval",
                "0",
                "--url",
                &site.relay.url,
            ])
            .arg(&site.token)
            .env("SSL_CERT_FILE", &site.ca.cert);
        cmd
    };
    let w = site.watch_unready(with_helper(&helper));
    w.wait_line(&format!("watching {}", site.url()), Duration::from_secs(10));
    let landed = site.deliver(&chat());
    site.assert_woken(&[landed]);
    // The helper runs at every login: a reconnect asks it again.
    assert_eq!(site.dc.kill_sessions(), 1);
    wait_for(Duration::from_secs(5), "a second login", || {
        asked.lock().unwrap().len() == 2
    });
    let (status, stderr) = w.terminate();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.starts_with(&watching(&site)), "{stderr}");
    assert!(!stderr.contains(TOKEN), "{stderr}");
    assert_eq!(*asked.lock().unwrap(), [TOKEN, TOKEN]);

    // A token the server does not take yet (the helper had not refreshed it): the command may
    // give another one, so the login is tried again at the login pace (2 min, here on a clock 120
    // times faster), said once, with the command asked again.
    let count = site.sandbox.write("runs", "");
    let later = site.sandbox.write(
        "later-helper",
        format!(
            "#!/bin/sh\necho run >> {count}\nif [ $(wc -l < {count}) -eq 1 ]; then echo expired; else echo {TOKEN}; fi\n",
            count = count.display()
        ),
    );
    fs::set_permissions(&later, fs::Permissions::from_mode(0o700)).unwrap();
    let mut cmd = with_helper(&later);
    cmd.env("DELTAPUSH_WATCH_SPEEDUP", "120");
    let w = site.watch_unready(cmd);
    w.wait_line(&format!("watching {}", site.url()), Duration::from_secs(10));
    let (status, stderr) = w.terminate();
    assert_eq!(status.code(), Some(0), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    let refused = format!(
        "deltapush-mda: {}: the server refused the login: ",
        site.url()
    );
    assert!(lines[0].starts_with(&refused), "{stderr}");
    assert!(lines[0].ends_with("; trying again in 120 s"), "{stderr}");
    assert_eq!(lines[1], watching(&site).trim_end(), "{stderr}");
    assert_eq!(*asked.lock().unwrap(), [TOKEN, TOKEN, "expired", TOKEN]);
}

/// Courier-IMAP, the other IMAP server in Debian: TLS (socat) with the test's CA, PREAUTH, no
/// UIDNEXT in its EXAMINE, IDLE from inotify. Every message woken, none marked \Seen, and a session
/// killed while mail arrives.
fn courier_every_message_woken_and_a_killed_session() {
    // Under /tmp: the Courier root sees the host's /tmp and nothing else of it.
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let ca = Ca::new(&dir.path().join("ca"));
    let courier = Courier::start(&dir.path().join("courier"), &ca);
    let relay = Relay::start();
    let sandbox = Sandbox::new();
    let password = sandbox.write("password", "unused: PREAUTH\n");
    fs::set_permissions(&password, fs::Permissions::from_mode(0o600)).unwrap();
    let token = token(18);
    let url = format!("imaps://me@127.0.0.1:{}", courier.port);
    let deliver = |m: &[u8]| {
        courier.deliver(m);
        Instant::now()
    };
    // Mail from before the start wakes no one; a client has SELECTed the mailbox, so Courier
    // keeps its UIDs.
    deliver(&chat());
    courier.select();
    let mut cmd = sandbox.command();
    cmd.args(["--watch", &url, "--interval", "0", "--url", &relay.url])
        .arg("--password-file")
        .arg(&password)
        .arg(&token)
        .env("SSL_CERT_FILE", &ca.cert);
    let w = Watcher::spawn(dir.path(), cmd);
    w.wait_line(
        &format!("watching {url} with IDLE"),
        Duration::from_secs(10),
    );
    let mut landed = vec![deliver(&chat())];
    assert_woken(&relay, &token, &landed);
    for gap in [30, 300, 1000] {
        landed.push(deliver(&chat()));
        std::thread::sleep(Duration::from_millis(gap));
        landed.push(deliver(&chat()));
        assert_woken(&relay, &token, &landed);
    }
    deliver(&bounce());
    landed.push(deliver(&chat()));
    assert_woken(&relay, &token, &landed);
    for _ in 0..5 {
        landed.push(deliver(&chat()));
    }
    assert_woken(&relay, &token, &landed);
    let before = relay.posts().len();
    assert_eq!(courier.kill_sessions(), 1);
    let meanwhile = deliver(&chat());
    let got = poll(Duration::from_secs(5), || relay.posts().len() > before);
    assert!(
        got.is_some(),
        "not woken after the reconnect: {}",
        w.stderr()
    );
    assert!(relay.post_times(&token)[before] > meanwhile);
    let after = deliver(&chat());
    landed.push(after);
    assert_woken(&relay, &token, &landed);
    assert_eq!(relay.posts().len(), before + 2, "none woken twice");
    assert!(
        courier.seen().is_empty(),
        "marked \\Seen: {:?}",
        courier.seen()
    );
    let (status, stderr) = w.terminate();
    assert_eq!(status.code(), Some(0));
    assert_eq!(
        stderr,
        format!(
            "{}{}{}",
            line(&format!("watching {url} with IDLE")),
            line(&format!(
                "{url}: the server closed the connection; trying again in 1 s"
            )),
            line(&format!("watching {url} with IDLE")),
        )
    );
}

/// Both Dovecots of the Dovecot route (the host's 2.3 and Debian 13's 2.4 under chroot), mail
/// handed over through LMTP as a mail server does, IMAP in plain to loopback (the server offers
/// no STARTTLS, which `imap://` allows only there).
fn both_dovecots_with_mail_through_lmtp() {
    for version in [Version::V23, Version::V24] {
        let dir = version.tempdir("deltapush-watch-");
        let server = MailServer::start(version, dir.path(), MailUser::get(), &["me"], &[]);
        let relay = Relay::start();
        let sandbox = Sandbox::new();
        let password = sandbox.write("password", MailServer::password_of("me") + "\n");
        fs::set_permissions(&password, fs::Permissions::from_mode(0o600)).unwrap();
        let token = token(19);
        let url = format!(
            "imap://{}@127.0.0.1:{}",
            MailServer::address("me").replace('@', "%40"),
            server.imap_port
        );
        let mut lmtp = Lmtp::connect(server.lmtp_port);
        let mut deliver = |m: &[u8]| {
            lmtp.deliver("alice@example.net", &MailServer::address("me"), m)
                .replied
        };
        // Mail from before the start wakes no one.
        deliver(&chat());
        let mut cmd = sandbox.command();
        cmd.args(["--watch", &url, "--interval", "0", "--url", &relay.url])
            .arg("--password-file")
            .arg(&password)
            .arg(&token);
        let w = Watcher::spawn(dir.path(), cmd);
        w.wait_line(
            &format!("watching {url} with IDLE"),
            Duration::from_secs(10),
        );
        let mut landed = vec![deliver(&chat())];
        assert_woken(&relay, &token, &landed);
        for gap in [30, 520] {
            landed.push(deliver(&chat()));
            std::thread::sleep(Duration::from_millis(gap));
            landed.push(deliver(&chat()));
            assert_woken(&relay, &token, &landed);
        }
        deliver(&bounce());
        landed.push(deliver(&chat()));
        assert_woken(&relay, &token, &landed);
        let messages = server.folder("me", "INBOX");
        assert_eq!(messages.len(), 8, "{version:?}");
        assert!(
            messages.iter().all(|m| !m.seen),
            "{version:?}: {messages:?}"
        );
        let (status, stderr) = w.terminate();
        assert_eq!(status.code(), Some(0), "{version:?}");
        assert_eq!(
            stderr,
            line(&format!("watching {url} with IDLE")),
            "{version:?}"
        );
    }
}

#[test]
fn watch_against_real_imap_servers() {
    run_cases(&[
        ("every_chat_message_is_woken", every_chat_message_is_woken),
        (
            "automatic_mail_and_the_rules_wake_no_one",
            automatic_mail_and_the_rules_wake_no_one,
        ),
        (
            "reconnects_after_the_imap_process_is_killed",
            reconnects_after_the_imap_process_is_killed,
        ),
        (
            "reconnects_after_the_server_restarts",
            reconnects_after_the_server_restarts,
        ),
        (
            "a_restarted_watcher_wakes_once_for_mail_that_came_meanwhile",
            a_restarted_watcher_wakes_once_for_mail_that_came_meanwhile,
        ),
        (
            "a_refused_login_is_one_line_and_exit_77",
            a_refused_login_is_one_line_and_exit_77,
        ),
        (
            "a_mailbox_that_cannot_be_opened_is_one_line_and_exit_78",
            a_mailbox_that_cannot_be_opened_is_one_line_and_exit_78,
        ),
        (
            "a_failing_password_command_is_retried_without_a_flood",
            a_failing_password_command_is_retried_without_a_flood,
        ),
        ("starttls_with_a_private_ca", starttls_with_a_private_ca),
        (
            "an_untrusted_certificate_is_refused",
            an_untrusted_certificate_is_refused,
        ),
        (
            "a_server_without_idle_is_polled",
            a_server_without_idle_is_polled,
        ),
        (
            "sigterm_leaves_a_deferred_wakeup_to_its_sender",
            sigterm_leaves_a_deferred_wakeup_to_its_sender,
        ),
        (
            "check_logs_in_and_tells_what_the_mailbox_holds",
            check_logs_in_and_tells_what_the_mailbox_holds,
        ),
        (
            "the_environment_file_runs_the_watcher",
            the_environment_file_runs_the_watcher,
        ),
        (
            "xoauth2_with_a_token_from_the_command",
            xoauth2_with_a_token_from_the_command,
        ),
        (
            "the_interval_defers_the_next_wakeup_to_its_end",
            the_interval_defers_the_next_wakeup_to_its_end,
        ),
        (
            "a_uidvalidity_change_starts_over_without_a_flood",
            a_uidvalidity_change_starts_over_without_a_flood,
        ),
        (
            "courier_every_message_woken_and_a_killed_session",
            courier_every_message_woken_and_a_killed_session,
        ),
        (
            "both_dovecots_with_mail_through_lmtp",
            both_dovecots_with_mail_through_lmtp,
        ),
    ]);
}

#[test]
fn bad_watch_settings_are_one_line_each() {
    let sandbox = Sandbox::new();
    let secret = sandbox.write("pw", "x\n");
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o644)).unwrap();
    let s = secret.to_str().unwrap();
    for (args, code, want) in [
        (
            vec!["--watch", "imaps://me@example.org", "tok"],
            64,
            "--watch needs --password-file PATH or --password-command CMD".to_string(),
        ),
        (
            vec![
                "--watch",
                "pop3://me@example.org",
                "--password-command",
                "true",
                "tok",
            ],
            78,
            "--watch pop3://me@example.org: use imaps://USER@HOST[:PORT][/MAILBOX] or imap://…"
                .to_string(),
        ),
        (
            vec![
                "--watch",
                "imaps://me:pw@example.org",
                "--password-command",
                "true",
                "tok",
            ],
            78,
            "--watch imaps://me:pw@example.org: a password in the URL; give it with \
             --password-file or --password-command"
                .to_string(),
        ),
        (
            vec![
                "--watch",
                "imaps://me@example.org",
                "--password-file",
                s,
                "tok",
            ],
            78,
            format!("--password-file {s}: readable by every user; run: chmod o-rw {s}"),
        ),
    ] {
        let r = sandbox.run(&args, common::Input::Null);
        assert_eq!(r.said(), (code, line(&want).as_str()), "{args:?}");
    }
}
