//! `--check`: one line per check on stdout (tokens, cache dir, URL, DNS, TCP, TLS, HTTP), a
//! summary line on stderr when something failed, the exit code of the first failure, and never
//! a notification: the relay only ever sees a GET without a body.

mod common;

use common::{
    Https, Input, Relay, Reply, Sandbox, bad_token, exec, invisible_at, line, realmail::free_port,
    shown, token,
};

/// A --check run: its exit code, its stdout lines, and its stderr.
fn check(
    sb: &Sandbox,
    url: &str,
    tokens: &[&str],
    ca: Option<&std::path::Path>,
) -> (i32, Vec<String>, String) {
    let mut cmd = sb.command();
    cmd.args(["--check", "--timeout", "2s", "--url", url])
        .args(tokens);
    if let Some(ca) = ca {
        cmd.env("SSL_CERT_FILE", ca);
    }
    let r = exec(cmd, Input::Null);
    let lines = r.stdout.lines().map(str::to_string).collect();
    (r.code, lines, r.stderr)
}

/// Compares lines; `*` in a wanted line stands for a run of characters that changes between
/// runs (addresses, times).
fn assert_lines(got: &[String], want: &[&str]) {
    assert_eq!(got.len(), want.len(), "{got:#?}");
    for (g, w) in got.iter().zip(want) {
        assert!(glob(g, w), "{g} !~ {w}");
    }
}

fn glob(text: &str, pattern: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if parts.len() == 1 {
        return text == pattern;
    }
    if text.len() < first.len() + last.len() || !text.starts_with(first) || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}

#[test]
fn relay_up_sends_no_notification() {
    // The real relay answers 405 to GET; any HTTP answer proves the path.
    let relay = Relay::always(Reply::Status(405));
    let sb = Sandbox::new();
    let t = token(30);
    let cache = sb.cache_dir();
    let (code, lines, err) = check(&sb, &relay.url, &[&t], None);
    assert_eq!((code, err.as_str()), (0, ""), "{lines:#?}");
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
    assert_eq!(sb.deliver(&relay, "", &[&t]), (0, String::new()));
    let (code, lines, _) = check(&sb, &relay.url, &[&t], None);
    assert_eq!(code, 0);
    assert_lines(
        &lines[2..3],
        &[&format!(
            "ok    token {}: last notified * ago; its interval ends in *",
            shown(&t)
        )],
    );

    // A wakeup still waiting a minute after its interval ended lost its sender (killed, or the
    // machine restarted): --check says so, and that the next message sends it.
    let state = sb.state(&t);
    let text = std::fs::read_to_string(&state).unwrap();
    std::fs::write(&state, format!("{text}pending 0\n")).unwrap();
    common::backdate(&state, "notified", std::time::Duration::from_secs(80));
    common::backdate(&state, "pending", std::time::Duration::from_secs(75));
    let (code, lines, _) = check(&sb, &relay.url, &[&t], None);
    assert_eq!(code, 0);
    assert_lines(
        &lines[2..3],
        &[&format!(
            "ok    token {}: last notified 1m 2*s ago; a deferred wakeup was due 1m 1*s ago and \
             its sender is gone: the next message sends it",
            shown(&t)
        )],
    );
}

#[test]
fn relay_down() {
    let sb = Sandbox::new();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/notify");
    let (code, lines, err) = check(&sb, &url, &["tok"], None);
    assert_eq!((code, err), (69, line("1 check failed")));
    assert_eq!(
        lines.last().unwrap(),
        &format!(
            "FAIL  tcp 127.0.0.1 port {port}: Connection refused (os error 111); \
             is the relay up, is a firewall in the way?"
        )
    );
}

/// --check resolves the command line as a run does: the same tokens, each once, and the same
/// first error, as its one failed check.
#[test]
fn starts_from_the_configuration_of_a_run() {
    let relay = Relay::always(Reply::Status(405));
    let sb = Sandbox::new();
    let t = token(31);
    let (code, lines, err) = check(&sb, &relay.url, &[&t, &format!("push-token={t}"), &t], None);
    assert_eq!((code, err.as_str()), (0, ""), "{lines:#?}");
    assert_eq!(lines[0], format!("ok    token {}: well-formed", shown(&t)));
    assert_eq!(lines.iter().filter(|l| l.contains(&shown(&t))).count(), 2);

    let (code, lines, err) = check(&sb, &relay.url, &[&t, "bad token"], None);
    assert_eq!((code, err), (64, line("1 check failed")));
    assert_eq!(
        lines,
        [format!(
            "FAIL  {}",
            bad_token(&shown("bad token"), &invisible_at(4))
        )]
    );
    let (code, lines, _) = check(&sb, "http://example.org/notify", &[&t], None);
    assert_eq!(code, 78);
    assert_eq!(
        lines,
        [
            "FAIL  --url http://example.org/notify: plain http is only allowed to a loopback host; \
         use https://"
        ]
    );
    // None of them posted a token.
    assert!(
        relay
            .requests()
            .iter()
            .all(|r| r.method == "GET" && r.body.is_empty())
    );
}

#[test]
fn https_trusts_only_the_configured_ca() {
    let relay = Relay::always(Reply::Status(405));
    let https = Https::before(&relay);
    let sb = Sandbox::new();
    let url = &https.url;

    let (code, lines, err) = check(&sb, url, &["tok"], Some(&https.ca));
    assert_eq!((code, err.as_str()), (0, ""), "{lines:#?}");
    assert_eq!(
        lines[lines.len() - 2..],
        [
            "ok    tls 127.0.0.1: certificate verified".to_string(),
            format!("ok    http GET {url}: answered 405"),
        ]
    );

    // Without the CA the system store does not know this certificate. Why exactly is the TLS
    // library's wording; the line around it is ours.
    let (code, lines, err) = check(&sb, url, &["tok"], None);
    assert_eq!((code, err), (69, line("1 check failed")));
    assert_lines(
        &lines[lines.len() - 1..],
        &["FAIL  tls 127.0.0.1: *; check the system CA store or SSL_CERT_FILE"],
    );
    assert_eq!(
        relay.requests().len(),
        1,
        "only the trusted GET got through"
    );
}
