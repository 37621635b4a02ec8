//! Smarter wakeups and self-diagnosis (issue 5): --skip-from, --only-chat, --max-age, --check.

mod common;
#[allow(dead_code)]
#[path = "common/realmail.rs"]
mod realmail;

use std::time::{Duration, SystemTime};

use common::{Relay, Reply, Sandbox, refused_port, shown, token};

fn skipped(reason: &str) -> (i32, String) {
    (0, format!("deltapush-mda: skipped: {reason}\n"))
}

#[test]
fn mail_from_myself_does_not_ring() {
    let relay = Relay::start();
    let sb = Sandbox::new();
    let t = token(1);
    let mine = "From: Me <ME@Example.org>\nSubject: sent from my laptop\n\nhi\n";
    let theirs = "From: Alice <alice@example.org>\nSubject: hi\n\nhi\n";
    assert_eq!(
        sb.deliver(
            &relay,
            mine.as_ref(),
            &["-v", "--skip-from", "me@example.org", &t]
        ),
        skipped("from self")
    );
    // Comma-separated in the environment, and still silent without -v.
    let out = sb
        .cmd()
        .env("DELTAPUSH_SKIP_FROM", "other@example.net, me@example.org")
        .args(["--url", &relay.url, &t])
        .write_stdin(mine)
        .output()
        .unwrap();
    assert_eq!((out.status.code(), out.stderr.len()), (Some(0), 0));
    assert!(relay.bodies().is_empty());
    assert_eq!(
        sb.deliver(
            &relay,
            theirs.as_ref(),
            &["--skip-from", "me@example.org", &t]
        ),
        (0, String::new())
    );
    assert_eq!(relay.bodies(), [t]);
}

#[test]
fn only_chat_messages_with_real_mail() {
    let relay = Relay::start();
    // Delta Chat messages carry Chat-Version in the outer, unencrypted headers.
    let chats = [
        "text_from_alice_encrypted.eml",
        "mailinglist_chat_message.eml",
        "videochat_invitation.eml",
        "webxdc_good_extension.eml",
        "encrypted_with_received_headers.eml",
    ];
    let ordinary = [
        "text_alt_plain.eml",
        "mail_attach_txt.eml",
        "thunderbird_with_autocrypt.eml",
        "thunderbird_encrypted_signed.eml",
        "messed_up_message_id.eml",
    ];
    for name in ordinary {
        let sb = Sandbox::new();
        let got = sb.deliver_file(
            &relay,
            &format!("corpus/{name}"),
            &["--only-chat", "-v", &token(2)],
        );
        assert_eq!(
            got,
            (
                0,
                "deltapush-mda: skipped: not a chat message\n".to_string()
            ),
            "{name}"
        );
    }
    assert!(relay.bodies().is_empty());
    for (i, name) in chats.iter().enumerate() {
        let sb = Sandbox::new();
        let got = sb.deliver_file(
            &relay,
            &format!("corpus/{name}"),
            &["--only-chat", &token(10 + i as u32)],
        );
        assert_eq!(got, (0, String::new()), "{name}");
    }
    assert_eq!(relay.bodies().len(), chats.len());
}

fn rfc2822(t: SystemTime) -> String {
    // humantime gives RFC 3339; turn it into the RFC 5322 form a mailer writes.
    let s = humantime::format_rfc3339_seconds(t).to_string();
    let out = std::process::Command::new("date")
        .args(["-u", "-R", "-d", &s])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn old_mail_does_not_ring() {
    let relay = Relay::start();
    let now = SystemTime::now();
    let old = rfc2822(now - Duration::from_secs(2 * 3600));
    let fresh = rfc2822(now - Duration::from_secs(60));
    let msg = |date: &str| format!("From: a@b\nDate: {date}\nSubject: x\n\nbody\n");

    let sb = Sandbox::new();
    assert_eq!(
        sb.deliver(
            &relay,
            msg(&old).as_ref(),
            &["-v", "--max-age", "1h", &token(20)]
        ),
        skipped(&format!("older than 1h (Date {old})"))
    );
    assert!(relay.bodies().is_empty());
    // Fresh, missing and unparseable dates all count as new.
    let cases = [
        msg(&fresh),
        "From: a@b\n\nno date\n".to_string(),
        msg("yesterday-ish"),
    ];
    for (i, m) in cases.iter().enumerate() {
        let sb = Sandbox::new();
        assert_eq!(
            sb.deliver(
                &relay,
                m.as_ref(),
                &["--max-age", "1h", &token(21 + i as u32)]
            ),
            (0, String::new()),
            "{m}"
        );
    }
    assert_eq!(relay.bodies().len(), 3);
}

/// The lines of a --check run, its exit code, and its stderr.
fn check(
    sb: &Sandbox,
    url: &str,
    extra: &[&str],
    env: &[(&str, &std::path::Path)],
) -> (i32, Vec<String>, String) {
    let mut cmd = sb.cmd();
    cmd.args(["--check", "--timeout", "2s", "--url", url])
        .args(extra);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn assert_lines(got: &[String], want: &[&str]) {
    assert_eq!(got.len(), want.len(), "{got:#?}");
    for (g, w) in got.iter().zip(want) {
        // `*` stands for a run of characters that changes between runs (addresses, times).
        match w.split_once('*') {
            Some((head, tail)) => assert!(g.starts_with(head) && g.ends_with(tail), "{g} !~ {w}"),
            None => assert_eq!(g, w),
        }
    }
}

#[test]
fn check_with_the_relay_up_sends_no_notification() {
    // The real relay answers 405 to GET; any HTTP answer proves the path.
    let relay = Relay::scripted(Reply::Status(405), []);
    let sb = Sandbox::new();
    let t = token(30);
    let cache = sb.cache_dir();
    let (code, lines, err) = check(&sb, &relay.url, &[&t], &[]);
    assert_eq!(code, 0, "{lines:#?}");
    assert_eq!(err, "");
    assert_lines(
        &lines,
        &[
            &format!("ok    token {}: well-formed", shown(&t)),
            &format!("ok    cache dir {}: usable", cache.display()),
            &format!("ok    token {}: never notified", shown(&t)),
            &format!("ok    url {}", relay.url),
            "ok    dns 127.0.0.1: 127.0.0.1",
            &format!("ok    tcp 127.0.0.1:{}: connected in * ms", relay.port),
            &format!("ok    http GET {}: answered 405", relay.url),
        ],
    );
    let reqs = relay.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!((reqs[0].method.as_str(), reqs[0].body.len()), ("GET", 0));

    // After a notification, --check tells when.
    relay.set_default(Reply::Status(200));
    assert_eq!(sb.deliver(&relay, "".as_ref(), &[&t]), (0, String::new()));
    let (code, lines, _) = check(&sb, &relay.url, &[&t], &[]);
    assert_eq!(code, 0);
    assert!(
        lines[2].starts_with(&format!("ok    token {}: last notified ", shown(&t)))
            && lines[2].contains(" ago; rate-limited for "),
        "{}",
        lines[2]
    );
}

#[test]
fn check_with_the_relay_down() {
    let sb = Sandbox::new();
    let port = refused_port();
    let url = format!("http://127.0.0.1:{port}/notify");
    let (code, lines, err) = check(&sb, &url, &["tok"], &[]);
    assert_eq!(code, 69);
    assert_eq!(err, "deltapush-mda: 1 check failed\n");
    assert_eq!(
        lines.last().unwrap(),
        &format!(
            "FAIL  tcp 127.0.0.1 port {port}: Connection refused (os error 111); \
             is the relay up, is a firewall in the way?"
        )
    );
}

#[test]
fn check_finds_bad_and_duplicate_tokens_and_insecure_url() {
    let relay = Relay::scripted(Reply::Status(405), []);
    let sb = Sandbox::new();
    let t = token(31);
    let (code, lines, err) = check(&sb, &relay.url, &[&t, "bad token", &t], &[]);
    assert_eq!(code, 64);
    assert_eq!(err, "deltapush-mda: 2 checks failed\n");
    assert_eq!(lines[0], format!("ok    token {}: well-formed", shown(&t)));
    assert_eq!(
        lines[1],
        "FAIL  token bad toke… has a character that is not visible ASCII at byte 4; \
         copy it again from Delta Chat"
    );
    assert_eq!(
        lines[2],
        format!(
            "FAIL  token {}: given twice; remove the duplicate",
            shown(&t)
        )
    );
    let (code, lines, _) = check(&sb, "http://example.org/notify", &[&t], &[]);
    assert_eq!(code, 78);
    assert_eq!(
        lines.last().unwrap(),
        "FAIL  --url http://example.org/notify: plain http is only allowed to a loopback host; use https://"
    );
    // Every check still ran, and none of them posted a token.
    assert!(
        relay
            .requests()
            .iter()
            .all(|r| r.method == "GET" && r.body.is_empty())
    );
}

#[test]
fn check_over_https_trusts_only_the_configured_ca() {
    let relay = Relay::scripted(Reply::Status(405), []);
    let tmp = tempfile::tempdir().unwrap();
    let ca = realmail::Ca::new(tmp.path());
    let front = realmail::TlsFront::start(&ca, relay.port, tmp.path());
    let sb = Sandbox::new();
    let url = front.url.clone();
    let ca = ca.cert.clone();

    let (code, lines, err) = check(&sb, &url, &["tok"], &[("SSL_CERT_FILE", &ca)]);
    assert_eq!((code, err.as_str()), (0, ""), "{lines:#?}");
    assert_eq!(
        lines[lines.len() - 2],
        "ok    tls 127.0.0.1: certificate verified"
    );
    assert_eq!(
        lines[lines.len() - 1],
        format!("ok    http GET {url}: answered 405")
    );

    // Without the CA the system store does not know this certificate.
    let (code, lines, err) = check(&sb, &url, &["tok"], &[]);
    assert_eq!(code, 69);
    assert_eq!(err, "deltapush-mda: 1 check failed\n");
    let last = lines.last().unwrap();
    assert!(
        last.starts_with("FAIL  tls 127.0.0.1: TLS: invalid peer certificate: ")
            && last.ends_with("; check the system CA store or SSL_CERT_FILE"),
        "{last}"
    );
    assert_eq!(
        relay.requests().len(),
        1,
        "only the trusted GET got through"
    );
}

#[test]
fn https_notification_with_a_local_ca() {
    let relay = Relay::start();
    let tmp = tempfile::tempdir().unwrap();
    let ca = realmail::Ca::new(tmp.path());
    let front = realmail::TlsFront::start(&ca, relay.port, tmp.path());
    let sb = Sandbox::new();
    let t = token(32);
    let out = sb
        .cmd()
        .env("SSL_CERT_FILE", &ca.cert)
        .args(["--url", &front.url, &t])
        .write_stdin(common::PLAIN)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8(out.stderr).unwrap(), "");
    assert_eq!(relay.bodies(), [t]);
}

#[test]
fn decision_lines_name_the_rule() {
    let relay = Relay::start();
    let sb = Sandbox::new();
    let t = token(33);
    let msg = "From: a@b\nChat-Version: 1.0\n\nhi\n";
    let args = ["-v", "--only-chat", "--skip-from", "me@x", t.as_str()];
    assert_eq!(
        sb.deliver(&relay, msg.as_ref(), &args),
        (
            0,
            format!("deltapush-mda: token {}: notified: 200\n", shown(&t))
        )
    );
    let (code, err) = sb.deliver(&relay, msg.as_ref(), &args);
    assert_eq!(code, 0);
    assert!(
        err.starts_with(&format!(
            "deltapush-mda: token {}: rate-limited: ",
            shown(&t)
        )) && err.ends_with(" s left\n"),
        "{err}"
    );
}
