//! Every setup the README documents, run with the real programs: Dovecot, getmail, fetchmail,
//! procmail, maildrop, an HTTPS relay and systemd's unit checker. Each scenario renders the file
//! from `examples/` it proves, changing only the values a user changes too (server, port,
//! password, the binary's path) and pointing the relay URL and cache dir at the test's own.
//!
//! A missing program fails the scenario (`sudo .ci/setup` installs them all); nothing is skipped.

mod common;
#[path = "common/dovecot.rs"]
mod dovecot;
#[path = "common/realmail.rs"]
mod realmail;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use common::{Relay, refused_port, sha256_hex, shown, token};
use dovecot::Dovecot;
use realmail::{Ca, Daemon, MailUser, Ran, TlsFront, require, run, run_with_input};

/// Names the failed scenario on stderr after its panic message, which says why.
struct Scenario(&'static str);

impl Drop for Scenario {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("FAILED: scenario {}", self.0);
        }
    }
}

/// One scenario's temp dir (traversable by the mail user), CA and mail user.
struct World {
    dir: tempfile::TempDir,
    mail: MailUser,
    ca: Ca,
    // Last, so the name is printed after everything above is cleaned up.
    _scenario: Scenario,
}

impl World {
    fn new(scenario: &'static str) -> World {
        let scenario = Scenario(scenario);
        let dir = tempfile::Builder::new()
            .prefix("deltapush-integration-")
            .tempdir()
            .unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let ca = Ca::new(&dir.path().join("ca"));
        World {
            mail: MailUser::get(),
            ca,
            dir,
            _scenario: scenario,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        fs::create_dir_all(&p).unwrap();
        p
    }

    fn dovecot(&self) -> Dovecot {
        Dovecot::start(&self.path("dovecot"), &self.ca, self.mail)
    }

    /// A mail user's home with the token file in place and a copy of the binary the user can
    /// run (the build dir may not be reachable for `nobody`).
    fn home(&self, name: &str, token: &str) -> Home {
        self.home_as(name, token, self.mail)
    }

    fn home_as(&self, name: &str, token: &str, mail: MailUser) -> Home {
        let path = self.path(name);
        let conf = path.join(".config/deltapush-mda");
        fs::create_dir_all(&conf).unwrap();
        let tokens = conf.join("tokens");
        fs::write(&tokens, format!("# test phone\n{token}\n")).unwrap();
        fs::set_permissions(&tokens, fs::Permissions::from_mode(0o600)).unwrap();
        fs::create_dir_all(path.join("bin")).unwrap();
        let bin = path.join("bin/deltapush-mda");
        fs::copy(common::bin(), &bin).unwrap();
        mail.own(&path);
        Home {
            path,
            bin,
            token: token.to_string(),
            mail,
        }
    }
}

struct Home {
    path: PathBuf,
    bin: PathBuf,
    token: String,
    mail: MailUser,
}

impl Home {
    /// Writes a file into the home, owned by the mail user, mode 0600 (fetchmail and maildrop
    /// insist).
    fn put(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.path.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, text).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        self.mail.own(p.parent().unwrap());
        p
    }

    /// Where deltapush-mda keeps this token's stamp under the default cache dir.
    fn stamp(&self) -> PathBuf {
        self.path
            .join(".cache/deltapush-mda")
            .join(sha256_hex(self.token.as_bytes()))
    }

    /// A command run as the mail user with this home and nothing else inherited.
    fn cmd(&self, program: &Path, relay_url: &str) -> Command {
        let mut c = Command::new(program);
        c.env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", &self.path)
            .env("DELTAPUSH_URL", relay_url)
            .current_dir(&self.path);
        self.mail.apply(&mut c);
        c
    }

    fn maildir_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = ["new", "cur"]
            .iter()
            .flat_map(|sub| fs::read_dir(self.path.join("Maildir").join(sub)).into_iter())
            .flatten()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        files
    }
}

/// An example file with the listed values replaced; each must occur exactly as often as given,
/// so an edited example cannot silently stop being the file under test.
fn render(example: &str, subs: &[(&str, usize, &str)]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(example);
    let mut text = fs::read_to_string(&path).unwrap();
    for (from, count, to) in subs {
        assert_eq!(
            text.matches(from).count(),
            *count,
            "examples/{example} should contain `{from}` {count} time(s)"
        );
        text = text.replace(from, to);
    }
    text
}

fn getmailrc(w: &World, dc: &Dovecot, home: &Home, ca_certs: Option<&Path>) -> String {
    let port = format!("port = {}", dc.port);
    let password = format!("password = {}", dc.password);
    let ca = format!("ca_certs = {}", ca_certs.unwrap_or(&w.ca.cert).display());
    let path = format!("path = {}", home.bin.display());
    render(
        "getmail/getmailrc",
        &[
            ("server = imap.example.org", 1, "server = localhost"),
            ("port = 993", 1, &port),
            ("password = secret", 1, &password),
            ("ca_certs = /etc/ssl/certs/ca-certificates.crt", 1, &ca),
            ("path = /usr/bin/deltapush-mda", 1, &path),
        ],
    )
}

/// getmail with the rc file `~/.config/getmail/<rc>`, once, as a user runs it by hand.
fn getmail(home: &Home, rc: &str, relay_url: &str, name: &str) -> Ran {
    let mut cmd = home.cmd(&require("getmail"), relay_url);
    cmd.args(["--rcfile", rc]);
    run(name, cmd, &home.path, Duration::from_secs(60))
}

/// A message from the corpus of real mail.
fn corpus(name: &str) -> Vec<u8> {
    fs::read(common::data(&format!("corpus/{name}"))).unwrap()
}

/// A chat message: a person wrote it, so it notifies.
fn chat() -> Vec<u8> {
    corpus("text_from_alice_encrypted.eml")
}

/// A bounce marked `Auto-Submitted: auto-replied`: never notifies.
fn bounce() -> Vec<u8> {
    let m = corpus("gmx_ndn.eml");
    assert!(String::from_utf8_lossy(&m).contains("Auto-Submitted: auto-replied"));
    m
}

/// A 20 MB message from a person.
fn big() -> Vec<u8> {
    let mut m = b"From: alice@example.org\r\nTo: me@example.org\r\nSubject: holiday photos\r\n\
Message-ID: <big@example.org>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n"
        .to_vec();
    let line = [
        b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAx".as_slice(),
        b"\r\n",
    ]
    .concat();
    while m.len() < 20 * 1024 * 1024 {
        m.extend_from_slice(&line);
    }
    m
}

fn plain(n: u32) -> Vec<u8> {
    format!(
        "From: alice@example.org\r\nTo: me@example.org\r\nSubject: message {n}\r\n\
         Message-ID: <{n}.{}@example.org>\r\n\r\nHello number {n}\r\n",
        std::process::id()
    )
    .into_bytes()
}

/// Polls `cond` every 5 ms; panics with `what` after `limit`. Returns how long it took.
fn wait_for(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Duration {
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

/// Asserts that the relay received exactly these bodies, in order. A failure shows each body
/// as its token prefix and a hash, never whole.
fn assert_bodies(relay: &Relay, want: &[&str]) {
    let got = relay.bodies();
    if got != want {
        let brief = |b: &str| {
            let prefix: String = b.chars().take(8).collect();
            let hash = sha256_hex(b.as_bytes());
            format!("{prefix}… ({} bytes, sha256 {})", b.len(), &hash[..12])
        };
        let got: Vec<String> = got.iter().map(|b| brief(b)).collect();
        let want: Vec<String> = want.iter().map(|b| brief(b)).collect();
        panic!("the relay received {got:?}, expected {want:?}");
    }
}

fn count(bodies: &[String], token: &str) -> usize {
    bodies.iter().filter(|b| *b == token).count()
}

#[test]
fn scenario_1_getmail_one_shot_leaves_mail_unseen() {
    let w = World::new("1 (getmail, one shot)");
    let relay = Relay::start();
    let dc = w.dovecot();
    let home = w.home("home", &token(1));

    // As shipped, the rc file checks the server's certificate: the system CAs reject ours.
    let system = PathBuf::from("/etc/ssl/certs/ca-certificates.crt");
    home.put(
        ".config/getmail/shipped",
        &getmailrc(&w, &dc, &home, Some(&system)),
    );
    let ran = getmail(&home, "shipped", &relay.url, "getmail-shipped");
    assert_ne!(ran.code(), Some(0), "{ran:?}");
    assert!(
        ran.stderr.contains("CERTIFICATE_VERIFY_FAILED"),
        "getmail did not refuse an unknown certificate: {ran:?}"
    );

    home.put(
        ".config/getmail/deltapush",
        &getmailrc(&w, &dc, &home, None),
    );
    // The bounce alone first, so that its skip cannot hide behind the rate limit.
    dc.deliver(&bounce());
    let ran = getmail(&home, "deltapush", &relay.url, "getmail-bounce");
    assert_eq!(ran.code(), Some(0), "getmail failed: {ran:?}\n{}", dc.log());
    assert_eq!((ran.stdout.as_str(), ran.stderr.as_str()), ("", ""));
    assert_eq!(
        oldmail_lines(&home),
        1,
        "getmail did not hand the bounce over"
    );
    assert_bodies(&relay, &[]);

    dc.deliver(&chat());
    dc.deliver(&big());
    let ran = getmail(&home, "deltapush", &relay.url, "getmail-1");
    assert_eq!(ran.code(), Some(0), "getmail failed: {ran:?}\n{}", dc.log());
    // Without ignore_stderr, anything on stderr would have failed the delivery.
    assert_eq!((ran.stdout.as_str(), ran.stderr.as_str()), ("", ""));
    assert_eq!(oldmail_lines(&home), 3);
    // The chat message notified; the big one came within the interval.
    assert_bodies(&relay, &[&home.token]);
    assert!(home.stamp().is_file());
    let stored = dc.messages();
    assert_eq!(stored.len(), 3, "{stored:?}");
    assert!(
        stored.iter().all(|m| !m.seen),
        "getmail set \\Seen: {stored:?}"
    );

    // read_all = false: the next run offers none of them again, even with no rate limit.
    let mut cmd = home.cmd(&require("getmail"), &relay.url);
    cmd.args(["--rcfile", "deltapush"])
        .env("DELTAPUSH_INTERVAL", "0");
    let ran = run("getmail-2", cmd, &home.path, Duration::from_secs(60));
    assert_eq!((ran.code(), ran.stderr.as_str()), (Some(0), ""), "{ran:?}");
    assert_bodies(&relay, &[&home.token]);
    assert_eq!(dc.messages(), stored);
}

/// The oldmail file: one line per message getmail has handed over in this home.
fn oldmail_lines(home: &Home) -> usize {
    let dir = home.path.join(".config/getmail");
    fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("oldmail-"))
        .map(|e| {
            fs::read_to_string(e.path())
                .unwrap_or_default()
                .lines()
                .count()
        })
        .sum()
}

/// The getmail command line of the systemd unit, for the rc file `rc`.
fn unit_command(rc: &str) -> Vec<String> {
    let unit = fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/getmail/deltapush@.service"),
    )
    .unwrap();
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("the unit has an ExecStart= line");
    let mut words: Vec<String> = line
        .split_whitespace()
        .map(|w| w.replace("%i", rc))
        .collect();
    assert_eq!(words[0], "/usr/bin/getmail", "{line}");
    words[0] = require("getmail").to_string_lossy().into_owned();
    words
}

#[test]
fn scenario_2_getmail_idle_notifies_within_seconds() {
    let w = World::new("2 (getmail --idle, as the systemd unit runs it)");
    let relay = Relay::start();
    let dc = w.dovecot();
    let home = w.home("home", &token(2));
    home.put(
        ".config/getmail/deltapush",
        &getmailrc(&w, &dc, &home, None),
    );

    let words = unit_command("deltapush");
    let mut cmd = home.cmd(Path::new(&words[0]), &relay.url);
    cmd.args(&words[1..])
        .stdout(fs::File::create(home.path.join("idle.stdout")).unwrap())
        .stderr(fs::File::create(home.path.join("idle.stderr")).unwrap());
    let mut getmail = Daemon::spawn("getmail --idle", cmd);
    let output = || {
        format!(
            "getmail stdout: {:?}, stderr: {:?}",
            fs::read_to_string(home.path.join("idle.stdout")).unwrap_or_default(),
            fs::read_to_string(home.path.join("idle.stderr")).unwrap_or_default()
        )
    };
    dc.wait_idle(Duration::from_secs(20), output);

    dc.deliver(&plain(1));
    let first = wait_for(Duration::from_secs(5), "the first POST", || {
        relay.requests().len() == 1
    });
    println!("getmail --idle: delivery to POST {} ms", first.as_millis());

    // A second message 1 s later finds the token rate-limited.
    dc.wait_idle(Duration::from_secs(5), output);
    thread::sleep(Duration::from_secs(1));
    dc.deliver(&plain(2));
    wait_for(
        Duration::from_secs(5),
        "getmail handing over message 2",
        || oldmail_lines(&home) == 2,
    );
    assert_eq!(relay.requests().len(), 1, "message 2 was not rate-limited");

    // Once the interval (10 s by default) has passed since the stamp, the next one notifies.
    let stamped = fs::metadata(home.stamp()).unwrap().modified().unwrap();
    let due = stamped + Duration::from_secs(10);
    if let Ok(left) = due.duration_since(SystemTime::now()) {
        thread::sleep(left + Duration::from_millis(50));
    }
    dc.wait_idle(Duration::from_secs(5), output);
    dc.deliver(&plain(3));
    let third = wait_for(Duration::from_secs(5), "the POST for message 3", || {
        relay.requests().len() == 2
    });
    println!("getmail --idle: delivery to POST {} ms", third.as_millis());
    wait_for(
        Duration::from_secs(5),
        "getmail recording message 3",
        || oldmail_lines(&home) == 3,
    );

    assert_eq!(
        getmail.exited(),
        None,
        "getmail --idle stopped; {}",
        output()
    );
    // Checked while it still runs: on SIGTERM getmail says "Operation aborted by user".
    assert_eq!(output(), r#"getmail stdout: "", stderr: """#);
    assert_bodies(&relay, &[&home.token, &home.token]);
    assert!(dc.messages().iter().all(|m| !m.seen));
}

#[test]
fn scenario_3_getmail_relay_down_offers_the_mail_again() {
    let w = World::new("3 (getmail with the relay down)");
    let dc = w.dovecot();
    dc.deliver(&chat());
    let down = format!("http://127.0.0.1:{}/notify", refused_port());
    let relay = Relay::start();

    // (arguments added in front of the shipped ones, getmail fails the delivery, the next
    // run notifies)
    // The last one idles as the unit runs it: the delivery error ends getmail (systemd then
    // restarts it, which is the next run here).
    let variants: [(&str, &str, bool, bool); 4] = [
        ("as shipped", "", true, true),
        ("-q", "\"-q\", ", false, false),
        ("-q --tempfail", "\"-q\", \"--tempfail\", ", true, true),
        ("as shipped, --idle", "", true, true),
    ];
    thread::scope(|s| {
        for (n, (label, extra, fails, retried)) in variants.into_iter().enumerate() {
            let (w, dc, relay, down) = (&w, &dc, &relay, &down);
            s.spawn(move || {
                let home = w.home(&format!("home{n}"), &token(30 + n as u32));
                let rc = getmailrc(w, dc, &home, None).replace(
                    "arguments = (\"--token-file\"",
                    &format!("arguments = ({extra}\"--token-file\""),
                );
                home.put(".config/getmail/deltapush", &rc);

                let ran = if label.ends_with("--idle") {
                    let words = unit_command("deltapush");
                    let mut cmd = home.cmd(Path::new(&words[0]), down);
                    cmd.args(&words[1..]);
                    run(
                        "getmail-idle-down",
                        cmd,
                        &home.path,
                        Duration::from_secs(60),
                    )
                } else {
                    getmail(&home, "deltapush", down, "getmail-down")
                };
                let who = format!("[{label}] getmail with the relay down: {ran:?}");
                if fails {
                    assert_eq!(ran.code(), Some(127), "{who}");
                    assert!(
                        ran.stderr.contains("Delivery error (command deltapush-mda"),
                        "{who}"
                    );
                } else {
                    assert_eq!((ran.code(), ran.stderr.as_str()), (Some(0), ""), "{who}");
                }
                let line = format!(
                    "deltapush-mda: token {}: not notified: ",
                    shown(&home.token)
                );
                assert_eq!(
                    ran.stderr.contains(&line),
                    label.starts_with("as shipped"),
                    "{who}"
                );
                if label.contains("tempfail") {
                    assert!(ran.stderr.contains(" error (75, )"), "{who}");
                }
                assert!(!home.stamp().exists(), "{who}");
                assert!(
                    !ran.stderr.contains(&home.token),
                    "a whole token was printed"
                );

                let ran = getmail(&home, "deltapush", &relay.url, "getmail-up");
                assert_eq!(
                    (ran.code(), ran.stderr.as_str()),
                    (Some(0), ""),
                    "[{label}] getmail with the relay back: {ran:?}"
                );
                assert_eq!(
                    count(&relay.bodies(), &home.token),
                    usize::from(retried),
                    "[{label}] notifications once the relay is back"
                );
            });
        }
    });
    let stored = dc.messages();
    assert_eq!(stored.len(), 1);
    assert!(!stored[0].seen);
}

#[test]
fn scenario_4_fetchmail_keep_notifies_once() {
    let w = World::new("4 (fetchmail with mda and keep)");
    let relay = Relay::start();
    let dc = w.dovecot();
    let home = w.home("home", &token(4));
    let port = format!("port {}", dc.port);
    let password = format!("password \"{}\"", dc.password);
    let bin = home.bin.to_string_lossy().into_owned();
    let rc = render(
        "fetchmail/fetchmailrc",
        &[
            ("poll imap.example.org", 1, "poll localhost"),
            ("port 993", 1, &port),
            ("password \"secret\"", 1, &password),
            ("/usr/bin/deltapush-mda", 1, &bin),
        ],
    );
    home.put(".fetchmailrc", &rc);
    dc.deliver(&chat());

    let fetchmail = |name| {
        let mut cmd = home.cmd(&require("fetchmail"), &relay.url);
        cmd.env("SSL_CERT_FILE", &w.ca.cert);
        run(name, cmd, &home.path, Duration::from_secs(60))
    };
    let ran = fetchmail("fetchmail-1");
    assert_eq!(ran.code(), Some(0), "fetchmail: {ran:?}\n{}", dc.log());
    assert_eq!(ran.stderr, "", "{ran:?}");
    assert!(
        ran.stdout
            .starts_with("1 message for me@example.org at localhost"),
        "{ran:?}"
    );
    assert!(
        ran.stdout.contains(" not flushed"),
        "keep was not honoured: {ran:?}"
    );
    assert_bodies(&relay, &[&home.token]);

    // Still on the server, but fetchmail marked it read: what the README warns about.
    let stored = dc.messages();
    assert_eq!(stored.len(), 1);
    assert!(
        stored[0].seen,
        "fetchmail no longer sets \\Seen: update the README"
    );

    // Exit 1 is fetchmail's "no new mail".
    let ran = fetchmail("fetchmail-2");
    assert_eq!(ran.code(), Some(1), "{ran:?}");
    assert_eq!(relay.bodies().len(), 1);
}

#[test]
fn scenario_5_procmail_copy_of_a_20_mb_message() {
    let w = World::new("5 (procmail :0c, 20 MB message)");
    let relay = Relay::start();
    // procmail runs as the user the MTA delivers for; here the one running the tests.
    let home = w.home_as("home", &token(5), MailUser::current());
    let bin = home.bin.to_string_lossy().into_owned();
    let rc = render(
        "procmail/procmailrc",
        &[("/usr/bin/deltapush-mda", 1, &bin)],
    );
    let rcfile = home.put("procmailrc", &rc);
    let log = home.path.join("procmail.log");

    // As an MTA runs it for the user, with the message on a pipe. procmail takes HOME from the
    // passwd entry; the assignments on its command line are its own way to override that.
    // -m: as a plain filter procmail does not create /var/mail/$LOGNAME on the test machine;
    // the recipe and the delivery to DEFAULT work the same.
    let mut cmd = home.cmd(&require("procmail"), &relay.url);
    cmd.arg("-m")
        .arg(format!("HOME={}", home.path.display()))
        .arg(format!("DEFAULT={}/Maildir/", home.path.display()))
        .arg(format!("LOGFILE={}", log.display()))
        .arg(format!("DELTAPUSH_URL={}", relay.url))
        .arg(&rcfile);
    let message = big();
    let ran = run_with_input(
        "procmail",
        cmd,
        &home.path,
        Duration::from_secs(120),
        Some(message.clone()),
    );
    assert_eq!(ran.code(), Some(0), "procmail: {ran:?}");
    assert_eq!(
        (ran.stderr.as_str(), ran.write_error.as_deref()),
        ("", None),
        "{ran:?}"
    );
    assert_bodies(&relay, &[&home.token]);

    let log = fs::read_to_string(&log).unwrap();
    for bad in ["died", "Error", "rror while writing", "failed", "Couldn't"] {
        assert!(!log.contains(bad), "procmail log says `{bad}`:\n{log}");
    }
    assert!(
        log.contains(&format!("Folder: {}/Maildir/new/", home.path.display())),
        "{log}"
    );
    let files = home.maildir_files();
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(
        fs::read(&files[0]).unwrap(),
        message,
        "the normal delivery lost bytes"
    );
}

#[test]
fn scenario_6_maildrop_cc_with_the_relay_down_still_delivers() {
    let w = World::new("6 (maildrop cc, relay down)");
    let down = format!("http://127.0.0.1:{}/notify", refused_port());

    // maildrop sets HOME from the passwd entry, so the test writes its own home into the file,
    // and runs it as the test's user: maildrop runs `cc` through the passwd shell, which is
    // nologin for `nobody`.
    let maildrop = |n: u32, extra: &str| {
        let home = w.home_as(&format!("home{n}"), &token(60 + n), MailUser::current());
        for sub in ["cur", "new", "tmp"] {
            fs::create_dir_all(home.path.join("Maildir").join(sub)).unwrap();
        }
        let bin = format!("{}{extra}", home.bin.display());
        let h = home.path.to_string_lossy().into_owned();
        let rc = render(
            "maildrop/mailfilter",
            &[("/usr/bin/deltapush-mda", 1, &bin), ("$HOME", 2, &h)],
        );
        let filter = home.put("mailfilter", &rc);
        let mut cmd = Command::new(require("maildrop"));
        cmd.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("DELTAPUSH_URL", &down)
            .env(
                "DELTAPUSH_CACHE_DIR",
                home.path.join(".cache/deltapush-mda"),
            )
            .arg(&filter)
            .current_dir(&home.path);
        let ran = run_with_input(
            "maildrop",
            cmd,
            &home.path,
            Duration::from_secs(60),
            Some(chat()),
        );
        (home, ran)
    };
    let (plain_run, tempfail_run) = thread::scope(|s| {
        let a = s.spawn(|| maildrop(0, ""));
        let b = s.spawn(|| maildrop(1, " --tempfail"));
        (a.join().unwrap(), b.join().unwrap())
    });

    let (home, ran) = plain_run;
    assert_eq!(ran.code(), Some(0), "maildrop: {ran:?}");
    let line = format!(
        "deltapush-mda: token {}: not notified: ",
        shown(&home.token)
    );
    assert!(ran.stderr.starts_with(&line), "{ran:?}");
    assert!(
        ran.stderr.ends_with("; the next message will try again\n"),
        "{ran:?}"
    );
    assert_eq!(ran.stderr.lines().count(), 1, "{ran:?}");
    assert_eq!(home.maildir_files().len(), 1, "the mail was not delivered");
    assert_eq!(fs::read(&home.maildir_files()[0]).unwrap(), chat());
    assert!(!home.stamp().exists());

    // Why the example warns against --tempfail: the mail is delivered AND maildrop says 75,
    // so the mail server delivers it again later.
    let (home, ran) = tempfail_run;
    assert_eq!(ran.code(), Some(75), "maildrop with --tempfail: {ran:?}");
    assert_eq!(home.maildir_files().len(), 1, "{ran:?}");
}

#[test]
fn scenario_7_https_relay_with_a_local_ca() {
    let w = World::new("7 (HTTPS relay, CA from SSL_CERT_FILE)");
    let relay = Relay::start();
    let tls = TlsFront::start(&w.ca, relay.port, w.dir.path());
    let sandbox = common::Sandbox::new();
    let (t1, t2) = (token(71), token(72));

    sandbox
        .cmd()
        .env("SSL_CERT_FILE", &w.ca.cert)
        .args(["--url", &tls.url, &t1])
        .write_stdin(common::PLAIN)
        .assert()
        .code(0)
        .stderr("");
    assert_bodies(&relay, &[&t1]);
    assert!(sandbox.stamp(&t1).is_file());

    // Without the CA the certificate is unknown: one clear line, the mail is not failed, and
    // the stamp stays untouched so the next message tries again. No retries either: they
    // cannot help, and they held the caller for the whole default --timeout of 15 s.
    for (extra, code) in [(None, 0), (Some("--tempfail"), 75)] {
        let started = Instant::now();
        let out = sandbox
            .cmd()
            .args(["--url", &tls.url, &t2])
            .args(extra)
            .write_stdin(common::PLAIN)
            .output()
            .unwrap();
        let took = started.elapsed();
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(out.status.code(), Some(code), "{stderr}");
        assert!(
            took < Duration::from_secs(5),
            "an unknown CA took {took:?}: {stderr}"
        );
        let prefix = format!("deltapush-mda: token {}: not notified: ", shown(&t2));
        assert!(stderr.starts_with(&prefix), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.to_lowercase().contains("certificate") || stderr.contains("UnknownIssuer"),
            "the line does not say it is a certificate problem: {stderr}"
        );
        assert!(!sandbox.stamp(&t2).exists());
    }
    assert_bodies(&relay, &[&t1]);
}

#[test]
fn scenario_8_systemd_unit_verifies() {
    let w = World::new("8 (systemd-analyze verify on the unit)");
    let analyze = require("systemd-analyze");
    let units = w.path("units");
    let runtime = w.path("runtime");
    fs::set_permissions(&runtime, fs::Permissions::from_mode(0o700)).unwrap();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/getmail/deltapush@.service");
    fs::copy(&shipped, units.join("deltapush@.service")).unwrap();
    let broken = fs::read_to_string(&shipped)
        .unwrap()
        .replace("/usr/bin/getmail", "/nonexistent/getmail");
    fs::write(units.join("broken@.service"), broken).unwrap();

    // --user needs a runtime dir, which a container or CI job without a login session lacks.
    // --man=no: the man page is only there once the package is installed.
    let verify = |unit: &str| {
        let mut cmd = Command::new(&analyze);
        cmd.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", w.dir.path())
            .env("XDG_RUNTIME_DIR", &runtime)
            .args(["--user", "--man=no", "verify"])
            .arg(units.join(unit));
        run("systemd-analyze", cmd, &units, Duration::from_secs(60))
    };
    let ran = verify("deltapush@deltapush.service");
    assert_eq!((ran.code(), ran.stderr.as_str()), (Some(0), ""), "{ran:?}");
    // The check has teeth: a unit whose program does not exist fails it.
    let ran = verify("broken@deltapush.service");
    assert_ne!(ran.code(), Some(0), "{ran:?}");
    assert!(ran.stderr.contains("/nonexistent/getmail"), "{ran:?}");
}
