//! The cache dir and the token state in it: where it is (`--cache-dir`, `DELTAPUSH_CACHE_DIR`,
//! the XDG default, none without a home), the rate limit it keeps (one POST per `--interval`,
//! the 0.1.0 form of an empty file whose mtime is the last POST, a clock set back), that a token
//! never names a path, concurrent runs (one POST however many run at once, `kill -9` while
//! holding the lock), and cache dirs that cannot be used: a link, a file, under a file, writable
//! by all, read-only, or on a full disk.

mod common;

use std::collections::{BTreeSet, VecDeque};
use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, SystemTime};

use common::{
    Input, PLAIN, Relay, Reply, Running, Sandbox, Tmpfs, cache_dir_line, exec,
    in_own_mount_namespace, line, realmail, realmail::wait_for, run_cases, senders, sha256_hex,
    token, token_line, tree, write_legacy_state,
};

/// The soaks start hundreds of processes on a machine with two cores; the tests that time a run
/// share this lock for reading so that a soak (writer) never runs beside them.
static MACHINE: RwLock<()> = RwLock::new(());

fn timing() -> RwLockReadGuard<'static, ()> {
    MACHINE.read().unwrap_or_else(|e| e.into_inner())
}

fn exclusive() -> RwLockWriteGuard<'static, ()> {
    MACHINE.write().unwrap_or_else(|e| e.into_inner())
}

fn legacy_state(sb: &Sandbox, tok: &str, last: SystemTime) {
    write_legacy_state(&sb.state(tok), last);
}

#[test]
fn interval_defers_and_expires() {
    let _guard = timing();
    let (sb, relay) = Sandbox::with_relay();
    let t = token(8);
    assert_eq!(sb.deliver(&relay, PLAIN, &[&t]), (0, String::new()));
    let (code, err) = sb.deliver(&relay, PLAIN, &["-v", "--interval", "1m", &t]);
    let head = token_line(&t, "deferred by ");
    let left = err
        .strip_prefix(head.trim_end_matches('\n'))
        .and_then(|rest| rest.strip_suffix(" s\n"))
        .and_then(|n| n.parse::<u64>().ok());
    assert!(
        code == 0 && left.is_some_and(|n| (55..=60).contains(&n)),
        "{err}"
    );
    relay.assert_bodies(&[&t]);

    // The last POST two minutes ago: a 1 minute interval is over.
    let now = SystemTime::now();
    legacy_state(&sb, &t, now - Duration::from_secs(120));
    let args = ["--interval", "1m", t.as_str()];
    assert_eq!(sb.deliver(&relay, PLAIN, &args), (0, String::new()));
    relay.assert_bodies(&[&t, &t]);
    // Half a minute ago: not yet; the waiting sender will post for this one too.
    legacy_state(&sb, &t, now - Duration::from_secs(30));
    assert_eq!(sb.deliver(&relay, PLAIN, &args), (0, String::new()));
    relay.assert_bodies(&[&t, &t]);
    assert_eq!(senders(sb.home.path()).len(), 1);
    // --interval 0 turns the limit off.
    assert_eq!(
        sb.deliver(&relay, PLAIN, &["--interval", "0", &t]),
        (0, String::new())
    );
    relay.assert_bodies(&[&t, &t, &t]);
}

/// A last POST an hour in the future means the clock was set back: it has expired.
#[test]
fn state_from_the_future_has_expired() {
    let (sb, relay) = Sandbox::with_relay();
    let t = token(10);
    legacy_state(&sb, &t, SystemTime::now() + Duration::from_secs(3600));
    assert_eq!(sb.deliver(&relay, PLAIN, &[&t]), (0, String::new()));
    relay.assert_bodies(&[&t]);
}

#[test]
fn cache_dir_option_and_env() {
    let (sb, relay) = Sandbox::with_relay();
    let t = token(20);
    let (by_option, by_env) = (sb.home.path().join("a/b"), sb.home.path().join("c/d"));
    let d = by_option.display().to_string();
    assert_eq!(
        sb.deliver(&relay, PLAIN, &["--cache-dir", &d, &t]),
        (0, String::new())
    );
    let mut cmd = sb.command();
    cmd.env("DELTAPUSH_CACHE_DIR", &by_env)
        .args(["--url", &relay.url, &t]);
    assert_eq!(exec(cmd, PLAIN).said(), (0, ""));
    for dir in [by_option, by_env] {
        assert!(dir.join(sha256_hex(t.as_bytes())).is_file(), "{dir:?}");
    }
    assert!(!sb.cache_dir().exists());
}

/// Without HOME the home comes from the password database: only a user without an entry has
/// none. A user namespace makes the run such a user, root or not.
#[test]
fn no_home_and_no_cache_dir() {
    let (sb, relay) = Sandbox::with_relay();
    let uid = (60_000..65_000)
        // SAFETY: getpwuid(3) is only read for null here.
        .find(|&uid| unsafe { libc::getpwuid(uid) }.is_null())
        .unwrap()
        .to_string();
    let mut cmd = sb.command_for(realmail::require("unshare"));
    cmd.env_remove("HOME")
        .env_remove("XDG_CACHE_HOME")
        .args(["--user", "--map-user", &uid, "--map-group", &uid])
        .arg(common::bin())
        .args(["--url", &relay.url, "tok"]);
    assert_eq!(
        exec(cmd, PLAIN).said(),
        (
            78,
            line("no home directory to keep the cache dir in; give --cache-dir").as_str()
        )
    );
    relay.assert_bodies(&[]);
}

/// However a token looks, its state is named by its hash inside the cache dir: nothing is
/// created anywhere else, whatever the working directory.
#[test]
fn path_like_tokens_stay_in_the_cache_dir() {
    let (sb, relay) = Sandbox::with_relay();
    let deep = sb.home.path().join("a/b/c");
    fs::create_dir_all(&deep).unwrap();
    let outside = tempfile::tempdir().unwrap();
    let absolute = format!("{}/planted", outside.path().display());
    let tokens = [
        "../../x",
        "..",
        ".",
        "a/b",
        "/",
        "../../../../../../../../tmp/x",
        &absolute,
        &"x/".repeat(2048),
    ];
    let before = tree(sb.home.path());
    for tok in tokens {
        let mut cmd = sb.command();
        cmd.current_dir(&deep).args(["--url", &relay.url, tok]);
        assert_eq!(exec(cmd, PLAIN).said(), (0, ""), "{tok:?}");
    }
    relay.assert_bodies(&tokens);
    let mut want = before.clone();
    want.insert("cache".into());
    want.insert("cache/deltapush-mda".into());
    for tok in tokens {
        let state = sb.state(tok);
        let rel = state.strip_prefix(sb.home.path()).unwrap();
        want.insert(rel.to_path_buf());
        want.insert(rel.with_extension("lock"));
    }
    assert_eq!(tree(sb.home.path()), want);
    assert_eq!(tree(outside.path()), BTreeSet::new());
}

#[test]
fn unusable_cache_dirs() {
    let (sb, relay) = Sandbox::with_relay();
    let tok = token(72);
    let home = sb.home.path();
    let elsewhere = home.join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    let link = home.join("link");
    std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
    let file = sb.write("file", "");
    // Below a regular file nothing can be created, even by root.
    let under_file = file.join("sub");
    let open = home.join("open");
    fs::create_dir(&open).unwrap();
    fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
    let cases = [
        (&link, "is a symbolic link"),
        (&file, "not a directory"),
        (&under_file, "Not a directory (os error 20)"),
        (&open, "writable by every user"),
    ];
    for (dir, why) in cases {
        let before = tree(home);
        let d = dir.display().to_string();
        assert_eq!(
            sb.deliver(&relay, PLAIN, &["--cache-dir", &d, &tok]),
            (78, cache_dir_line(dir, why))
        );
        assert_eq!(tree(home), before);
    }
    relay.assert_bodies(&[]);
}

/// A sandbox, a relay and a tmpfs mounted with `options` in the sandbox, in a mount namespace
/// of the test's own; `None` in the outer run, which only checks that the inner one passed.
fn on_tmpfs(test: &str, options: &str) -> Option<(Sandbox, Relay, PathBuf, Tmpfs)> {
    if !in_own_mount_namespace(test) {
        return None;
    }
    let sb = Sandbox::new();
    let dir = sb.home.path().join("mnt");
    let mount = Tmpfs::mount(&dir, options);
    Some((sb, Relay::start(), dir, mount))
}

#[test]
fn read_only_cache_dir() {
    let Some((sb, relay, ro, _mount)) = on_tmpfs("read_only_cache_dir", "ro,mode=0700") else {
        return;
    };
    let tok = token(73);
    let err = File::create(ro.join("probe")).unwrap_err();
    // Existing but read-only: the lock file cannot be created.
    let d = ro.display().to_string();
    let lock = ro.join(format!("{}.lock", sha256_hex(tok.as_bytes())));
    assert_eq!(
        sb.deliver(&relay, PLAIN, &["--cache-dir", &d, &tok]),
        (78, cache_dir_line(&lock, &err.to_string()))
    );
    // To be created inside a read-only directory.
    let sub = ro.join("sub");
    let d = sub.display().to_string();
    assert_eq!(
        sb.deliver(&relay, PLAIN, &["--cache-dir", &d, &tok]),
        (78, cache_dir_line(&sub, &err.to_string()))
    );
    relay.assert_bodies(&[]);
    assert_eq!(tree(&ro), BTreeSet::new());
}

/// A 64 KiB tmpfs with 64 inodes, filled up: a token never seen cannot get a lock file and is
/// not sent; a known token is sent, and its state, which cannot be written, stays as it was.
#[test]
fn full_disk() {
    let options = "size=64k,nr_inodes=64,mode=0700";
    let Some((sb, relay, disk, _mount)) = on_tmpfs("full_disk", options) else {
        return;
    };
    let (old, new) = (token(74), token(75));
    let cache = disk.join("cache");
    let c = cache.display().to_string();
    assert_eq!(
        sb.deliver(&relay, PLAIN, &["--cache-dir", &c, &old]),
        (0, String::new())
    );
    let old_state = cache.join(sha256_hex(old.as_bytes()));
    let long_ago = SystemTime::now() - Duration::from_secs(3600);
    write_legacy_state(&old_state, long_ago);

    // Fill every block, then every inode.
    let mut filler = File::create(disk.join("blocks")).unwrap();
    let full = loop {
        use std::io::Write;
        if let Err(e) = filler
            .write_all(&[0u8; 4096])
            .and_then(|()| filler.sync_all())
        {
            break e;
        }
    };
    assert_eq!(full.raw_os_error(), Some(libc::ENOSPC));
    for i in 0.. {
        if let Err(e) = File::create(disk.join(format!("inode{i}"))) {
            assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
            break;
        }
    }

    let lock = cache.join(format!("{}.lock", sha256_hex(new.as_bytes())));
    assert_eq!(
        sb.deliver(&relay, PLAIN, &["--cache-dir", &c, &new]),
        (
            78,
            cache_dir_line(&lock, "No space left on device (os error 28)")
        )
    );
    // A token with its files in place is posted, but its new state cannot be written: the old
    // one stays whole, and the run says why.
    let new_state = cache.join(format!("{}.new", sha256_hex(old.as_bytes())));
    assert_eq!(
        sb.deliver(&relay, PLAIN, &["--cache-dir", &c, &old]),
        (
            78,
            cache_dir_line(&new_state, "No space left on device (os error 28)")
        )
    );
    assert_eq!(
        fs::metadata(&old_state).unwrap().modified().unwrap(),
        long_ago
    );
    assert!(!new_state.exists());
    relay.assert_bodies(&[&old, &old]);
}

// ---------------------------------------------------------------------------------------------
// Concurrent runs

/// Arguments for a run that may wait long for the lock and posts a token at most once an hour.
fn patient<'a>(relay: &'a Relay, tokens: &[&'a str]) -> Vec<&'a str> {
    let wait = ["--url", &relay.url, "--interval", "1h", "--timeout", "60s"];
    [&wait[..], tokens].concat()
}

/// Waits for every run: each exits 0 and says nothing.
fn all_silent(runs: Vec<Running>) {
    for run in runs {
        assert_eq!(run.finish().said(), (0, ""));
    }
}

/// The soaks side by side, under one hold of the machine lock: neither times a run, and the
/// first mostly waits for its slow relay.
#[test]
fn soaks() {
    let _guard = exclusive();
    run_cases(&[
        (
            "two hundred runs at once make one post",
            two_hundred_runs_at_once_make_one_post,
        ),
        ("twenty tokens ten runs each", twenty_tokens_ten_runs_each),
    ]);
}

/// Many runs at once for one token, while a slow relay keeps the first one's lock held: one
/// POST, every run silent.
fn two_hundred_runs_at_once_make_one_post() {
    let sb = Sandbox::new();
    let relay = Relay::scripted(
        Reply::Status(200),
        [Reply::Delay(Duration::from_millis(300), 200)],
    );
    let tok = token(50);
    let args = patient(&relay, &[&tok]);
    all_silent((0..200).map(|_| sb.start(&args, PLAIN)).collect());
    relay.assert_bodies(&[&tok]);
}

fn twenty_tokens_ten_runs_each() {
    let (sb, relay) = Sandbox::with_relay();
    let tokens: Vec<String> = (100..120).map(token).collect();
    let mut runs = Vec::new();
    for round in 0..10 {
        for tok in &tokens {
            // Some runs carry two tokens, so their locks are taken one after the other.
            let mut these = vec![tok.as_str()];
            if round % 3 == 0 {
                these.push(&tokens[(round * 7) % tokens.len()]);
            }
            runs.push(sb.start(&patient(&relay, &these), Input::Null));
        }
    }
    all_silent(runs);
    let mut got = relay.bodies();
    got.sort();
    let mut want = tokens.clone();
    want.sort();
    assert_eq!(got, want);
}

/// Mostly waits (on a relay that never answers, on a lock held to the end of --timeout), so it
/// takes no part of the machine lock and runs beside a soak; its one timed run has a 2 s bound
/// for what takes milliseconds.
#[test]
fn killed_while_holding_the_lock_blocks_nobody() {
    let sb = Sandbox::new();
    let relay = Relay::scripted(Reply::Status(200), [Reply::Hang]);
    let tok = token(51);
    let holder = sb.start(
        &["--url", &relay.url, "--timeout", "60s", &tok],
        Input::Null,
    );
    wait_for(Duration::from_secs(20), "the request", || {
        relay.requests().len() == 1
    });

    // The lock is really held: a second run gives up on it after its own --timeout.
    let r = sb.run(
        &[
            "--url",
            &relay.url,
            "--timeout",
            "500ms",
            "--tempfail",
            &tok,
        ],
        PLAIN,
    );
    let held = token_line(
        &tok,
        "another deltapush-mda held its lock for all of --timeout",
    );
    assert_eq!(r.said(), (75, held.as_str()));

    assert_eq!(holder.kill().signal(), Some(libc::SIGKILL));
    let lock = sb.state(&tok).with_extension("lock");
    assert!(lock.exists(), "the killed run left its lock file behind");
    assert!(!sb.state(&tok).exists());

    let r = sb.run(&["--url", &relay.url, "--timeout", "5s", &tok], PLAIN);
    assert_eq!(r.said(), (0, ""));
    assert!(r.elapsed < Duration::from_secs(2), "{:?}", r.elapsed);
    relay.assert_bodies(&[&tok, &tok]);
    assert!(sb.state(&tok).is_file());
}

/// Keeps six runs of one token going for 1.75 s with --interval 500ms: the relay must see one
/// POST per interval, no two closer than the interval, none missing while there is load.
#[test]
fn rate_limit_holds_across_interval_boundaries_under_load() {
    let _guard = exclusive();
    let (sb, relay) = Sandbox::with_relay();
    let tok = token(52);
    let interval = Duration::from_millis(500);
    let args = [
        "--url",
        &relay.url,
        "--interval",
        "500ms",
        "--timeout",
        "30s",
        &tok,
    ];
    let window = Duration::from_millis(1750);
    let start = std::time::Instant::now();
    let mut running: VecDeque<Running> = (0..6).map(|_| sb.start(&args, Input::Null)).collect();
    let mut runs = running.len();
    // Each run that ends makes room for the next.
    while let Some(oldest) = running.pop_front() {
        assert_eq!(oldest.finish().said(), (0, ""));
        if start.elapsed() < window {
            running.push_back(sb.start(&args, Input::Null));
            runs += 1;
        }
    }
    let reqs = relay.requests();
    assert!(reqs.iter().all(|r| r.body == tok.as_bytes()));
    assert!(runs > 20, "too little load: {runs} runs");
    let at: Vec<Duration> = reqs.iter().map(|r| r.at - start).collect();
    // A POST at ~0, then one per interval: 4 in 1.75 s (3 if the machine stalls badly).
    assert!((3..=4).contains(&at.len()), "{at:?}");
    for pair in at.windows(2) {
        let gap = pair[1] - pair[0];
        // The state is written after the answer, so POSTs are at least an interval apart; the
        // coarse file clock blurs that by a few ms.
        assert!(gap >= interval - Duration::from_millis(50), "{at:?}");
        assert!(
            gap < interval * 2,
            "an interval without a POST under load: {at:?}"
        );
    }
}
