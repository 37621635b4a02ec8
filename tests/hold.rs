//! A wakeup held until its message is stored: `--hold` (Dovecot's Sieve, before the message is
//! stored) decides and keeps the wakeup for the delivering process; `--release` (its commit
//! hook, after) hands it to the token's sender and returns at once. Here the test process is
//! the delivering process: it is the parent of both runs, as Dovecot's LMTP is.

mod common;

use std::fs;
use std::time::{Duration, Instant};

use common::realmail::poll;
use common::{
    PLAIN, Relay, Reply, Sandbox, bounce, chat, kill_senders, mode, senders, skipped, token,
    token_line,
};

const PATIENCE: Duration = Duration::from_secs(10);

/// The record the runs of this test process share.
fn held(sandbox: &Sandbox) -> std::path::PathBuf {
    sandbox
        .cache_dir()
        .join(format!("held.{}", std::process::id()))
}

fn hold(sandbox: &Sandbox, relay: &Relay, message: Vec<u8>, extra: &[&str]) -> (i32, String) {
    let args = [&["-v", "--hold", "--url", &relay.url], extra].concat();
    let run = sandbox.run(&args, message);
    (run.code, run.stderr)
}

fn release(sandbox: &Sandbox) -> (i32, String, Duration) {
    let run = sandbox.run(&["-v", "--release"], common::Input::Null);
    (run.code, run.stderr, run.elapsed)
}

/// Waits for `n` POSTs, then for a moment more to see that no other comes.
fn posts(relay: &Relay, n: usize) -> Vec<String> {
    poll(PATIENCE, || relay.posts().len() >= n);
    poll(Duration::from_millis(300), || relay.posts().len() > n);
    relay.bodies()
}

#[test]
fn the_wakeup_waits_for_the_release_then_goes_at_once() {
    let (sandbox, relay) = Sandbox::with_relay();
    let tok = token(1);
    let said = hold(&sandbox, &relay, chat(), &["--", &tok]);
    assert_eq!(
        said,
        (0, token_line(&tok, "held until the message is stored"))
    );
    // Nothing sent, nothing waiting to send: only the record.
    assert!(relay.requests().is_empty());
    assert!(senders(sandbox.home.path()).is_empty());
    assert_eq!(mode(&held(&sandbox)), 0o600);
    assert_eq!(mode(&sandbox.cache_dir()), 0o700);

    let (code, stderr, _) = release(&sandbox);
    assert_eq!(
        (code, stderr),
        (0, token_line(&tok, "handed to its sender"))
    );
    assert_eq!(posts(&relay, 1), std::slice::from_ref(&tok));
    assert!(!held(&sandbox).exists(), "the record was taken");

    // A second commit of the same delivery (a copy filed elsewhere) finds nothing.
    assert_eq!(release(&sandbox).1, "");
    assert_eq!(posts(&relay, 1), [tok]);
}

#[test]
fn a_release_with_nothing_held_is_silent_and_sends_nothing() {
    let (sandbox, relay) = Sandbox::with_relay();
    let (code, stderr, _) = release(&sandbox);
    assert_eq!((code, stderr.as_str()), (0, ""));
    // No cache dir appears for it either.
    assert!(!sandbox.cache_dir().exists());
    assert!(relay.requests().is_empty());
}

#[test]
fn the_rules_decide_at_hold_and_a_skip_drops_what_the_process_held_before() {
    let (sandbox, relay) = Sandbox::with_relay();
    let tok = token(2);
    // Held, then never stored (the user's script discarded it): the next message of the same
    // process is automatic, and its commit must not release the earlier wakeup.
    assert_eq!(hold(&sandbox, &relay, chat(), &["--", &tok]).0, 0);
    assert_eq!(
        hold(&sandbox, &relay, bounce(), &["--", &tok]),
        (0, skipped("auto-submitted (auto-replied)"))
    );
    assert!(!held(&sandbox).exists());
    assert_eq!(release(&sandbox).1, "");
    let skip = ["--skip-from", "alice@example.org", "--", &tok];
    assert_eq!(
        hold(&sandbox, &relay, PLAIN.as_bytes().to_vec(), &skip),
        (0, skipped("from self"))
    );
    assert_eq!(release(&sandbox).1, "");
    poll(Duration::from_millis(300), || !relay.requests().is_empty());
    assert!(relay.requests().is_empty());
}

#[test]
fn a_hung_relay_holds_up_neither_run() {
    let sandbox = Sandbox::new();
    let relay = Relay::always(Reply::Hang);
    let tok = token(3);
    let started = Instant::now();
    assert_eq!(hold(&sandbox, &relay, chat(), &["--", &tok]).0, 0);
    let (code, _, took) = release(&sandbox);
    assert_eq!(code, 0);
    assert!(took < Duration::from_secs(1), "the release took {took:?}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "hold and release took {:?}",
        started.elapsed()
    );
    // The sender is the one waiting on the relay.
    assert!(poll(PATIENCE, || !relay.requests().is_empty()).is_some());
    assert_eq!(senders(sandbox.home.path()).len(), 1);
    kill_senders(sandbox.home.path());
}

#[test]
fn a_release_inside_the_interval_leaves_the_wakeup_for_the_interval_end() {
    let (sandbox, relay) = Sandbox::with_relay();
    let tok = token(4);
    let direct = sandbox.run(&["-v", "--url", &relay.url, "--", &tok], chat());
    assert_eq!(direct.code, 0, "{}", direct.stderr);
    assert_eq!(posts(&relay, 1).len(), 1);
    assert_eq!(
        hold(&sandbox, &relay, chat(), &["--interval", "2s", "--", &tok]).0,
        0
    );
    let (code, stderr, _) = release(&sandbox);
    assert_eq!(code, 0);
    assert!(
        stderr.starts_with(&token_line(&tok, "deferred by ").trim_end().to_string()),
        "{stderr}"
    );
    let times = relay.post_times(&tok);
    assert_eq!(times.len(), 1, "no second POST inside the interval");
    assert_eq!(posts(&relay, 2).len(), 2);
    let gap = relay.post_times(&tok)[1] - relay.post_times(&tok)[0];
    assert!(gap >= Duration::from_secs(2), "{gap:?}");
}

#[test]
fn with_remember_every_remembered_token_is_held_and_released() {
    let (sandbox, relay) = Sandbox::with_relay();
    let (old, new) = (token(5), token(6));
    let remember = |tok: &str| ["--remember", "--interval", "0", "--", tok].map(String::from);
    let args = remember(&old);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_eq!(hold(&sandbox, &relay, chat(), &args).0, 0);
    assert_eq!(release(&sandbox).0, 0);
    assert_eq!(posts(&relay, 1), std::slice::from_ref(&old));
    let args = remember(&new);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_eq!(
        hold(&sandbox, &relay, chat(), &args).1,
        [
            token_line(&new, "held until the message is stored"),
            token_line(&old, "held until the message is stored"),
        ]
        .concat()
    );
    assert_eq!(release(&sandbox).0, 0);
    let mut got = posts(&relay, 3);
    got.sort();
    let mut want = vec![old.clone(), old, new];
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn a_record_not_written_by_this_program_is_dropped_unused() {
    let (sandbox, relay) = Sandbox::with_relay();
    fs::create_dir_all(sandbox.cache_dir()).unwrap();
    fs::write(
        held(&sandbox),
        format!("not a held wakeup\ntoken {}\n", token(7)),
    )
    .unwrap();
    assert_eq!(release(&sandbox).1, "");
    assert!(!held(&sandbox).exists());
    poll(Duration::from_millis(300), || !relay.requests().is_empty());
    assert!(relay.requests().is_empty());
}
