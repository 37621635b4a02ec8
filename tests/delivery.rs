//! One delivery as a caller sees it: the POST the relay gets for each token, what the binary says
//! (nothing on success, one line with `-v`), the tokens it accepts and refuses on the command
//! line and in token files, usage errors and their exit codes, the URL policy, `--dry-run`,
//! `--help` and `--version`, and that no output or file ever holds a token.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::Duration;

use common::{
    Input, NO_TOKEN, PLAIN, Relay, Reply, Sandbox, bad_token, exec, invisible_at, line, mode,
    notified, refused_url, senders, shown, token, token_line, tree,
};

#[test]
fn plain_message_notifies_once_and_says_nothing() {
    let (sb, relay) = Sandbox::with_relay();
    let t = token(1);
    assert_eq!(sb.deliver(&relay, PLAIN, &[&t]), (0, String::new()));
    let reqs = relay.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].method, "POST");
    assert_eq!(reqs[0].path, "/notify");
    assert_eq!(reqs[0].body, t.as_bytes());
    assert_eq!(
        reqs[0].header("user-agent"),
        Some(concat!("deltapush-mda/", env!("CARGO_PKG_VERSION")))
    );
    assert!(sb.state(&t).is_file());
}

#[test]
fn verbose_says_what_it_did() {
    let (sb, relay) = Sandbox::with_relay();
    let t = token(2);
    assert_eq!(sb.deliver(&relay, PLAIN, &["-v", &t]), (0, notified(&t)));
}

#[test]
fn each_token_once_in_order() {
    let (sb, relay) = Sandbox::with_relay();
    let (a, b) = (token(12), token(13));
    assert_eq!(sb.deliver(&relay, PLAIN, &[&a, &b, &a]), (0, String::new()));
    relay.assert_bodies(&[&a, &b]);
    // The command line first, then the file; comments, blank lines and blanks around a token
    // are ignored.
    let file = sb.write("tokens", format!("# my phone\n{b}\n\n  {a}  \n"));
    let (sb, relay) = (Sandbox::new(), Relay::start());
    let args = ["--token-file", file.to_str().unwrap(), &a];
    assert_eq!(sb.deliver(&relay, PLAIN, &args), (0, String::new()));
    relay.assert_bodies(&[&a, &b]);
}

/// Every bad token is refused before anything is sent or written, with one line that shows at
/// most eight escaped characters of it.
#[test]
fn bad_tokens_are_refused_with_a_clear_line() {
    let (sb, relay) = Sandbox::with_relay();
    let longest = "t".repeat(4096);
    assert_eq!(sb.deliver(&relay, PLAIN, &[&longest]), (0, String::new()));
    let cases = [
        ("bad token", invisible_at(4)),
        ("a b", invisible_at(2)),
        ("tab\there", invisible_at(4)),
        ("esc\x1b[31mred", invisible_at(4)),
        ("tökén", invisible_at(2)),
        ("nl\nx", invisible_at(3)),
        (
            &"u".repeat(4097),
            "is 4097 bytes long, more than 4096".into(),
        ),
    ];
    for (tok, why) in cases {
        let before = tree(sb.home.path());
        assert_eq!(
            sb.deliver(&relay, PLAIN, &[tok]),
            (64, line(&bad_token(&shown(tok), &why))),
            "{tok:?}"
        );
        assert_eq!(tree(sb.home.path()), before, "{tok:?} created a file");
    }
    assert_eq!(
        sb.deliver(&relay, PLAIN, &[""]),
        (64, line("token is empty"))
    );
    relay.assert_bodies(&[&longest]);
}

#[test]
fn usage_errors() {
    let (sb, relay) = Sandbox::with_relay();
    assert_eq!(sb.deliver(&relay, PLAIN, &[]), (64, line(NO_TOKEN)));
    assert_eq!(
        sb.deliver(&relay, PLAIN, &["--frobnicate", "tok"]),
        (
            64,
            line("unexpected argument '--frobnicate' found; see --help")
        )
    );
    // clap lists what is missing on lines of their own: they are the point of the line.
    assert_eq!(
        sb.deliver(&relay, PLAIN, &["--password-file", "/nonexistent", "tok"]),
        (
            64,
            line(
                "the following required arguments were not provided: \
                 <--watch <URL>|--setup <NAME>>; see --help"
            )
        )
    );
    assert_eq!(
        sb.deliver(&relay, PLAIN, &["-q", "--interval", "never", "tok"]),
        (64, String::new())
    );
    relay.assert_bodies(&[]);
}

#[test]
fn bad_token_files_are_refused_before_anything_is_sent() {
    let (sb, relay) = Sandbox::with_relay();
    let dir = sb.home.path();
    let fifo = dir.join("fifo");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let open = sb.write("open", format!("{}\n", token(70)));
    fs::set_permissions(&open, fs::Permissions::from_mode(0o666)).unwrap();
    let bad_utf8 = sb.write("bad-utf8", b"good\n\xff\n");
    let nul = sb.write("nul", b"good\nab\0cd\n");
    let spaced = sb.write("spaced", format!("# mine\n{} x\n", token(71)));
    let big = sb.write("big", vec![b'#'; 2 * 1024 * 1024]);
    let empty = sb.write("empty", "# nothing here\n\n");
    let missing = dir.join("missing");
    let show = |p: &Path| p.display().to_string();
    let file = |p: &Path, why: &str| line(&format!("--token-file {}: {why}", show(p)));
    let at_line_2 = |p: &Path, tok: &str, at: usize| {
        line(&format!(
            "{}:2: {}",
            show(p),
            bad_token(&shown(tok), &invisible_at(at))
        ))
    };
    let cases = [
        (&fifo, 78, file(&fifo, "not a regular file")),
        (&dir.to_path_buf(), 78, file(dir, "not a regular file")),
        (
            &open,
            78,
            file(
                &open,
                &format!("writable by every user; run: chmod o-w {}", show(&open)),
            ),
        ),
        (
            &missing,
            78,
            file(&missing, "No such file or directory (os error 2)"),
        ),
        (
            &bad_utf8,
            78,
            file(&bad_utf8, "stream did not contain valid UTF-8"),
        ),
        (&nul, 64, at_line_2(&nul, "ab\0cd", 3)),
        (
            &spaced,
            64,
            at_line_2(&spaced, &format!("{} x", token(71)), token(71).len() + 1),
        ),
        (
            &big,
            78,
            file(&big, "2097152 bytes, too big for a token file"),
        ),
        (&empty, 64, line(NO_TOKEN)),
    ];
    for (path, code, want) in cases {
        let before = tree(sb.home.path());
        let r = sb.run(&["--url", &relay.url, "--token-file", &show(path)], PLAIN);
        assert_eq!(r.said(), (code, want.as_str()));
        // A FIFO without a writer must not hang the open.
        assert!(
            r.elapsed < Duration::from_secs(2),
            "{want}: {:?}",
            r.elapsed
        );
        assert_eq!(tree(sb.home.path()), before, "{want}");
    }
    relay.assert_bodies(&[]);
}

#[test]
fn plain_http_only_to_loopback() {
    let sb = Sandbox::new();
    let r = sb.run(
        &["--url", "http://notifications.delta.chat/notify", "tok"],
        PLAIN,
    );
    assert_eq!(
        r.said(),
        (
            78,
            line(
                "--url http://notifications.delta.chat/notify: plain http is only allowed to a \
                 loopback host; use https://"
            )
            .as_str()
        )
    );
    // The environment variable is the same option.
    let mut cmd = sb.command();
    cmd.env("DELTAPUSH_URL", "http://192.168.1.1/notify")
        .arg("tok");
    assert_eq!(exec(cmd, PLAIN).code, 78);
}

#[test]
fn dry_run_sends_and_writes_nothing() {
    let (sb, relay) = Sandbox::with_relay();
    let (a, b) = (token(21), token(22));
    let would = |t: &str| token_line(t, &format!("would notify {} (dry run)", relay.url));
    assert_eq!(
        sb.deliver(&relay, PLAIN, &["--dry-run", &a, &b]),
        (0, would(&a) + &would(&b))
    );
    assert!(relay.requests().is_empty());
    assert!(!sb.cache_dir().exists());
    // After a real run, the dry run says it would defer, and starts no sender.
    sb.deliver(&relay, PLAIN, &[&a]);
    let (code, err) = sb.deliver(&relay, PLAIN, &["--dry-run", &a]);
    let head = token_line(&a, "would defer by ");
    assert!(
        code == 0
            && err.starts_with(head.trim_end_matches('\n'))
            && err.ends_with(" s (dry run)\n"),
        "{err}"
    );
    assert_eq!(senders(sb.home.path()), []);
    relay.assert_bodies(&[&a]);
}

#[test]
fn help_and_version() {
    let sb = Sandbox::new();
    let r = sb.run(&["--version"], Input::Null);
    assert_eq!(r.said(), (0, ""));
    assert_eq!(
        r.stdout,
        concat!("deltapush-mda ", env!("CARGO_PKG_VERSION"), "\n")
    );
    let r = sb.run(&["--help"], Input::Null);
    assert_eq!(r.said(), (0, ""));
    for needle in [
        "--token-file",
        "--interval",
        "--tempfail",
        "75  a token could not be notified",
        "type = MDA_external",
    ] {
        assert!(r.stdout.contains(needle), "{needle}");
    }
}

/// Drives every way a run can end with realistic tokens, under umask 000: every output is
/// checked by the harness (no token beyond its name), each run here must say something, the
/// relay's headers hold no token, and the cache dir (0700) holds only 0600 files named by hash
/// and empty.
#[test]
fn secrets_never_leak() {
    let sb = Sandbox::new();
    let tokens: Vec<String> = (200..216).map(token).collect();
    let t = |i: usize| tokens[i].as_str();
    let ok = Relay::start();
    let gone = Relay::always(Reply::Status(410));
    let failing = Relay::always(Reply::Status(503));
    let refused = refused_url();
    let hang = Relay::always(Reply::Hang);
    let garbage = Relay::always(Reply::Garbage);
    let refused_403 = Relay::always(Reply::Status(403));
    let cache_file = sb.write("not-a-dir", "");
    let with_ctrl = format!("{}\x07{}", &t(9)[..400], &t(9)[400..]);
    let too_long = t(10).repeat(5);
    let spaced_file = sb.write("tokens", format!("{}\n{} trailing\n", t(11), t(12)));
    let ww_file = sb.write("ww", format!("{}\n", t(13)));
    fs::set_permissions(&ww_file, fs::Permissions::from_mode(0o666)).unwrap();

    let go = |args: &[&str], want_code: i32| {
        let mut cmd: Command = sb.command();
        cmd.args(args);
        // SAFETY: umask(2) is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::umask(0);
                Ok(())
            });
        }
        let r = exec(cmd, PLAIN);
        assert_eq!(r.code, want_code, "{}", r.stderr);
        assert!(!r.stderr.is_empty(), "{args:?} said nothing");
    };
    go(&["-v", "--url", &ok.url, t(0), t(1)], 0);
    // Once more: now deferred, and a sender holds each token.
    go(&["-v", "--url", &ok.url, t(0), t(1)], 0);
    let spaced = spaced_file.display().to_string();
    let ww = ww_file.display().to_string();
    let cf = cache_file.display().to_string();
    let runs: [(&[&str], i32); 14] = [
        (&["--dry-run", "--url", &ok.url, t(2)], 0),
        // Retrying the mail cannot revive a token: no EX_TEMPFAIL.
        (&["--url", &gone.url, "--tempfail", t(3)], 0),
        (&["--url", &failing.url, "--timeout", "500ms", t(4)], 0),
        (&["--url", &refused, "--timeout", "500ms", t(5)], 0),
        (&["--url", &hang.url, "--timeout", "500ms", t(6)], 0),
        (&["--url", &garbage.url, "--timeout", "500ms", t(7)], 0),
        (&["--url", &refused_403.url, t(8)], 0),
        (&["--url", &ok.url, &with_ctrl], 64),
        (&["--url", &ok.url, &too_long], 64),
        (&["--url", &ok.url, "--token-file", &spaced], 64),
        (&["--url", &ok.url, "--token-file", &ww, t(14)], 78),
        (&["--url", &ok.url, "--cache-dir", &cf, t(15)], 78),
        (&["--url", "http://example.org/notify", t(15)], 78),
        (&["--url", &ok.url, "--interval", "soon", t(15)], 64),
    ];
    // Each token has a run of its own: they may all run at once.
    thread::scope(|s| {
        for (args, code) in runs {
            s.spawn(move || go(args, code));
        }
    });

    let cache = sb.cache_dir();
    assert_eq!(mode(&cache), 0o700);
    let mut files = 0;
    for entry in fs::read_dir(&cache).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        let hex = [".lock", ".waiter"]
            .iter()
            .find_map(|ext| name.strip_suffix(ext))
            .unwrap_or(&name);
        assert!(
            hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
            "{name}"
        );
        assert_eq!(mode(&entry.path()), 0o600, "{name}");
        let text = fs::read_to_string(entry.path()).unwrap();
        assert!(!text.contains(common::TOKEN_BODY), "{name} holds a token");
        files += 1;
    }
    // t(0) and t(1) notified: a state and a lock each; the gone one a state (the 410) and a
    // lock; every other failed token: a lock only.
    assert!(sb.state(t(0)).is_file() && sb.state(t(1)).is_file());
    assert!(files >= 4, "{files} files");
    for r in ok.requests() {
        assert_eq!(r.path, "/notify");
        assert!(
            r.headers
                .iter()
                .all(|(_, v)| !v.contains(common::TOKEN_BODY))
        );
    }
}

/// What a person copies from Delta Chat's log (Settings → Advanced → View Log) works as it is,
/// on the command line and in the token file.
#[test]
fn a_line_copied_from_the_log_is_a_token() {
    let (sb, relay) = Sandbox::with_relay();
    let (android, ios) = (
        "fcm-chat.delta:APA91bHun4MxP5egoKMwt2KZFBaFUH-1RYqx",
        "0a1b".repeat(16),
    );
    let file = sb.write("tokens", format!("# my iPhone\n  notify-token= {ios}  \n"));
    let file = file.display().to_string();
    let args = [
        "-v",
        &format!("push-token={android}"),
        "--token-file",
        &file,
    ];
    let (code, stderr) = sb.deliver(&relay, PLAIN, &args);
    assert_eq!((code, stderr), (0, notified(android) + &notified(&ios)));
    relay.assert_bodies(&[android, &ios]);
    // Named by kind and fingerprint: an FCM and an APNs token.
    assert!(shown(android).starts_with("fcm#") && shown(&ios).starts_with("apns#"));
}

/// A phone without a push token shows `<empty>` (Android without Google Play services) or
/// `<unset>` (iOS with notifications off) in its log: one line says so, nothing is sent.
#[test]
fn a_phone_without_a_push_token_says_why() {
    let (sb, relay) = Sandbox::with_relay();
    let android = line(
        "this phone has no push token (push-token=<empty>): it has no Google Play services, so \
         nothing can wake Delta Chat on it",
    );
    for arg in ["push-token=<empty>", "push-token=", " push-token = "] {
        assert_eq!(
            sb.deliver(&relay, PLAIN, &[arg]),
            (64, android.clone()),
            "{arg:?}"
        );
    }
    let file = sb.write("tokens", "notify-token=<unset>\n");
    let r = sb.run(
        &[
            "--url",
            &relay.url,
            "--token-file",
            &file.display().to_string(),
        ],
        PLAIN,
    );
    let ios = format!(
        "{}:1: this phone has no push token (notify-token=<unset>): notifications are off for \
         Delta Chat; turn them on, then copy the token again from View Log",
        file.display()
    );
    assert_eq!(r.said(), (64, line(&ios).as_str()));
    relay.assert_bodies(&[]);
    assert!(!sb.cache_dir().exists());
}

/// Two phones of one kind are told apart in every line, and no line holds more of a token than
/// its kind.
#[test]
fn tokens_of_one_kind_are_told_apart() {
    let (sb, relay) = Sandbox::with_relay();
    let (a, b) = ("fcm-chat.delta:SECRETaaaa", "fcm-chat.delta:SECRETbbbb");
    let (code, stderr) = sb.deliver(&relay, PLAIN, &["-v", a, b]);
    assert_eq!(
        (code, stderr.as_str()),
        (0, (notified(a) + &notified(b)).as_str())
    );
    assert_ne!(shown(a), shown(b));
    assert!(
        !stderr.contains("SECRET") && !stderr.contains("chat.delta"),
        "{stderr}"
    );
}
