//! A wakeup held until its message is stored: `--hold` (Dovecot's Sieve, before the message is
//! stored) decides, keeps the wakeup in `held.<pid>` for the delivering process and leaves a
//! waiter; Dovecot's commit hook renames the record to `stored.<pid>.<uid>`, and the waiter
//! hands each token to its sender. Here the test process is the delivering process (the
//! parent of the `--hold` runs, as Dovecot's LMTP is), and the test makes the hook's rename.

mod common;

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::realmail::poll;
use common::{
    Input, PLAIN, Relay, Reply, Sandbox, bounce, chat, exec, kill_senders, mode, senders, skipped,
    token, token_line, waiters,
};

const PATIENCE: Duration = Duration::from_secs(10);
/// Long enough for a wrong POST to show up: a waiter that saw a rename posts within
/// milliseconds.
const QUIET: Duration = Duration::from_millis(300);

/// The record the runs of this test process share.
fn held(sandbox: &Sandbox) -> PathBuf {
    sandbox
        .cache_dir()
        .join(format!("held.{}", std::process::id()))
}

/// What deltapush.lua does once the message is stored.
fn commit(sandbox: &Sandbox, uid: u32) {
    let stored = sandbox
        .cache_dir()
        .join(format!("stored.{}.{uid}", std::process::id()));
    fs::rename(held(sandbox), stored).unwrap();
}

fn hold(sandbox: &Sandbox, relay: &Relay, message: Vec<u8>, extra: &[&str]) -> (i32, String) {
    let args = [&["-v", "--hold", "--url", &relay.url], extra].concat();
    let run = sandbox.run(&args, message);
    (run.code, run.stderr)
}

/// Waits for `n` POSTs, then a moment more to see that no other comes; the bodies.
fn posts(relay: &Relay, n: usize) -> Vec<String> {
    poll(PATIENCE, || relay.posts().len() >= n);
    poll(QUIET, || relay.posts().len() > n);
    relay.bodies()
}

fn no_waiter_left(sandbox: &Sandbox) -> bool {
    poll(PATIENCE, || waiters(sandbox.home.path()).is_empty()).is_some()
}

#[test]
fn the_wakeup_waits_for_the_message_to_be_stored() {
    let (sandbox, relay) = Sandbox::with_relay();
    let tok = token(1);
    let said = hold(&sandbox, &relay, chat(), &["--", &tok]);
    assert_eq!(
        said,
        (0, token_line(&tok, "held until the message is stored"))
    );
    assert_eq!(mode(&held(&sandbox)), 0o600);
    assert_eq!(mode(&sandbox.cache_dir()), 0o700);
    // One waiter, in a session of its own, and nothing sent while the message is not there.
    let waiting = waiters(sandbox.home.path());
    assert_eq!(waiting.len(), 1, "{waiting:?}");
    assert_eq!(waiting[0].session, waiting[0].pid);
    // A forked copy of the run, whose command line held the token: `ps` shows it no more.
    assert!(
        !waiting[0].args.concat().contains(common::TOKEN_BODY),
        "{:?}",
        waiting[0].args
    );
    assert_eq!(posts(&relay, 0), Vec::<String>::new());

    commit(&sandbox, 7);
    assert_eq!(posts(&relay, 1), std::slice::from_ref(&tok));
    assert!(no_waiter_left(&sandbox), "the waiter stayed");
    let left: Vec<_> = fs::read_dir(sandbox.cache_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("held.") || n.starts_with("stored."))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_message_that_wakes_no_one_drops_what_its_process_held_before() {
    let (sandbox, relay) = Sandbox::with_relay();
    let tok = token(2);
    // Held, then never stored (the user's own script discarded it); the next message of the
    // same process is automatic, and its commit must not wake for the first.
    assert_eq!(hold(&sandbox, &relay, chat(), &["--", &tok]).0, 0);
    assert_eq!(
        hold(&sandbox, &relay, bounce(), &["--", &tok]),
        (0, skipped("auto-submitted (auto-replied)"))
    );
    assert!(!held(&sandbox).exists());
    assert!(
        no_waiter_left(&sandbox),
        "the first message's waiter stayed"
    );
    let skip = ["--skip-from", "alice@example.org", "--", &tok];
    assert_eq!(
        hold(&sandbox, &relay, PLAIN.as_bytes().to_vec(), &skip),
        (0, skipped("from self"))
    );
    assert!(!held(&sandbox).exists());
    assert!(relay.requests().is_empty());
}

#[test]
fn a_message_held_and_never_stored_gives_way_to_the_next_one() {
    let (sandbox, relay) = Sandbox::with_relay();
    let tok = token(3);
    assert_eq!(hold(&sandbox, &relay, chat(), &["--", &tok]).0, 0);
    let first = waiters(sandbox.home.path());
    assert_eq!(hold(&sandbox, &relay, chat(), &["--", &tok]).0, 0);
    // The first waiter sees its record replaced and goes; the second waits for its commit.
    assert!(poll(PATIENCE, || !first[0].alive()).is_some());
    assert_eq!(waiters(sandbox.home.path()).len(), 1);
    commit(&sandbox, 8);
    assert_eq!(posts(&relay, 1), [tok]);
}

#[test]
fn the_waiter_goes_when_the_delivering_process_ends_without_storing() {
    let (sandbox, relay) = Sandbox::with_relay();
    let tok = token(4);
    // A shell is the delivering process here: it runs the hold, then ends.
    let mut cmd = sandbox.command_for("sh");
    let bin = common::bin();
    cmd.arg("-c")
        .arg("\"$0\" --hold --url \"$1\" -- \"$2\"; exit 0")
        .arg(&bin)
        .arg(&relay.url)
        .arg(&tok);
    let run = exec(cmd, chat());
    assert_eq!((run.code, run.stderr.as_str()), (0, ""));
    assert!(no_waiter_left(&sandbox), "the waiter outlived its delivery");
    let records: Vec<_> = fs::read_dir(sandbox.cache_dir())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("held."))
        .collect();
    assert!(records.is_empty(), "{records:?}");
    assert!(relay.requests().is_empty());
}

#[test]
fn a_hung_relay_holds_up_neither_the_delivery_nor_the_commit() {
    let sandbox = Sandbox::new();
    let relay = Relay::always(Reply::Hang);
    let tok = token(5);
    let started = Instant::now();
    assert_eq!(hold(&sandbox, &relay, chat(), &["--", &tok]).0, 0);
    commit(&sandbox, 9);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    // The sender is the one that waits on the relay, holding the token's lock.
    assert!(poll(PATIENCE, || !relay.requests().is_empty()).is_some());
    assert_eq!(senders(sandbox.home.path()).len(), 1);
    // The next delivery does not wait for that lock.
    let next = Instant::now();
    assert_eq!(
        hold(&sandbox, &relay, chat(), &["--remember", "--", &tok]),
        (0, token_line(&tok, "held until the message is stored"))
    );
    assert!(
        next.elapsed() < Duration::from_secs(1),
        "{:?}",
        next.elapsed()
    );
    kill_senders(sandbox.home.path());
}

#[test]
fn a_message_stored_inside_the_interval_is_woken_at_its_end() {
    let (sandbox, relay) = Sandbox::with_relay();
    let tok = token(6);
    let direct = sandbox.run(&["--url", &relay.url, "--", &tok], chat());
    assert_eq!(direct.said(), (0, ""));
    assert_eq!(posts(&relay, 1).len(), 1);
    let interval = ["--interval", "2s", "--", &tok];
    assert_eq!(hold(&sandbox, &relay, chat(), &interval).0, 0);
    commit(&sandbox, 10);
    assert_eq!(
        posts(&relay, 1).len(),
        1,
        "a second POST inside the interval"
    );
    assert_eq!(posts(&relay, 2).len(), 2);
    let times = relay.post_times(&tok);
    assert!(times[1] - times[0] >= Duration::from_secs(2), "{times:?}");
}

#[test]
fn with_remember_every_remembered_token_is_held() {
    let (sandbox, relay) = Sandbox::with_relay();
    let (old, new) = (token(7), token(8));
    let given = |tok: &str| ["--remember", "--interval", "0", "--", tok].map(String::from);
    let args = given(&old);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_eq!(hold(&sandbox, &relay, chat(), &args).0, 0);
    commit(&sandbox, 11);
    assert_eq!(posts(&relay, 1), std::slice::from_ref(&old));
    let args = given(&new);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_eq!(
        hold(&sandbox, &relay, chat(), &args).1,
        [
            token_line(&new, "held until the message is stored"),
            token_line(&old, "held until the message is stored"),
        ]
        .concat()
    );
    commit(&sandbox, 12);
    let mut got = posts(&relay, 3);
    got.sort();
    let mut want = vec![old.clone(), old, new];
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn a_waiter_started_by_hand_with_nothing_held_ends_at_once() {
    let (sandbox, relay) = Sandbox::with_relay();
    let mut cmd: Command = sandbox.command();
    let waiting = format!("{}.00000000000000ff", std::process::id());
    cmd.args(["--wait-stored", &waiting, "--url", &relay.url]);
    let run = exec(cmd, Input::Null);
    assert_eq!(run.said(), (0, ""));
    assert!(relay.requests().is_empty());
}

#[test]
fn a_wakeup_that_failed_is_told_by_the_next_hold_whose_lines_reach_the_log() {
    let sandbox = Sandbox::new();
    let relay = Relay::always(Reply::Status(500));
    let tok = token(9);
    let args = ["--timeout", "1s", "--", &tok];
    assert_eq!(hold(&sandbox, &relay, chat(), &args).0, 0);
    commit(&sandbox, 13);
    let state = sandbox.state(&tok);
    assert!(
        poll(PATIENCE, || {
            senders(sandbox.home.path()).is_empty()
                && fs::read_to_string(&state).is_ok_and(|s| s.contains("\nfailed "))
        })
        .is_some(),
        "no failure left in the token state"
    );
    let (code, stderr) = hold(&sandbox, &relay, chat(), &args);
    assert_eq!(code, 0);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    let failed = token_line(&tok, "the deferred wakeup of ");
    assert!(lines[0].starts_with(failed.trim_end()), "{stderr}");
    assert!(
        lines[0].ends_with(" was not sent: the relay answered HTTP 500"),
        "{stderr}"
    );
    assert_eq!(
        format!("{}\n", lines[1]),
        token_line(&tok, "held until the message is stored")
    );
    kill_senders(sandbox.home.path());
}
