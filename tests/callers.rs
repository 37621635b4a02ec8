//! Every caller the README documents, run for real: getmail (one shot and `--idle` as the
//! systemd unit runs it) against a Dovecot of the test's own, fetchmail, procmail, maildrop, and
//! systemd's check of the unit. Each test renders the file from `examples/` it proves, changing
//! only the values a user changes too (server, port, password, the binary's path) and pointing
//! the relay URL and cache dir at the test's own.
//!
//! A missing program fails the test (`sudo .ci/setup` installs them all); nothing is skipped.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use common::dovecot::{Dovecot, Stored};
use common::examples::render;
use common::mailhome::{Home, IdleGetmail, World, getmail, getmail_cmd, getmailrc};
use common::realmail::{MailUser, require, run, run_with_input};
use common::{Relay, bounce, chat, not_notified_around, refused_url, token, write_legacy_state};

/// A message from a person of about `size` bytes.
fn sized(n: u32, size: usize) -> Vec<u8> {
    let mut m = format!(
        "From: alice@example.org\r\nTo: me@example.org\r\nSubject: message {n}\r\n\
         Message-ID: <{n}.{}@example.org>\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain\r\n\r\n",
        std::process::id()
    )
    .into_bytes();
    let line = b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAx\r\n";
    while m.len() < size {
        m.extend_from_slice(line);
    }
    m
}

fn count(bodies: &[String], token: &str) -> usize {
    bodies.iter().filter(|b| *b == token).count()
}

/// The shipped rc file: getmail checks the server's certificate; it hands over only the
/// messages nobody has read (`imap_search = UNSEEN`), each once (`read_all = false`), and marks
/// nothing read. Without `imap_search` the first run would hand over every old, read message.
#[test]
fn getmail_hands_over_each_unread_message_once_and_leaves_it_unread() {
    let (w, relay, dc, home) = World::for_getmail(1);
    let rc = getmailrc(&w, &dc, &home, None);
    let unseen = "imap_search = UNSEEN\n";
    assert_eq!(rc.matches(unseen).count(), 1, "{rc}");
    // Beside all of this, the same first run without imap_search, in a home and on a server of
    // its own: every message goes through deltapush-mda.
    let (shipped, without) = thread::scope(|s| {
        let without = s.spawn(|| {
            let dc = w.dovecot("dovecot-all");
            let before = old_mail(&dc);
            let all = w.home("home-all", &token(2));
            all.put(
                ".config/getmail/deltapush",
                &getmailrc(&w, &dc, &all, None).replace(unseen, ""),
            );
            let started = Instant::now();
            let ran = getmail(&all, "deltapush", &Relay::start().url, "getmail-all");
            let without = started.elapsed();
            assert_eq!(ran.code(), Some(0), "getmail failed: {ran:?}");
            assert_eq!(all.oldmail_lines(), READ as usize + 1);
            assert_eq!(dc.messages(), before, "getmail changed a flag");
            without
        });
        let shipped = shipped_rc_file(&w, &relay, &dc, &home, &rc);
        (shipped, without.join().unwrap())
    });
    println!(
        "getmail's first run, {READ} read messages of 20 KB and 1 unread: {} ms with \
         imap_search = UNSEEN (1 handed over), {} ms without ({} handed over)",
        shipped.as_millis(),
        without.as_millis(),
        READ + 1
    );
}

/// How many read messages the mailbox of [`old_mail`] has.
const READ: u32 = 200;

/// A mailbox of old mail, all of it read, and one unread bounce (alone, so that its skip cannot
/// hide behind the rate limit): what INBOX then holds.
fn old_mail(dc: &Dovecot) -> Vec<Stored> {
    for n in 0..READ {
        dc.deliver_seen(&sized(n, 20 * 1024));
    }
    dc.deliver(&bounce());
    dc.messages()
}

/// The shipped rc file `rc` on the mailbox of [`old_mail`], then with new mail: how long
/// getmail's first run took.
fn shipped_rc_file(w: &World, relay: &Relay, dc: &Dovecot, home: &Home, rc: &str) -> Duration {
    // As shipped, the rc file checks the server's certificate: the system CAs reject ours.
    let system = PathBuf::from("/etc/ssl/certs/ca-certificates.crt");
    home.put(
        ".config/getmail/shipped",
        &getmailrc(w, dc, home, Some(&system)),
    );
    let ran = getmail(home, "shipped", &relay.url, "getmail-shipped");
    assert_ne!(ran.code(), Some(0), "{ran:?}");
    assert!(
        ran.stderr.contains("CERTIFICATE_VERIFY_FAILED"),
        "getmail did not refuse an unknown certificate: {ran:?}"
    );

    let before = old_mail(dc);
    home.put(".config/getmail/deltapush", rc);
    let started = Instant::now();
    let ran = getmail(home, "deltapush", &relay.url, "getmail-first");
    let shipped = started.elapsed();
    assert_eq!(ran.code(), Some(0), "getmail failed: {ran:?}\n{}", dc.log());
    assert_eq!((ran.stdout.as_str(), ran.stderr.as_str()), ("", ""));
    assert_eq!(home.oldmail_lines(), 1, "not just the unread bounce");
    relay.assert_bodies(&[]);
    assert_eq!(dc.messages(), before, "getmail changed a flag");

    // New mail: each new message once, and still unread.
    dc.deliver(&chat());
    dc.deliver(&sized(READ, 20 * 1024 * 1024));
    let ran = getmail(home, "deltapush", &relay.url, "getmail-new");
    assert_eq!(ran.code(), Some(0), "getmail failed: {ran:?}\n{}", dc.log());
    // Without ignore_stderr, anything on stderr would have failed the delivery.
    assert_eq!((ran.stdout.as_str(), ran.stderr.as_str()), ("", ""));
    assert_eq!(home.oldmail_lines(), 3);
    // The chat message notified; the big one came within the interval.
    relay.assert_bodies(&[&home.token]);
    assert!(home.state().is_file());
    let stored = dc.messages();
    assert_eq!(stored.len(), READ as usize + 3, "{stored:?}");
    assert_eq!(
        stored.iter().filter(|m| m.seen).count(),
        READ as usize,
        "getmail changed \\Seen"
    );

    // read_all = false: the next run offers none of them again, even with no rate limit.
    let mut cmd = getmail_cmd(home, "deltapush", &relay.url, false);
    cmd.env("DELTAPUSH_INTERVAL", "0");
    let ran = run("getmail-again", cmd, &home.path, Duration::from_secs(60));
    assert_eq!((ran.code(), ran.stderr.as_str()), (Some(0), ""), "{ran:?}");
    relay.assert_bodies(&[&home.token]);
    assert_eq!(dc.messages(), stored);
    shipped
}

#[test]
fn getmail_idle_notifies_within_a_second() {
    let (w, relay, dc, home) = World::for_getmail(3);
    home.put(
        ".config/getmail/deltapush",
        &getmailrc(&w, &dc, &home, None),
    );
    let mut getmail = IdleGetmail::start(&home, "deltapush", &relay.url, &[]);
    // Delivers message n and waits for getmail to hand it over: how long its POST took.
    let message = |n: u32| {
        let delivered = getmail.deliver(&dc, &sized(n, 0));
        getmail.wait_handed_over(n as usize);
        let reqs = relay.requests();
        assert_eq!(reqs.len(), n as usize, "no POST for message {n}");
        reqs[n as usize - 1].at - delivered
    };
    let first = message(1);
    // Once the interval has passed since the last POST, the next message notifies at once.
    // (tests/deferral.rs has the one inside the interval.)
    write_legacy_state(&home.state(), SystemTime::now() - Duration::from_secs(3600));
    let second = message(2);
    println!(
        "getmail --idle: delivery to POST {} ms and {} ms",
        first.as_millis(),
        second.as_millis()
    );

    getmail.assert_idling_quietly();
    relay.assert_bodies(&[&home.token, &home.token]);
    assert!(dc.messages().iter().all(|m| !m.seen));
}

#[test]
fn getmail_offers_the_mail_again_while_the_relay_is_down() {
    let w = World::new();
    let dc = w.dovecot("dovecot");
    dc.deliver(&chat());
    let down = refused_url();
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
                    let cmd = getmail_cmd(&home, "deltapush", down, true);
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
                let (line, _) = not_notified_around(&home.token);
                assert_eq!(
                    ran.stderr.contains(&line),
                    label.starts_with("as shipped"),
                    "{who}"
                );
                if label.contains("tempfail") {
                    assert!(ran.stderr.contains(" error (75, )"), "{who}");
                }
                assert!(!home.state().exists(), "{who}");
                assert!(
                    !ran.stderr.contains(common::TOKEN_BODY),
                    "more of a token than its name: {who}"
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

/// fetchmail with `keep` hands over only unread mail, and marks what it handed over read.
#[test]
fn fetchmail_keep_notifies_once_and_marks_the_mail_read() {
    let w = World::new();
    let relay = Relay::start();
    let dc = w.dovecot("dovecot");
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
    for n in 0..2 {
        dc.deliver_seen(&sized(n, 0));
    }
    dc.deliver(&chat());

    let fetchmail = |name| {
        let mut cmd = home.cmd(&require("fetchmail"), &relay.url);
        cmd.env("SSL_CERT_FILE", &w.ca.cert);
        run(name, cmd, &home.path, Duration::from_secs(60))
    };
    let ran = fetchmail("fetchmail-1");
    assert_eq!(ran.code(), Some(0), "fetchmail: {ran:?}\n{}", dc.log());
    assert_eq!(ran.stderr, "", "{ran:?}");
    // The two read messages are counted, not fetched.
    assert!(
        ran.stdout
            .starts_with("3 messages (2 seen) for me@example.org at localhost"),
        "{ran:?}"
    );
    assert!(
        ran.stdout.contains(" not flushed"),
        "keep was not honoured: {ran:?}"
    );
    relay.assert_bodies(&[&home.token]);

    // Still on the server, but fetchmail marked it read: what the README warns about.
    let stored = dc.messages();
    assert_eq!(stored.len(), 3);
    assert!(
        stored.iter().all(|m| m.seen),
        "fetchmail no longer sets \\Seen: update the README"
    );

    // Exit 1 is fetchmail's "no new mail".
    let ran = fetchmail("fetchmail-2");
    assert_eq!(ran.code(), Some(1), "{ran:?}");
    relay.assert_bodies(&[&home.token]);
}

#[test]
fn procmail_carbon_copy_of_a_20_mb_message() {
    let w = World::new();
    let relay = Relay::start();
    // procmail runs as the user the MTA delivers for; here the one running the tests.
    let home = w.home_as("home", &token(5), MailUser::current());
    let rcfile = home.procmailrc();
    let log = home.path.join("procmail.log");

    // As an MTA runs it for the user, with the message on a pipe.
    let cmd = home.procmail(&rcfile, &relay.url, &[format!("LOGFILE={}", log.display())]);
    let message = sized(0, 20 * 1024 * 1024);
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
    relay.assert_bodies(&[&home.token]);

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
fn maildrop_cc_delivers_with_the_relay_down() {
    let w = World::new();
    let down = refused_url();

    let maildrop = |n: u32, extra: &str| {
        let home = w.home_as(&format!("home{n}"), &token(60 + n), MailUser::current());
        let cmd = home.maildrop(&home.mailfilter(extra), &down);
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
    common::assert_not_notified_line(&ran.stderr, &home.token);
    assert_eq!(home.maildir_files().len(), 1, "the mail was not delivered");
    assert_eq!(fs::read(&home.maildir_files()[0]).unwrap(), chat());
    assert!(!home.state().exists());

    // Why the example warns against --tempfail: the mail is delivered AND maildrop says 75,
    // so the mail server delivers it again later.
    let (home, ran) = tempfail_run;
    assert_eq!(ran.code(), Some(75), "maildrop with --tempfail: {ran:?}");
    assert_eq!(home.maildir_files().len(), 1, "{ran:?}");
}

#[test]
fn systemd_unit_verifies() {
    let w = World::new();
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
