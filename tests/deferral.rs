//! The wakeup contract (issue 12, "No message without its wakeup"), per token:
//! at most one POST per --interval, however many messages and concurrent runs; every message is
//! followed by a POST within the interval (plus a little scheduling slack); at once when the
//! interval is free, otherwise one deferred POST when it ends, shared by every message until
//! then. The run that defers returns at once and silently, and the deferred sender it leaves
//! holds nothing of its caller: no descriptor, no process group, no session, no token on its
//! command line. A sender's failure is reported by the next run and by `--check`.
//!
//! Each case waits on real intervals of 1–4 s, so the cases of each test run side by side in
//! threads (a failed case is named, its panic printed above): the file takes about as long as
//! its longest case.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use common::mailhome::{IdleGetmail, World, getmail_with, getmailrc};
use common::realmail::{Daemon, MailUser, Ran, hand_over, wait_for};
use common::{
    Input, PLAIN, Relay, Reply, Run, Running, Sandbox, Sender, chat, exec, refused_url, run_cases,
    senders, shown, start, token, token_line,
};

/// How late a deferred POST may come after its interval's end: the sender's wake-up, its lock
/// and the POST itself, on a shared two-core machine running a debug build beside a soak.
const LATE: Duration = Duration::from_millis(500);
/// How much closer than the interval two POSTs may seem: the token state keeps milliseconds,
/// and the relay's clock (`Instant`) is not the binary's (`SystemTime`).
const EARLY: Duration = Duration::from_millis(5);

/// The one sender of `dir`, once it runs.
fn the_sender(dir: &Path) -> Sender {
    let mut found = Vec::new();
    wait_for(Duration::from_secs(2), "a deferred sender", || {
        found = senders(dir);
        !found.is_empty()
    });
    assert_eq!(found.len(), 1, "more than one sender: {found:?}");
    found.remove(0)
}

// ---------------------------------------------------------------------------------------------
// One token, one stand-in relay, one cache dir

/// A sandbox whose deferred senders go with it when the case ends, however it ends.
struct Case {
    sb: Sandbox,
    relay: Relay,
    token: String,
    interval: Duration,
}

impl Case {
    fn new(n: u32, interval_ms: u64) -> Case {
        Case::with_relay(n, interval_ms, Relay::start())
    }

    fn with_relay(n: u32, interval_ms: u64, relay: Relay) -> Case {
        Case {
            sb: Sandbox::new(),
            relay,
            token: token(n),
            interval: Duration::from_millis(interval_ms),
        }
    }

    fn interval_arg(&self) -> String {
        format!("{}ms", self.interval.as_millis())
    }

    /// The binary with the relay, the interval, `extra` and the token.
    fn command(&self, extra: &[&str]) -> Command {
        let mut cmd = self.sb.command();
        cmd.arg("--url")
            .arg(&self.relay.url)
            .arg("--interval")
            .arg(self.interval_arg())
            .args(extra)
            .arg(&self.token);
        cmd
    }

    fn run(&self, extra: &[&str]) -> Run {
        finish(self.spawn(self.command(extra)))
    }

    /// Starts `cmd` with a plain message on its stdin.
    fn spawn(&self, cmd: Command) -> Running {
        start(cmd, PLAIN.into())
    }

    /// `--check`: its exit status and stdout.
    fn check(&self) -> (i32, String) {
        let r = exec(self.command(&["--check"]), Input::Null);
        (r.code, r.stdout)
    }

    /// `--check`, which must exit with `code`: the first of its lines with `status` about this
    /// token whose text starts with `start`, from that text on.
    fn check_line(&self, code: i32, status: &str, start: &str) -> String {
        let (got, out) = self.check();
        assert_eq!(got, code, "{out}");
        let prefix = format!("{status:<6}token {}: ", shown(&self.token));
        out.lines()
            .filter_map(|l| l.strip_prefix(&prefix))
            .find(|text| text.starts_with(start))
            .unwrap_or_else(|| panic!("no line `{prefix}{start}…`: {out}"))
            .to_string()
    }

    /// The line a run prints about this token.
    fn line(&self, text: &str) -> String {
        token_line(&self.token, text)
    }

    /// When each POST arrived; each carried this token and nothing else.
    fn posts(&self) -> Vec<Instant> {
        self.relay.post_times(&self.token)
    }

    fn wait_posts(&self, n: usize, limit: Duration) -> Vec<Instant> {
        wait_for(limit, &format!("POST number {n}"), || {
            self.relay.posts().len() >= n
        });
        self.posts()
    }

    /// Waits until no sender of this cache dir lives: from then on no POST can come.
    fn settle(&self) -> Vec<Instant> {
        wait_for(
            self.interval + Duration::from_secs(2),
            "the last sender's exit",
            || senders(&self.sb.cache_dir()).is_empty(),
        );
        self.posts()
    }

    fn senders(&self) -> Vec<Sender> {
        senders(&self.sb.cache_dir())
    }

    fn state(&self) -> String {
        fs::read_to_string(self.sb.state(&self.token)).unwrap_or_default()
    }

    fn waiter_file(&self) -> PathBuf {
        let mut name = self.sb.state(&self.token).into_os_string();
        name.push(".waiter");
        PathBuf::from(name)
    }

    /// A run inside the interval of the POST at `post`, checked to be inside it: a run that
    /// came after the interval would post at once and prove nothing about deferring.
    fn run_inside(&self, post: Instant, extra: &[&str]) -> Run {
        let d = self.run(extra);
        assert!(
            d.ended() < post + self.interval,
            "the run ended {:?} after the POST, not inside the interval of {:?}: machine too busy",
            d.ended() - post,
            self.interval
        );
        d
    }

    /// The first POST: a run on a fresh token posts at once.
    fn first_post(&self) -> (Run, Instant) {
        let d = self.run(&["-v"]);
        assert_eq!(d.said(), (0, self.line("notified: 200").as_str()));
        let posts = self.posts();
        assert_eq!(
            posts.len(),
            1,
            "a run on a fresh token did not post at once"
        );
        assert!(d.started <= posts[0] && posts[0] <= d.ended());
        (d, posts[0])
    }

    /// Asserts that `later` came one interval after `earlier`: not before, and not much after.
    fn assert_one_interval(&self, earlier: Instant, later: Instant) {
        let gap = later - earlier;
        assert!(
            gap + EARLY >= self.interval && gap <= self.interval + LATE,
            "POSTs {gap:?} apart with an interval of {:?}",
            self.interval
        );
    }
}

/// Waits for a started run: what the caller sees, and nothing on stdout.
fn finish(run: Running) -> Run {
    let run = run.finish();
    assert_eq!(run.stdout, "");
    run
}

/// Runs `work` while a thread counts this case's senders: its result, and the most senders
/// seen at once.
fn counting_senders<T>(c: &Case, work: impl FnOnce() -> T) -> (T, usize) {
    /// Stops the count however `work` ends, so that a failed case is not kept waiting for it.
    struct Stop<'a>(&'a AtomicBool);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let most = AtomicUsize::new(0);
    let done = AtomicBool::new(false);
    let result = thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                most.fetch_max(c.senders().len(), Ordering::Relaxed);
                thread::sleep(Duration::from_millis(3));
            }
        });
        let _stop = Stop(&done);
        work()
    });
    (result, most.into_inner())
}

/// The number N of a `deferred by N s` line, which must be one of the interval's seconds.
fn deferred_secs(case: &Case, stderr: &str) -> u64 {
    let shown = shown(&case.token);
    let n = stderr
        .strip_prefix(&format!("deltapush-mda: token {shown}: deferred by "))
        .and_then(|rest| rest.strip_suffix(" s\n"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a deferral line: {stderr:?}"));
    let most = case.interval.as_millis().div_ceil(1000) as u64;
    assert!((1..=most).contains(&n), "{stderr:?}");
    n
}

// ---------------------------------------------------------------------------------------------
// The cases with the stand-in relay

#[test]
fn wakeup_contract_with_the_stand_in_relay() {
    run_cases(&[
        ("single message", single_message),
        ("burst of 30", burst_of_30),
        ("steady stream", steady_stream),
        ("caller killed", caller_killed),
        ("descriptors", descriptors),
        ("sender killed", sender_killed),
        ("soak of 200", soak_of_200),
        ("refused deferred POST", refused_deferred_post),
        ("unreachable deferred POST", unreachable_deferred_post),
        ("deferred POST retried", deferred_post_retried),
        ("deferred POST paused", deferred_post_paused),
        ("deferred POST gone", deferred_post_gone),
        ("dry run", dry_run),
        ("interval 0", interval_zero),
        (
            "token file in the environment",
            token_file_in_the_environment,
        ),
    ]);
}

/// One message inside the interval: one deferred POST when the interval ends; the run that
/// defers returns long before it; `--check` shows the wakeup while it is due.
fn single_message() {
    let c = Case::new(1, 3000);
    let (_, post1) = c.first_post();

    let d = c.run_inside(post1, &["-v"]);
    assert_eq!(d.code, 0);
    deferred_secs(&c, &d.stderr);
    let sender = the_sender(&c.sb.cache_dir());
    for path in [c.sb.state(&c.token), c.waiter_file()] {
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", path.display());
    }
    assert!(
        c.state().contains("\npending "),
        "no pending wakeup: {}",
        c.state()
    );

    // While it is due, --check says when.
    let line = c.check_line(0, "ok", "last notified ");
    let due = line
        .split_once("; a deferred wakeup is due in ")
        .map(|(_, due)| humantime::parse_duration(due).unwrap())
        .unwrap_or_else(|| panic!("no pending wakeup shown: {line}"));
    assert!(
        Duration::ZERO < due && due <= c.interval,
        "due in {due:?}: {line}"
    );

    // Another message shares the wakeup: silent, and no second sender.
    let d2 = c.run_inside(post1, &[]);
    assert_eq!(d2.said(), (0, ""));
    let now: Vec<i32> = c.senders().iter().map(|p| p.pid).collect();
    assert_eq!(now, [sender.pid], "a second sender");

    let posts = c.wait_posts(2, c.interval + LATE + Duration::from_secs(1));
    c.assert_one_interval(post1, posts[1]);
    assert!(d2.ended() < posts[1]);
    // The sender goes once its POST is made.
    wait_for(Duration::from_secs(1), "the sender's exit", || {
        !sender.alive()
    });
    assert_eq!(c.settle().len(), 2);
    let state = c.state();
    assert!(!state.contains("pending"), "{state}");
    let (code, out) = c.check();
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("deferred wakeup"), "{out}");
    println!(
        "single message: the deferring run took {} ms; deferred POST {} ms after the first \
         (interval {} ms)",
        d.elapsed.as_millis(),
        (posts[1] - post1).as_millis(),
        c.interval.as_millis()
    );
    assert!(
        d.elapsed < c.interval / 2,
        "the deferring run took {:?}",
        d.elapsed
    );
}

/// 30 messages at once inside the interval: one deferred POST for all, one sender at a time.
fn burst_of_30() {
    let c = Case::new(2, 3000);
    let (_, post1) = c.first_post();
    let (runs, most) = counting_senders(&c, || {
        let children: Vec<_> = (0..30).map(|_| c.spawn(c.command(&[]))).collect();
        children.into_iter().map(finish).collect::<Vec<_>>()
    });
    for d in &runs {
        assert_eq!(d.said(), (0, ""));
    }
    let last = runs.iter().map(Run::ended).max().unwrap();
    assert!(
        last < post1 + c.interval,
        "the burst did not fit in the interval: machine too busy"
    );
    assert!(most <= 1, "{most} senders at once");
    let posts = c.settle();
    assert_eq!(posts.len(), 2, "one POST at once and one deferred");
    c.assert_one_interval(post1, posts[1]);
    assert!(last < posts[1]);
}

/// A message every 0.2 s for 3.6 s, with a 1 s interval: POSTs at least an interval apart, each message followed by
/// a POST within the interval, the last POST after the last message.
fn steady_stream() {
    let c = Case::new(3, 1000);
    let start = Instant::now();
    let mut runs = Vec::new();
    for i in 0..18 {
        let tick = start + Duration::from_millis(200 * i);
        thread::sleep(tick.saturating_duration_since(Instant::now()));
        let d = c.run(&[]);
        assert_eq!(d.said(), (0, ""), "message {i}");
        runs.push(d);
    }
    let posts = c.settle();
    let offsets: Vec<u128> = posts.iter().map(|&p| (p - start).as_millis()).collect();
    println!("steady stream: POSTs at {offsets:?} ms");
    // The first message finds the interval free.
    assert!(runs[0].started <= posts[0] && posts[0] <= runs[0].ended());
    for pair in posts.windows(2) {
        assert!(
            pair[1] - pair[0] + EARLY >= c.interval,
            "POSTs {:?} apart: {offsets:?}",
            pair[1] - pair[0]
        );
    }
    for (i, d) in runs.iter().enumerate() {
        assert!(
            posts
                .iter()
                .any(|&p| d.started <= p && p <= d.started + c.interval + LATE),
            "message {i} at {} ms had no POST within the interval: {offsets:?}",
            (d.started - start).as_millis()
        );
    }
    assert!(*posts.last().unwrap() > runs.last().unwrap().started);
    // 3.6 s of messages with a 1 s interval: about one POST per interval, not one per message.
    assert!((4..=5).contains(&posts.len()), "{offsets:?}");
}

/// The caller's whole process group is killed right after the run deferred: the sender, in a
/// session of its own, still posts.
fn caller_killed() {
    let c = Case::new(4, 2500);
    let (_, post1) = c.first_post();
    let msg = c.sb.write("message", PLAIN);
    let status = c.sb.home.path().join("status");
    // A caller that runs the MDA and then goes on with its own work, as a shell or procmail.
    let inner = c.command(&[]);
    let mut sh = Command::new("sh");
    sh.arg("-c")
        .arg(r#""$@" <"$MSG"; echo $? >"$STATUS"; exec sleep 60"#)
        .arg("sh")
        .arg(inner.get_program())
        .args(inner.get_args())
        .env_clear()
        .envs(inner.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .env("MSG", &msg)
        .env("STATUS", &status)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut caller = Daemon::spawn("caller", sh);
    wait_for(Duration::from_secs(2), "the run's exit", || {
        fs::read_to_string(&status).is_ok_and(|s| s.ends_with('\n'))
    });
    assert_eq!(fs::read_to_string(&status).unwrap(), "0\n");
    assert!(Instant::now() < post1 + c.interval, "machine too busy");
    let sender = the_sender(&c.sb.cache_dir());
    let group = caller.pid() as i32;
    // SAFETY: plain syscalls.
    let (caller_session, my_session) = unsafe { (libc::getsid(group), libc::getsid(0)) };
    assert_ne!(sender.pgrp, group, "the sender is in the caller's group");
    assert_ne!(
        sender.session, caller_session,
        "the sender is in the caller's session"
    );
    assert_ne!(sender.session, my_session);
    assert_eq!((sender.pgrp, sender.session), (sender.pid, sender.pid));

    // SAFETY: a plain syscall on the group the test started.
    assert_eq!(unsafe { libc::kill(-group, libc::SIGKILL) }, 0);
    caller.wait(Duration::from_secs(2));
    assert!(sender.alive(), "the sender died with its caller's group");
    let posts = c.wait_posts(2, c.interval + LATE + Duration::from_secs(1));
    c.assert_one_interval(post1, posts[1]);
    assert_eq!(c.settle().len(), 2);
}

/// The sender keeps none of the caller's descriptors: an extra pipe end handed to the run is
/// closed once the run is gone, long before the deferred POST; the sender holds its stdin (a
/// pipe of its own), /dev/null and its waiter lock, and its command line has no token.
fn descriptors() {
    let c = Case::new(5, 2500);
    let (_, post1) = c.first_post();

    // Two pipes as a careless caller (Dovecot hands over about 20) leaves them: open and not
    // close-on-exec, one on 3, where the sender expects its waiter lock, one on 5.
    let pipes = [pipe(), pipe()];
    let ends = [pipes[0].1.as_raw_fd(), pipes[1].1.as_raw_fd()];
    let mut cmd = c.command(&[]);
    // SAFETY: only fcntl and dup2 between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            for (end, target) in ends.into_iter().zip([3, 5]) {
                // Out of the way first (close-on-exec): `end` may be 3 or 5 itself.
                let moved = libc::fcntl(end, libc::F_DUPFD_CLOEXEC, 100);
                if moved == -1 || libc::dup2(moved, target) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    // The run's stdin, to tell it from the sender's.
    let (tx, rx) = mpsc::channel();
    let child = start(
        cmd,
        Input::Stream(Box::new(move |stdin| {
            let link = fs::read_link(format!("/proc/self/fd/{}", stdin.as_raw_fd()));
            tx.send(link.unwrap()).unwrap();
            stdin.write_all(PLAIN.as_bytes())
        })),
    );
    let run_stdin = rx.recv().unwrap();
    let [(read3, write3), (read5, write5)] = pipes;
    drop((write3, write5));
    let d = finish(child);
    assert_eq!(d.said(), (0, ""));
    assert!(d.ended() < post1 + c.interval, "machine too busy");

    let mut eof = Duration::ZERO;
    let mut handed = Vec::new();
    for (fd, read_end) in [(3, read3), (5, read5)] {
        handed.push(fs::read_link(format!("/proc/self/fd/{}", read_end.as_raw_fd())).unwrap());
        // SAFETY: fcntl on a descriptor owned here.
        unsafe { libc::fcntl(read_end.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
        let mut pipe = fs::File::from(read_end);
        let what = format!("EOF on the pipe handed to the run as {fd}");
        eof = eof.max(wait_for(c.interval / 2, &what, || {
            matches!(pipe.read(&mut [0; 16]), Ok(0))
        }));
    }
    assert_eq!(c.posts().len(), 1, "EOF only came with the deferred POST");

    let sender = the_sender(&c.sb.cache_dir());
    let mut held = Vec::new();
    let settled = |held: &mut Vec<(u32, String)>| {
        *held = sender.fds();
        held.iter().map(|(n, _)| *n).eq([0, 1, 2, 3])
    };
    // Right after its start it may still hold the token's lock for a moment; an inherited
    // descriptor would stay.
    let deadline = Instant::now() + c.interval / 3;
    while !settled(&mut held) {
        assert!(
            Instant::now() < deadline,
            "the waiting sender holds {held:?}"
        );
        thread::sleep(Duration::from_millis(5));
    }
    let to = |n: usize| held[n].1.as_str();
    assert!(to(0).starts_with("pipe:["), "{held:?}");
    assert_ne!(Path::new(to(0)), run_stdin, "the run's stdin");
    assert!(!handed.iter().any(|p| p == Path::new(to(0))), "{held:?}");
    assert_eq!((to(1), to(2)), ("/dev/null", "/dev/null"));
    assert_eq!(Path::new(to(3)), c.waiter_file());
    // Not the token, not a piece of it that would identify it.
    let secret = &c.token[..24];
    assert!(
        sender.args.iter().all(|a| !a.contains(secret)),
        "the token is on the sender's command line: {:?}",
        sender.args
    );
    assert_eq!(sender.args[..2], ["deltapush-mda", "--send-deferred"]);

    let posts = c.wait_posts(2, c.interval + LATE + Duration::from_secs(1));
    c.assert_one_interval(post1, posts[1]);
    println!(
        "descriptors: EOF on both pipes {} ms after the run ended, deferred POST {} ms after it",
        eof.as_millis(),
        (posts[1] - d.ended()).as_millis()
    );
}

/// A pipe: (read end, write end), both close-on-exec.
fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the array it is given.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both descriptors were just made and are owned here only.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// A sender killed with SIGKILL while it waits blocks nothing: the next message defers again,
/// through a new sender, and its POST arrives.
fn sender_killed() {
    let c = Case::new(6, 3000);
    let (_, post1) = c.first_post();
    let d = c.run_inside(post1, &[]);
    assert_eq!(d.said(), (0, ""));
    let first = the_sender(&c.sb.cache_dir());
    // SAFETY: a plain syscall on a sender of this case's cache dir.
    assert_eq!(unsafe { libc::kill(first.pid, libc::SIGKILL) }, 0);
    wait_for(Duration::from_secs(1), "the killed sender's end", || {
        !first.alive()
    });

    let d = c.run_inside(post1, &["-v"]);
    assert_eq!(d.code, 0);
    deferred_secs(&c, &d.stderr);
    let second = the_sender(&c.sb.cache_dir());
    assert_ne!(second.pid, first.pid);
    let posts = c.settle();
    assert_eq!(posts.len(), 2);
    c.assert_one_interval(post1, posts[1]);
}

/// 200 runs at once on one token: one POST at once, one deferred, never two senders.
fn soak_of_200() {
    let c = Case::new(7, 4000);
    let started = Instant::now();
    let (runs, most) = counting_senders(&c, || {
        let children: Vec<_> = (0..200)
            .map(|_| start(c.command(&[]), Input::Null))
            .collect();
        children.into_iter().map(finish).collect::<Vec<_>>()
    });
    for d in &runs {
        assert_eq!(d.said(), (0, ""));
    }
    let last = runs.iter().map(Run::ended).max().unwrap();
    let posts = c.posts();
    assert!(
        last < posts[0] + c.interval,
        "200 runs took {:?}, more than the interval: machine too busy",
        last - started
    );
    assert_eq!(posts.len(), 1, "not one POST at once");
    let posts = c.settle();
    assert_eq!(posts.len(), 2, "one POST at once and one deferred");
    c.assert_one_interval(posts[0], posts[1]);
    assert!(most <= 1, "{most} senders at once");
    println!(
        "soak of 200: all runs done in {} ms",
        (last - started).as_millis()
    );
}

/// The relay refuses the deferred POST: the next run says so in one line, once; `--check`
/// shows it as a failure until then.
fn refused_deferred_post() {
    let relay = Relay::scripted(Reply::Status(200), [Reply::Status(200), Reply::Status(404)]);
    let c = Case::with_relay(8, 2000, relay);
    let (_, post1) = c.first_post();
    let d = c.run_inside(post1, &[]);
    assert_eq!(d.said(), (0, ""));
    let posts = c.wait_posts(2, c.interval + LATE + Duration::from_secs(1));
    c.assert_one_interval(post1, posts[1]);
    let failed_at = SystemTime::now() - posts[1].elapsed();
    c.settle();
    let why = "the relay refused it with HTTP 404; check --url";
    let text = assert_failure_reported(&c, failed_at, Some(why));
    println!("refused deferred POST: {text}");
}

/// The deferred POST finds no relay at all (the run gave a URL whose port refuses): the same
/// report, with whatever the network said.
fn unreachable_deferred_post() {
    let c = Case::new(9, 2000);
    let (_, post1) = c.first_post();
    let down = refused_url();
    let mut cmd = c.sb.command();
    cmd.args([
        "--url",
        &down,
        "--interval",
        &c.interval_arg(),
        "--timeout",
        "1s",
        "-v",
    ])
    .arg(&c.token);
    let d = finish(c.spawn(cmd));
    assert_eq!(d.code, 0);
    deferred_secs(&c, &d.stderr);
    assert!(d.ended() < post1 + c.interval, "machine too busy");
    wait_for(
        c.interval + Duration::from_secs(3),
        "the failure in the token state",
        || c.state().contains("\nfailed "),
    );
    let failed_at = SystemTime::now();
    c.settle();
    assert_eq!(c.posts().len(), 1);
    let text = assert_failure_reported(&c, failed_at, None);
    println!("unreachable deferred POST: {text}");
}

/// The deferred POST meets a 503: the sender tries again within --timeout, and the wakeup
/// counts (notified, nothing pending, nothing to report).
fn deferred_post_retried() {
    let script = [Reply::Status(200), Reply::Status(503), Reply::Status(200)];
    let c = Case::with_relay(13, 2000, Relay::scripted(Reply::Status(200), script));
    let (_, post1) = c.first_post();
    // The sender gets the run's --timeout.
    let d = c.run_inside(post1, &["--timeout", "3s"]);
    assert_eq!(d.said(), (0, ""));
    let posts = c.settle();
    assert_eq!(posts.len(), 3, "the deferred POST and its retry");
    c.assert_one_interval(post1, posts[1]);
    assert!(posts[2] - posts[1] < Duration::from_secs(3));
    assert_settled_state(&c);
}

/// The relay answers the deferred POST with 503 and Retry-After: 1: the sender waits out the
/// pause, then posts again.
fn deferred_post_paused() {
    let pause = Reply::With(503, vec![("Retry-After", "1")]);
    let script = [Reply::Status(200), pause, Reply::Status(200)];
    let c = Case::with_relay(14, 2000, Relay::scripted(Reply::Status(200), script));
    let (_, post1) = c.first_post();
    let d = c.run_inside(post1, &[]);
    assert_eq!(d.said(), (0, ""));
    let posts = c.settle();
    assert_eq!(
        posts.len(),
        3,
        "the deferred POST and the one after the pause"
    );
    c.assert_one_interval(post1, posts[1]);
    let after = posts[2] - posts[1];
    assert!(
        after + EARLY >= Duration::from_secs(1) && after <= Duration::from_secs(1) + LATE,
        "posted again {after:?} after a pause of 1 s"
    );
    assert_settled_state(&c);
}

/// After a deferred POST that finally went through: notified, nothing pending, paused or
/// failed, and nothing for the next run or `--check` to report.
fn assert_settled_state(c: &Case) {
    let state = c.state();
    assert!(state.contains("\nnotified "), "{state}");
    for key in ["pending", "paused", "failed", "gone"] {
        assert!(!state.contains(key), "{state}");
    }
    let (code, out) = c.check();
    assert_eq!(code, 0, "{out}");
}

/// The relay answers the deferred POST with 410: the token is gone; each run says so and
/// posts nothing, and `--check` fails on it.
fn deferred_post_gone() {
    let script = [Reply::Status(200), Reply::Status(410)];
    let c = Case::with_relay(15, 2000, Relay::scripted(Reply::Status(200), script));
    let (_, post1) = c.first_post();
    let d = c.run_inside(post1, &[]);
    assert_eq!(d.said(), (0, ""));
    let posts = c.settle();
    assert_eq!(posts.len(), 2);
    c.assert_one_interval(post1, posts[1]);
    assert!(c.state().contains("\ngone "), "{}", c.state());
    let advice = " (the relay answered 410); copy the current token from Delta Chat: \
                  Settings → Advanced → View Log";
    let d = c.run(&[]);
    assert_eq!(d.code, 0);
    let since = d
        .stderr
        .strip_prefix(&format!(
            "deltapush-mda: token {}: gone since ",
            shown(&c.token)
        ))
        .and_then(|rest| rest.strip_suffix(&format!("{advice}\n")))
        .unwrap_or_else(|| panic!("{:?}", d.stderr));
    humantime::parse_rfc3339(since).unwrap();
    assert_eq!(c.posts().len(), 2);
    let (code, out) = c.check();
    assert_eq!(code, 64, "{out}");
    let fail = format!(
        "FAIL  token {}: gone since {since}{advice}",
        shown(&c.token)
    );
    assert!(out.lines().any(|l| l == fail), "{out}");
    assert!(c.senders().is_empty());
}

/// `--check` shows a failed deferred POST (FAIL, 69); the next run prints it once, exit 0, and
/// no run or check after it does. Returns the line.
fn assert_failure_reported(c: &Case, failed_at: SystemTime, why: Option<&str>) -> String {
    let text = c.check_line(69, "FAIL", "");
    let (at, said) = text
        .strip_prefix("the deferred wakeup of ")
        .and_then(|rest| rest.split_once(" was not sent: "))
        .unwrap_or_else(|| panic!("{text}"));
    let at = humantime::parse_rfc3339(at).unwrap();
    let off = at
        .duration_since(failed_at)
        .unwrap_or_else(|e| e.duration());
    assert!(off <= Duration::from_secs(2), "{text}");
    match why {
        Some(why) => assert_eq!(said, why),
        None => assert!(!said.is_empty() && !said.contains('\n')),
    }

    let d = c.run(&[]);
    assert_eq!(d.said(), (0, c.line(&text).as_str()));
    let d = c.run(&[]);
    assert_eq!(d.said(), (0, ""));
    let (code, out) = c.check();
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("was not sent"), "{out}");
    text
}

/// `--dry-run` inside the interval says it would defer, and defers nothing: no pending wakeup,
/// no waiter lock, no sender.
fn dry_run() {
    let c = Case::new(10, 3000);
    let (_, post1) = c.first_post();
    let before = c.state();
    let d = c.run_inside(post1, &["--dry-run"]);
    let secs = d
        .stderr
        .strip_prefix(&format!(
            "deltapush-mda: token {}: would defer by ",
            shown(&c.token)
        ))
        .and_then(|rest| rest.strip_suffix(" s (dry run)\n"))
        .unwrap_or_else(|| panic!("{:?}", d.stderr));
    assert!(["1", "2", "3"].contains(&secs), "{:?}", d.stderr);
    assert_eq!(d.code, 0);
    assert_eq!(c.state(), before);
    assert!(!c.waiter_file().exists());
    assert!(c.senders().is_empty());
}

/// `--interval 0`: every message posts at once, none defers.
fn interval_zero() {
    let c = Case::new(11, 0);
    for _ in 0..3 {
        let d = c.run(&["-v"]);
        assert_eq!(d.said(), (0, c.line("notified: 200").as_str()));
    }
    assert_eq!(c.posts().len(), 3);
    assert!(!c.waiter_file().exists());
    assert!(!c.state().contains("pending"), "{}", c.state());
    assert!(c.senders().is_empty());
}

/// The token file named in the environment, relative to the caller's directory as a mail
/// program's environment may give it: the sender, started elsewhere, still posts.
fn token_file_in_the_environment() {
    let c = Case::new(12, 2000);
    c.sb.write("tokens", format!("{}\n", c.token));
    let run = |extra: &[&str]| {
        let mut cmd = c.sb.command();
        cmd.args(["--url", &c.relay.url, "--interval", &c.interval_arg()])
            .args(extra)
            .env("DELTAPUSH_TOKEN_FILE", "tokens")
            .current_dir(c.sb.home.path());
        finish(c.spawn(cmd))
    };
    assert_eq!(run(&[]).said(), (0, ""));
    let post1 = c.posts()[0];
    let d = run(&["-v"]);
    assert_eq!(d.code, 0);
    deferred_secs(&c, &d.stderr);
    assert!(d.ended() < post1 + c.interval, "machine too busy");
    let posts = c.wait_posts(2, c.interval + LATE + Duration::from_secs(1));
    c.assert_one_interval(post1, posts[1]);
}

// ---------------------------------------------------------------------------------------------
// Real callers

#[test]
fn real_callers_do_not_wait_for_the_wakeup() {
    run_cases(&[
        ("getmail", getmail_one_shot),
        ("getmail --idle", getmail_idle),
        ("procmail", procmail_copy),
        ("maildrop", maildrop_cc),
    ]);
}

/// Two messages in a row through a real caller (`deliver(n)` hands message n over and checks
/// what the caller did): the first posts at once, the second defers; the caller is done as
/// fast both times, long before the deferred POST, which still arrives.
fn two_messages(
    name: &str,
    relay: &Relay,
    cache_dir: &Path,
    token: &str,
    interval: Duration,
    mut deliver: impl FnMut(u32),
) {
    let posts = || relay.post_times(token);
    let mut timed = |n| {
        let started = Instant::now();
        deliver(n);
        (started, started.elapsed())
    };
    let (_, first) = timed(1);
    // procmail does not wait for a pipe without `w`: the run may still be going.
    wait_for(Duration::from_secs(2), "the first POST", || {
        !posts().is_empty()
    });
    let post1 = posts()[0];
    let (started, second) = timed(2);
    let ended = started + second;
    assert_eq!(posts().len(), 1, "{name} did not defer the second message");
    assert!(
        ended < post1 + interval,
        "{name} ended {:?} after the first POST: machine too busy",
        ended - post1
    );
    wait_for(
        interval + LATE + Duration::from_secs(1),
        "the deferred POST",
        || posts().len() == 2,
    );
    let post2 = posts()[1];
    assert!(
        ended < post2,
        "{name} returned only after the deferred POST"
    );
    let gap = post2 - post1;
    assert!(gap + EARLY >= interval && gap <= interval + LATE, "{gap:?}");
    assert!(second < interval / 2, "{name} took {second:?}");
    wait_for(Duration::from_secs(2), "the sender's exit", || {
        senders(cache_dir).is_empty()
    });
    assert_eq!(posts().len(), 2);
    println!(
        "{name}: {} ms with the POST, {} ms with the deferral; deferred POST {} ms after it \
         returned ({} ms after the first)",
        first.as_millis(),
        second.as_millis(),
        (post2 - ended).as_millis(),
        gap.as_millis()
    );
}

/// What a mail program that ran to its end must have done with message `n`: exit 0, silent,
/// the whole message read.
fn assert_quiet(name: &str, n: u32, ran: &Ran) {
    assert_eq!(
        (ran.code(), ran.stdout.as_str(), ran.stderr.as_str()),
        (Some(0), "", ""),
        "{name}, message {n}: {ran:?}"
    );
    assert_eq!(ran.write_error, None, "{name}, message {n}");
}

/// getmail, run once by hand (MDA_external), as `examples/getmail/getmailrc` sets it up.
fn getmail_one_shot() {
    let (w, relay, dc, home) = World::for_getmail(30);
    home.put(
        ".config/getmail/deltapush",
        &getmailrc(&w, &dc, &home, None),
    );
    two_messages(
        "getmail",
        &relay,
        &home.cache_dir(),
        &home.token,
        Duration::from_secs(4),
        |n| {
            dc.deliver(&chat());
            let env = [("DELTAPUSH_INTERVAL", "4s")];
            let ran = getmail_with(
                &home,
                "deltapush",
                &relay.url,
                &format!("getmail-{n}"),
                &env,
            );
            assert_eq!(home.oldmail_lines(), n as usize, "{ran:?}\n{}", dc.log());
            assert_quiet("getmail", n, &ran);
        },
    );
}

/// getmail --idle as the systemd unit runs it: it hands the second message over and goes on
/// idling, and the wakeup comes at the interval's end.
fn getmail_idle() {
    let (w, relay, dc, home) = World::for_getmail(33);
    home.put(
        ".config/getmail/deltapush",
        &getmailrc(&w, &dc, &home, None),
    );
    let env = [("DELTAPUSH_INTERVAL", "3s")];
    let mut getmail = IdleGetmail::start(&home, "deltapush", &relay.url, &env);
    two_messages(
        "getmail --idle",
        &relay,
        &home.cache_dir(),
        &home.token,
        Duration::from_secs(3),
        |n| {
            getmail.deliver(&dc, &chat());
            getmail.wait_handed_over(n as usize);
        },
    );
    getmail.assert_idling_quietly();
    assert!(dc.messages().iter().all(|m| !m.seen));
}

/// procmail with the `:0c` recipe of `examples/procmail/procmailrc`.
fn procmail_copy() {
    let w = World::new();
    let relay = Relay::start();
    let home = w.home_as("home", &token(31), MailUser::current());
    let rcfile = home.procmailrc();
    two_messages(
        "procmail",
        &relay,
        &home.cache_dir(),
        &home.token,
        Duration::from_secs(3),
        |n| {
            let interval = ["DELTAPUSH_INTERVAL=3s".to_string()];
            let mut cmd = home.procmail(&rcfile, &relay.url, &interval);
            cmd.env("DELTAPUSH_INTERVAL", "3s");
            let ran = hand_over(&format!("procmail-{n}"), cmd, &home.path, &chat());
            assert_eq!(home.maildir_files().len(), n as usize, "{ran:?}");
            assert_quiet("procmail", n, &ran);
        },
    );
}

/// maildrop with the `cc` line of `examples/maildrop/mailfilter`.
fn maildrop_cc() {
    let w = World::new();
    let relay = Relay::start();
    let home = w.home_as("home", &token(32), MailUser::current());
    let filter = home.mailfilter("");
    two_messages(
        "maildrop",
        &relay,
        &home.cache_dir(),
        &home.token,
        Duration::from_secs(3),
        |n| {
            let mut cmd = home.maildrop(&filter, &relay.url);
            cmd.env("DELTAPUSH_INTERVAL", "3s");
            let ran = hand_over(&format!("maildrop-{n}"), cmd, &home.path, &chat());
            assert_eq!(home.maildir_files().len(), n as usize, "{ran:?}");
            assert_quiet("maildrop", n, &ran);
        },
    );
}
