//! The product contract (issue 2), driven through the real binary against a local relay.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use common::{PLAIN, Relay, Reply, Sandbox, refused_port, shown, token};

#[test]
fn plain_message_notifies_once_and_says_nothing() {
    let sb = Sandbox::new();
    let relay = Relay::start();
    let t = token(1);
    assert_eq!(
        sb.deliver(&relay, PLAIN.as_ref(), &[&t]),
        (0, String::new())
    );
    let reqs = relay.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].method, "POST");
    assert_eq!(reqs[0].path, "/notify");
    assert_eq!(reqs[0].body, t.as_bytes());
    assert_eq!(
        reqs[0].header("user-agent"),
        Some(concat!("deltapush-mda/", env!("CARGO_PKG_VERSION")))
    );
    let stamp = fs::metadata(sb.stamp(&t)).unwrap();
    assert_eq!(stamp.permissions().mode() & 0o777, 0o600);
    let dir = fs::metadata(sb.cache_dir()).unwrap();
    assert_eq!(dir.permissions().mode() & 0o777, 0o700);
}

#[test]
fn verbose_says_what_it_did() {
    let sb = Sandbox::new();
    let relay = Relay::start();
    let t = token(2);
    let (code, err) = sb.deliver(&relay, PLAIN.as_ref(), &["-v", &t]);
    assert_eq!(code, 0);
    assert_eq!(
        err,
        format!("deltapush-mda: token {}: notified: 200\n", shown(&t))
    );
}

#[test]
fn automatic_mail_is_skipped_in_every_form() {
    let forms = [
        ("Auto-Submitted: auto-replied\n", "auto-replied"),
        ("Auto-Submitted: auto-generated\n", "auto-generated"),
        ("Auto-Submitted: auto-notified\n", "auto-notified"),
        ("Auto-Submitted: auto-something-new\n", "auto-something-new"),
        ("auto-SUBMITTED: Auto-Replied\n", "auto-replied"),
        ("Auto-Submitted:\n  auto-replied\n", "auto-replied"),
        (
            "Auto-Submitted: auto-replied; owner-email=\"x@example.org\"\n",
            "auto-replied",
        ),
        (
            "Auto-Submitted: (out of office) auto-replied\n",
            "auto-replied",
        ),
        (
            "Auto-Submitted: no\nAuto-Submitted: auto-generated\n",
            "auto-generated",
        ),
    ];
    let relay = Relay::start();
    for (header, value) in forms {
        let sb = Sandbox::new();
        let msg = format!("From: a@b\n{header}Subject: x\n\nbody\n");
        let (code, err) = sb.deliver(&relay, msg.as_ref(), &["-v", &token(3)]);
        assert_eq!(code, 0, "{header:?}");
        assert_eq!(
            err,
            format!("deltapush-mda: skipped: auto-submitted ({value})\n"),
            "{header:?}"
        );
        // Silent without -v.
        assert_eq!(
            sb.deliver(&relay, msg.as_ref(), &[&token(3)]),
            (0, String::new())
        );
        assert!(!sb.cache_dir().exists(), "a skip must not touch the cache");
    }
    assert_eq!(relay.bodies(), Vec::<String>::new());
}

#[test]
fn person_written_mail_notifies_whatever_else_says_auto() {
    let not_automatic = [
        "From: a@b\nAuto-Submitted: no\n\nbody\n",
        "From: a@b\nAuto-Submitted: No (a person wrote this)\n\nbody\n",
        "From: a@b\nX-Auto-Submitted: auto-replied\n\nbody\n",
        "From: a@b\nSubject: Auto-Submitted: auto-replied\n\nbody\n",
        "From: a@b\n\nAuto-Submitted: auto-replied\n",
    ];
    let relay = Relay::start();
    for (i, msg) in not_automatic.iter().enumerate() {
        let sb = Sandbox::new();
        let t = token(100 + i as u32);
        assert_eq!(
            sb.deliver(&relay, msg.as_ref(), &[&t]),
            (0, String::new()),
            "{msg:?}"
        );
    }
    assert_eq!(relay.bodies().len(), not_automatic.len());
}

#[test]
fn mbox_from_line_and_crlf() {
    let relay = Relay::start();
    let sb = Sandbox::new();
    let skipped = "From MAILER-DAEMON Wed Nov 25 10:00:00 2026\r\n\
                   Auto-Submitted: auto-replied\r\nSubject: bounce\r\n\r\nbody\r\n";
    assert_eq!(
        sb.deliver(&relay, skipped.as_ref(), &["-v", &token(4)]),
        (
            0,
            "deltapush-mda: skipped: auto-submitted (auto-replied)\n".into()
        )
    );
    let plain = "From alice@example.org Wed Nov 25 10:00:00 2026\r\nFrom: a@b\r\n\r\nhi\r\n";
    assert_eq!(
        sb.deliver(&relay, plain.as_ref(), &[&token(4)]),
        (0, String::new())
    );
    assert_eq!(relay.bodies(), [token(4)]);
}

#[test]
fn empty_stdin_notifies() {
    let relay = Relay::start();
    let sb = Sandbox::new();
    assert_eq!(
        sb.deliver(&relay, "".as_ref(), &[&token(5)]),
        (0, String::new())
    );
    assert_eq!(relay.bodies(), [token(5)]);
}

#[test]
fn big_message_through_a_pipe_is_read_to_the_end() {
    let relay = Relay::start();
    let sb = Sandbox::new();
    let mut child = sb
        .std_cmd()
        .args(["--url", &relay.url, &token(6)])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = thread::spawn(move || -> std::io::Result<usize> {
        stdin.write_all(PLAIN.as_bytes())?;
        // A header-looking line deep in the body must not count.
        let line = b"Auto-Submitted: auto-replied and other filler text to make it long.....\n";
        let mut written = PLAIN.len();
        while written < 20 * 1024 * 1024 {
            stdin.write_all(line)?;
            written += line.len();
        }
        Ok(written)
    });
    let written = writer
        .join()
        .unwrap()
        .expect("the writer must not see EPIPE");
    assert!(written >= 20 * 1024 * 1024);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    assert_eq!(relay.bodies(), [token(6)]);
}

#[test]
fn terminal_stdin_means_no_message() {
    let relay = Relay::start();
    let sb = Sandbox::new();
    let t = token(7);
    // script(1) gives the child a pty as stdin; without one the binary would wait for a mail.
    let inner = format!(
        "{} --url {} --cache-dir {} -v '{}'",
        common::bin().display(),
        relay.url,
        sb.cache_dir().display(),
        t
    );
    let out = std::process::Command::new("script")
        .args(["-qec", &inner, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .expect("script(1) from bsdutils is needed: run .ci/setup");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("token {}: notified: 200", shown(&t))),
        "{text}"
    );
    assert_eq!(relay.bodies(), [t]);
}

#[test]
fn rate_limit_hit_and_expiry() {
    let relay = Relay::start();
    let sb = Sandbox::new();
    let t = token(8);
    assert_eq!(
        sb.deliver(&relay, PLAIN.as_ref(), &[&t]),
        (0, String::new())
    );
    let (code, err) = sb.deliver(&relay, PLAIN.as_ref(), &["-v", "--interval", "1m", &t]);
    assert_eq!(code, 0);
    assert!(
        err.starts_with(&format!(
            "deltapush-mda: token {}: rate-limited: ",
            shown(&t)
        )) && err.ends_with(" s left\n"),
        "{err}"
    );
    let left: u64 = err.split("rate-limited: ").nth(1).unwrap()[..2]
        .trim()
        .parse()
        .unwrap();
    assert!((55..=60).contains(&left), "{left}");
    assert_eq!(relay.bodies().len(), 1);

    // The stamp ages past a 1 s interval: notified again.
    let stamp = fs::File::options().write(true).open(sb.stamp(&t)).unwrap();
    stamp
        .set_modified(SystemTime::now() - Duration::from_secs(2))
        .unwrap();
    assert_eq!(
        sb.deliver(&relay, PLAIN.as_ref(), &["--interval", "1s", &t]),
        (0, String::new())
    );
    assert_eq!(relay.bodies().len(), 2);
    // And right after, limited again; an interval of 0 turns the limit off.
    assert_eq!(
        sb.deliver(&relay, PLAIN.as_ref(), &["--interval", "1s", &t]),
        (0, String::new())
    );
    assert_eq!(relay.bodies().len(), 2);
    assert_eq!(
        sb.deliver(&relay, PLAIN.as_ref(), &["--interval", "0", &t]),
        (0, String::new())
    );
    assert_eq!(relay.bodies().len(), 3);
}

#[test]
fn real_interval_expires() {
    let relay = Relay::start();
    let sb = Sandbox::new();
    let t = token(9);
    let args = ["--interval", "1s", t.as_str()];
    sb.deliver(&relay, PLAIN.as_ref(), &args);
    sb.deliver(&relay, PLAIN.as_ref(), &args);
    assert_eq!(relay.bodies().len(), 1);
    thread::sleep(Duration::from_millis(1100));
    sb.deliver(&relay, PLAIN.as_ref(), &args);
    assert_eq!(relay.bodies().len(), 2);
}

#[test]
fn stamp_from_the_future_has_expired() {
    let relay = Relay::start();
    let sb = Sandbox::new();
    let t = token(10);
    sb.deliver(&relay, PLAIN.as_ref(), &[&t]);
    let stamp = fs::File::options().write(true).open(sb.stamp(&t)).unwrap();
    stamp
        .set_modified(SystemTime::now() + Duration::from_secs(3600))
        .unwrap();
    assert_eq!(
        sb.deliver(&relay, PLAIN.as_ref(), &[&t]),
        (0, String::new())
    );
    assert_eq!(relay.bodies().len(), 2);
}

#[test]
fn fifty_concurrent_deliveries_post_once() {
    // A slow relay keeps the lock held while the others pile up.
    let relay = Relay::scripted(Reply::Delay(Duration::from_millis(300), 200), []);
    let sb = Sandbox::new();
    let t = token(11);
    let children: Vec<_> = (0..50)
        .map(|_| {
            let mut c = sb
                .std_cmd()
                .args(["--url", &relay.url, &t])
                .stdin(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            c.stdin.take().unwrap().write_all(PLAIN.as_bytes()).unwrap();
            c
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0));
        assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    }
    assert_eq!(relay.bodies(), [t]);
}

#[test]
fn each_token_once() {
    let relay = Relay::start();
    let sb = Sandbox::new();
    let (a, b) = (token(12), token(13));
    assert_eq!(
        sb.deliver(&relay, PLAIN.as_ref(), &[&a, &b, &a]),
        (0, String::new())
    );
    assert_eq!(relay.bodies(), [a.clone(), b.clone()]);
    // One connection serves both tokens.
    let file = sb.write("tokens", format!("# my phone\n{b}\n\n  {a}  \n"));
    let sb2 = Sandbox::new();
    let relay2 = Relay::start();
    assert_eq!(
        sb2.deliver(
            &relay2,
            PLAIN.as_ref(),
            &["--token-file", file.to_str().unwrap(), &a]
        ),
        (0, String::new())
    );
    assert_eq!(relay2.bodies(), [a, b]);
}

#[test]
fn gone_token_says_what_to_do() {
    let relay = Relay::scripted(Reply::Status(410), []);
    let sb = Sandbox::new();
    let t = token(14);
    let line = format!(
        "deltapush-mda: token {}: the relay says it is no longer valid (410 Gone); \
         copy the current notify token from Delta Chat\n",
        shown(&t)
    );
    assert_eq!(sb.deliver(&relay, PLAIN.as_ref(), &[&t]), (0, line.clone()));
    assert_eq!(
        sb.deliver(&relay, PLAIN.as_ref(), &["--tempfail", &t]),
        (75, line)
    );
    assert_eq!(
        sb.deliver(&relay, PLAIN.as_ref(), &["-q", "--tempfail", &t]),
        (75, String::new())
    );
    // Never retried within a run, never stamped.
    assert_eq!(relay.bodies().len(), 3);
    assert!(!sb.stamp(&t).exists());
}

#[test]
fn other_client_errors_are_not_retried() {
    let relay = Relay::scripted(Reply::Status(404), []);
    let sb = Sandbox::new();
    let t = token(15);
    let line = format!(
        "deltapush-mda: token {}: the relay refused it with HTTP 404; check --url\n",
        shown(&t)
    );
    assert_eq!(sb.deliver(&relay, PLAIN.as_ref(), &[&t]), (0, line));
    assert_eq!(relay.bodies().len(), 1);
}

#[test]
fn server_error_is_retried_then_succeeds() {
    let relay = Relay::scripted(Reply::Status(200), [Reply::Status(500)]);
    let sb = Sandbox::new();
    let t = token(16);
    assert_eq!(
        sb.deliver(&relay, PLAIN.as_ref(), &["--tempfail", &t]),
        (0, String::new())
    );
    assert_eq!(relay.bodies(), [t.clone(), t.clone()]);
    assert!(sb.stamp(&t).exists());
}

#[test]
fn server_error_until_the_budget_ends() {
    let relay = Relay::scripted(Reply::Status(500), []);
    let sb = Sandbox::new();
    let t = token(17);
    let start = Instant::now();
    let (code, err) = sb.deliver(
        &relay,
        PLAIN.as_ref(),
        &["--timeout", "1s", "--tempfail", &t],
    );
    assert!(start.elapsed() < Duration::from_secs(2));
    assert_eq!(code, 75);
    assert_eq!(
        err,
        format!(
            "deltapush-mda: token {}: not notified: the relay answered HTTP 500; \
             the next message will try again\n",
            shown(&t)
        )
    );
    assert!(relay.bodies().len() >= 2, "retried with backoff");
    assert!(!sb.stamp(&t).exists());
    // Healthy again: the next message notifies.
    relay.set_default(Reply::Status(200));
    assert_eq!(
        sb.deliver(&relay, PLAIN.as_ref(), &[&t]),
        (0, String::new())
    );
    assert!(sb.stamp(&t).exists());
}

#[test]
fn refused_connection() {
    let sb = Sandbox::new();
    let t = token(18);
    let url = format!("http://127.0.0.1:{}/notify", refused_port());
    let line = format!(
        "deltapush-mda: token {}: not notified: the relay refused the connection; \
         the next message will try again\n",
        shown(&t)
    );
    for (flag, code) in [("--interval=10s", 0), ("--tempfail", 75)] {
        let start = Instant::now();
        let out = sb
            .cmd()
            .args(["--url", &url, "--timeout", "1s", flag, &t])
            .write_stdin(PLAIN)
            .output()
            .unwrap();
        assert!(start.elapsed() < Duration::from_secs(2));
        assert_eq!(out.status.code(), Some(code));
        assert_eq!(String::from_utf8(out.stderr).unwrap(), line);
    }
    assert!(!sb.stamp(&t).exists());
}

#[test]
fn silent_relay_gives_up_within_the_timeout() {
    let relay = Relay::scripted(Reply::Hang, []);
    let sb = Sandbox::new();
    let t = token(19);
    let start = Instant::now();
    let (code, err) = sb.deliver(&relay, PLAIN.as_ref(), &["--timeout", "1s", &t]);
    let took = start.elapsed();
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert_eq!(code, 0);
    assert_eq!(
        err,
        format!(
            "deltapush-mda: token {}: not notified: the relay did not answer in time; \
             the next message will try again\n",
            shown(&t)
        )
    );
    assert!(!sb.stamp(&t).exists());
}

#[test]
fn token_is_never_a_path() {
    let relay = Relay::start();
    let sb = Sandbox::new();
    assert_eq!(
        sb.deliver(&relay, PLAIN.as_ref(), &["../../x"]),
        (0, String::new())
    );
    assert_eq!(relay.bodies(), ["../../x"]);
    let names: Vec<String> = fs::read_dir(sb.cache_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let stamp = common::sha256_hex(b"../../x");
    let mut expected = vec![stamp.clone(), format!("{stamp}.lock")];
    let mut names = names;
    names.sort();
    expected.sort();
    assert_eq!(names, expected);
    // Nothing next to the cache dir or the home.
    assert!(!sb.home.path().join("x").exists());
    assert!(!sb.cache_dir().parent().unwrap().join("x").exists());
}

#[test]
fn token_length_limit() {
    let relay = Relay::start();
    let sb = Sandbox::new();
    let ok = "t".repeat(4096);
    assert_eq!(
        sb.deliver(&relay, PLAIN.as_ref(), &[&ok]),
        (0, String::new())
    );
    let long = "u".repeat(4097);
    assert_eq!(
        sb.deliver(&relay, PLAIN.as_ref(), &[&long]),
        (
            64,
            "deltapush-mda: token uuuuuuuu… is 4097 bytes long, more than 4096; \
             copy it again from Delta Chat\n"
                .into()
        )
    );
    assert_eq!(relay.bodies(), [ok]);
}

#[test]
fn usage_errors() {
    let relay = Relay::start();
    let sb = Sandbox::new();
    assert_eq!(
        sb.deliver(&relay, PLAIN.as_ref(), &[]),
        (
            64,
            "deltapush-mda: no token given: pass TOKEN or --token-file PATH (see --help)\n".into()
        )
    );
    assert_eq!(
        sb.deliver(&relay, PLAIN.as_ref(), &["--frobnicate", "tok"]),
        (
            64,
            "deltapush-mda: unexpected argument '--frobnicate' found; see --help\n".into()
        )
    );
    assert_eq!(
        sb.deliver(
            &relay,
            PLAIN.as_ref(),
            &["-q", "--interval", "never", "tok"]
        ),
        (64, String::new())
    );
    assert_eq!(
        sb.deliver(&relay, PLAIN.as_ref(), &["bad token"]),
        (
            64,
            "deltapush-mda: token bad toke… has a character that is not visible ASCII at byte 4; \
             copy it again from Delta Chat\n"
                .into()
        )
    );
    assert!(relay.bodies().is_empty());
}

#[test]
fn plain_http_only_to_loopback() {
    let sb = Sandbox::new();
    let out = sb
        .cmd()
        .args(["--url", "http://notifications.delta.chat/notify", "tok"])
        .write_stdin(PLAIN)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert_eq!(
        String::from_utf8(out.stderr).unwrap(),
        "deltapush-mda: --url http://notifications.delta.chat/notify: plain http is only \
         allowed to a loopback host; use https://\n"
    );
    // The environment variable is the same option.
    let out = sb
        .cmd()
        .env("DELTAPUSH_URL", "http://192.168.1.1/notify")
        .arg("tok")
        .write_stdin(PLAIN)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
}

#[test]
fn unusable_cache_dir_is_a_config_error() {
    let relay = Relay::start();
    let sb = Sandbox::new();
    // A path below a regular file cannot be created, even by root (CI runs as root).
    let file = sb.write("not-a-dir", "");
    let dir = file.join("cache");
    let (code, err) = sb.deliver(
        &relay,
        PLAIN.as_ref(),
        &["--cache-dir", dir.to_str().unwrap(), "tok"],
    );
    assert_eq!(code, 78);
    assert_eq!(
        err,
        format!(
            "deltapush-mda: cache dir {}: Not a directory (os error 20); \
             fix it or give another with --cache-dir\n",
            dir.display()
        )
    );
    assert!(relay.bodies().is_empty());
}

#[test]
fn no_home_and_no_cache_dir() {
    let relay = Relay::start();
    let sb = Sandbox::new();
    let out = sb
        .cmd()
        .env_remove("HOME")
        .env_remove("XDG_CACHE_HOME")
        .args(["--url", &relay.url, "tok"])
        .write_stdin(PLAIN)
        .output()
        .unwrap();
    // Without HOME the library may still find the home in the password database.
    match out.status.code() {
        Some(78) => assert_eq!(
            String::from_utf8(out.stderr).unwrap(),
            "deltapush-mda: no home directory to keep stamps in; give --cache-dir\n"
        ),
        Some(0) => assert_eq!(String::from_utf8(out.stderr).unwrap(), ""),
        other => panic!("{other:?}"),
    }
}

#[test]
fn cache_dir_option_and_env() {
    let relay = Relay::start();
    let sb = Sandbox::new();
    let dir = sb.home.path().join("elsewhere/stamps");
    let t = token(20);
    let out = sb
        .cmd()
        .env("DELTAPUSH_CACHE_DIR", &dir)
        .args(["--url", &relay.url, &t])
        .write_stdin(PLAIN)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(dir.join(common::sha256_hex(t.as_bytes())).exists());
    assert!(!sb.cache_dir().exists());
}

#[test]
fn dry_run_sends_and_writes_nothing() {
    let relay = Relay::start();
    let sb = Sandbox::new();
    let (a, b) = (token(21), token(22));
    let (code, err) = sb.deliver(&relay, PLAIN.as_ref(), &["--dry-run", &a, &b]);
    assert_eq!(code, 0);
    assert_eq!(
        err,
        format!(
            "deltapush-mda: token {}: would notify {} (dry run)\n\
             deltapush-mda: token {}: would notify {} (dry run)\n",
            shown(&a),
            relay.url,
            shown(&b),
            relay.url
        )
    );
    assert!(relay.requests().is_empty());
    assert!(!sb.cache_dir().exists());
    // After a real run, the dry run reports the limit.
    sb.deliver(&relay, PLAIN.as_ref(), &[&a]);
    let (_, err) = sb.deliver(&relay, PLAIN.as_ref(), &["--dry-run", &a]);
    assert!(
        err.contains("rate-limited: ") && err.ends_with(" s left (dry run)\n"),
        "{err}"
    );
    assert_eq!(relay.bodies().len(), 1);
}

#[test]
fn real_messages_from_the_corpus() {
    let relay = Relay::start();
    let bounces = [
        "dsn_relayed.eml",
        "gmail_ndn.eml",
        "gmx_ndn.eml",
        "posteo_ndn.eml",
        "testrun_ndn.eml",
        "ndn_with_attachment.eml",
    ];
    let chats = [
        "text_from_alice_encrypted.eml",
        "mailinglist_chat_message.eml",
        "videochat_invitation.eml",
        "webxdc_good_extension.eml",
        "encrypted_with_received_headers.eml",
        "text_alt_plain.eml",
        "mail_attach_txt.eml",
        "thunderbird_with_autocrypt.eml",
        "mailparse-0.16.0-panic.eml",
    ];
    for name in bounces {
        let sb = Sandbox::new();
        let got = sb.deliver_file(&relay, &format!("corpus/{name}"), &["-v", "tok"]);
        assert_eq!(
            got,
            (
                0,
                "deltapush-mda: skipped: auto-submitted (auto-replied)\n".to_string()
            ),
            "{name}"
        );
    }
    assert!(relay.bodies().is_empty());
    for (i, name) in chats.iter().enumerate() {
        let sb = Sandbox::new();
        let t = token(200 + i as u32);
        let got = sb.deliver_file(&relay, &format!("corpus/{name}"), &[&t]);
        assert_eq!(got, (0, String::new()), "{name}");
    }
    assert_eq!(relay.bodies().len(), chats.len());
}

#[test]
fn help_and_version() {
    let sb = Sandbox::new();
    let out = sb.cmd().arg("--version").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        concat!("deltapush-mda ", env!("CARGO_PKG_VERSION"), "\n")
    );
    let out = sb.cmd().arg("--help").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "--token-file",
        "--interval",
        "--tempfail",
        "75  a token could not be notified",
        "type = MDA_external",
    ] {
        assert!(help.contains(needle), "{needle}");
    }
}
