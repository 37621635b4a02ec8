//! `--remember`: every device that registers a token keeps getting push. Tokens given are kept in
//! the cache dir and every run notifies all of them; 90 days without being given, or a 410,
//! forgets a token. Dovecot's Sieve uses this (tests/dovecot.rs drives the real thing).

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::{Input, PLAIN, Relay, Reply, Sandbox, backdate, shown, token};

/// One delivery that remembers `token`, with no interval in the way: (exit code, stderr).
fn given(sb: &Sandbox, relay: &Relay, token: &str) -> (i32, String) {
    sb.deliver(
        relay,
        PLAIN,
        &["--remember", "--interval", "0", "--", token],
    )
}

#[test]
fn devices_that_register_in_turn_all_get_push() {
    let sb = Sandbox::new();
    let relay = Relay::start();
    let (a, b) = (token(1), token(2));
    for t in [&a, &b] {
        let args = ["--remember", "--interval", "0", "--", t];
        assert_eq!(
            sb.deliver(&relay, PLAIN.as_ref(), &args),
            (0, String::new())
        );
    }
    // Phone A registered first, then B: the second delivery woke both, the given one first.
    assert_eq!(relay.bodies(), [&a, &b, &a].map(|t| t.as_str()));

    // The token is kept in its own state file, private, never in a file name.
    let state = sb.state(&a);
    assert_eq!(
        fs::metadata(&state).unwrap().permissions().mode() & 0o777,
        0o600
    );
    for entry in fs::read_dir(sb.cache_dir()).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert!(!name.contains("openpgp"), "{name}");
    }

    // --check lists them by kind and fingerprint only.
    let out = sb.run(&["--check", "--remember", "--url", &relay.url], Input::Null);
    let stdout = out.stdout;
    for t in [&a, &b] {
        assert!(
            stdout.contains(&format!("ok    token {}: last notified ", shown(t))),
            "{stdout}"
        );
        assert!(!stdout.contains(t.as_str()));
    }
    assert_eq!(
        stdout.matches("; remembered, last given ").count(),
        2,
        "{stdout}"
    );
    // Without --remember, a run notifies only what it is given.
    assert_eq!(
        sb.deliver(&relay, PLAIN.as_ref(), &["--interval", "0", &b]),
        (0, String::new())
    );
    // (The empty body is the GET of --check.)
    assert_eq!(relay.bodies(), [&a, &b, &a, "", &b]);
}

#[test]
fn a_token_not_given_for_90_days_is_forgotten() {
    let sb = Sandbox::new();
    let relay = Relay::start();
    let (old, new) = (token(3), token(4));
    given(&sb, &relay, &old);
    let state = sb.state(&old);
    backdate(&state, "seen", Duration::from_secs(90 * 24 * 3600 + 60));
    assert_eq!(given(&sb, &relay, &new), (0, String::new()));
    assert_eq!(relay.bodies(), [&old, &new].map(|t| t.as_str()));
    // Forgotten for good: the token is gone from its state file.
    assert!(!fs::read_to_string(&state).unwrap().contains(old.as_str()));
    given(&sb, &relay, &new);
    assert_eq!(relay.bodies(), [&old, &new, &new].map(|t| t.as_str()));
}

#[test]
fn a_gone_token_is_forgotten() {
    let sb = Sandbox::new();
    let relay = Relay::scripted(Reply::Status(200), []);
    let (dead, alive) = (token(5), token(6));
    given(&sb, &relay, &dead);
    relay.set_default(Reply::Status(410));
    let (code, stderr) = given(&sb, &relay, &alive);
    assert_eq!(code, 0);
    // The new token was answered 410 too (the relay's default): both lines, nothing else.
    assert_eq!(stderr.lines().count(), 2, "{stderr}");
    relay.set_default(Reply::Status(200));
    let state = sb.state(&dead);
    assert!(!fs::read_to_string(&state).unwrap().contains(dead.as_str()));
    let third = token(7);
    assert_eq!(given(&sb, &relay, &third), (0, String::new()));
    // Neither dead token was posted again.
    assert_eq!(
        relay.bodies(),
        [&dead, &alive, &dead, &third].map(|t| t.as_str())
    );
}

#[test]
fn a_token_given_again_within_the_hour_is_not_written_again_and_after_it_is() {
    use std::os::unix::fs::MetadataExt;
    let sb = Sandbox::new();
    let relay = Relay::start();
    let t = token(9);
    // A --hold whose message is never stored posts nothing: only `seen` could be written.
    let hold = |sb: &Sandbox| {
        let run = sb.run(
            &["--remember", "--hold", "--url", &relay.url, "--", &t],
            PLAIN,
        );
        assert_eq!(run.said(), (0, ""));
    };
    hold(&sb);
    let state = sb.state(&t);
    let first = fs::metadata(&state).unwrap().ino();
    hold(&sb);
    assert_eq!(fs::metadata(&state).unwrap().ino(), first, "written again");
    backdate(&state, "seen", Duration::from_secs(2 * 3600));
    let backdated = fs::metadata(&state).unwrap().ino();
    hold(&sb);
    assert_ne!(
        fs::metadata(&state).unwrap().ino(),
        backdated,
        "not noted as seen"
    );
    common::kill_senders(sb.home.path());
}
