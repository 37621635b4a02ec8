//! A wakeup held until its message is stored.
//!
//! Dovecot runs Sieve, and so a `--hold` run, before it stores the message: a POST sent from
//! there reached the relay 3–42 ms before the message was in the mailbox, and a phone that
//! fetched then found nothing. So the Sieve run decides, with the header block and the rules,
//! keeps what it would wake in `<cache dir>/held.<pid>` (named by the delivering process, the
//! parent of the Sieve program), and forks a waiter into the background. Once the delivery is
//! committed, Dovecot's commit hook (`examples/dovecot/deltapush.lua`) renames that record to
//! `stored.<pid>.<uid>`: one rename(2) inside Dovecot, no program, no shell (a shell started by
//! Dovecot's LMTP takes its real uid 0 back). The waiter sees the rename through inotify and
//! hands each token to its sender. No delivery waits for the relay.
//!
//! One delivering process stores one message at a time, so its pid tells its deliveries apart
//! from Sieve to commit; the nonce in the record tells the waiter which record is its own when
//! a message was held and never stored, and the next one of the same process was.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crate::cache::{self, Cache};
use crate::cli::Waiting;
use crate::config::{Config, Verbosity};
use crate::detach;
use crate::error::{Error, Result};
use crate::relay::Url;
use crate::run::{self, Outcome, Output, Wake};
use crate::token::{MAX_LEN, Token};

/// The first line of every held record this version writes.
const HEADER: &str = "deltapush-mda held wakeup 2";
/// A record is a few settings and the tokens; anything longer was not written by us.
const MAX_RECORD_LEN: u64 = 1024 * 1024;
/// A message is stored within this of its Sieve run; a waiter gives up after it.
const WAIT_LIMIT: Duration = Duration::from_secs(600);
/// A record this old belongs to a delivery that was never stored and whose waiter is gone: swept.
const STALE_AFTER: Duration = Duration::from_secs(3600);

/// What a `--hold` run decided to wake, and how: everything the waiter needs.
#[derive(Debug, PartialEq, Eq)]
pub struct Held {
    pub nonce: u64,
    pub url: Url,
    pub interval: Duration,
    pub timeout: Duration,
    pub tokens: Vec<Token>,
}

/// A `--hold` run: the decision and the tokens of a delivery, held, and its waiter started.
pub fn hold(config: &Config, header: Option<&[u8]>, out: &Output) -> Result<Outcome> {
    let cache = Cache::open(&config.cache_dir, true)?;
    // A token's lock is held by its sender for as long as a POST takes: a delivery does not
    // wait for that. What needs a lock that is taken (noting a remembered token as seen,
    // telling a failure) is left to the next message.
    let no_wait = Instant::now();
    let delivery = std::os::unix::process::parent_id();
    let path = held_path(&cache, delivery);
    if !run::wanted(config, header, out) {
        // An earlier record of this process is a message that was never stored: this
        // message's commit must not wake for it.
        return match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::Cache { path, source: e }),
            _ => Ok(Outcome::Done),
        };
    }
    let held = Held {
        nonce: nonce(),
        url: config.url.clone(),
        interval: config.interval,
        timeout: config.timeout,
        tokens: run::tokens(&cache, config, no_wait)?,
    };
    // The waiter's senders leave their failures in the token state; this run's stderr is the
    // one that reaches Dovecot's log.
    run::report_failures(&cache, &held.tokens, out, no_wait)?;
    sweep(cache.dir());
    // Written in place, not replaced: its one reader, the waiter, starts below, and the commit
    // hook renames it only once this run has ended.
    cache::write_private(&path, &held.render())?;
    let waiting = Waiting {
        delivery,
        nonce: held.nonce,
    };
    match detach::fork() {
        Ok(true) => {
            let spec = format!("{delivery}.{:016x}", held.nonce);
            let dir = config.cache_dir.to_string_lossy();
            detach::retitle(&["deltapush-mda", "--wait-stored", &spec, "--cache-dir", &dir]);
            let quiet = Output {
                verbosity: Verbosity::Quiet,
            };
            let _ = wait_stored(config, waiting, &quiet);
            std::process::exit(0);
        }
        Ok(false) => {}
        Err(e) => {
            let _ = fs::remove_file(&path);
            for token in &held.tokens {
                out.report(format_args!(
                    "token {token}: not notified: the waiter for the stored message did not \
                     start: {e}; the next message will try again"
                ));
            }
            return Ok(Outcome::NotNotified);
        }
    }
    for token in &held.tokens {
        out.info(format_args!(
            "token {token}: held until the message is stored"
        ));
    }
    Ok(Outcome::Done)
}

/// The waiter: waits until the delivering process has stored the message, then hands each
/// held token to its sender. Gives up when the record is gone or replaced (the message was
/// never stored), when the delivering process ends without storing it, or after WAIT_LIMIT.
pub fn wait_stored(config: &Config, waiting: Waiting, out: &Output) -> Result<Outcome> {
    let cache = Cache::open(&config.cache_dir, false)?;
    let changes = Changes::watch(cache.dir());
    let delivering = pidfd(waiting.delivery);
    // A delivering process already gone has stored the message by now, or never will.
    let until = match delivering {
        Ok(_) => Instant::now() + WAIT_LIMIT,
        Err(()) => Instant::now(),
    };
    let delivering = delivering.ok().flatten();
    loop {
        match look(&cache, waiting) {
            Look::Stored(path, held) => {
                let _ = fs::remove_file(path);
                return release(&cache, config, held, out);
            }
            Look::Gone => return Ok(Outcome::Done),
            Look::Held => {}
        }
        let now = Instant::now();
        let ended = now >= until || !changes.wait(delivering.as_ref(), until - now);
        if ended {
            // One last look: the rename may have come with the end.
            if let Look::Stored(path, held) = look(&cache, waiting) {
                let _ = fs::remove_file(path);
                return release(&cache, config, held, out);
            }
            let _ = fs::remove_file(held_path(&cache, waiting.delivery));
            return Ok(Outcome::Done);
        }
    }
}

/// The held wakeup goes the way the run that decided it was told.
fn release(cache: &Cache, config: &Config, held: Held, out: &Output) -> Result<Outcome> {
    let config = Config {
        url: held.url,
        interval: held.interval,
        timeout: held.timeout,
        tokens: held.tokens,
        ..config.clone()
    };
    let deadline = Instant::now() + config.timeout;
    run::wake(cache, &config, &config.tokens, Wake::HandOff, out, deadline)
}

fn held_path(cache: &Cache, delivery: u32) -> PathBuf {
    cache.dir().join(format!("held.{delivery}"))
}

enum Look {
    /// Renamed by the commit hook: the message is stored.
    Stored(PathBuf, Held),
    /// Still waiting for its commit.
    Held,
    /// Dropped, or replaced by the record of a later message of the same process.
    Gone,
}

/// Where the waiter's record is. The commit hook renames `held.<pid>` to `stored.<pid>.*`, so
/// the first is looked at first: a rename between the two looks is found by the second.
fn look(cache: &Cache, waiting: Waiting) -> Look {
    let mine = |path: &Path| {
        cache::read_private(path, MAX_RECORD_LEN)
            .and_then(|(text, _)| Held::parse(&text))
            .filter(|held| held.nonce == waiting.nonce)
    };
    if mine(&held_path(cache, waiting.delivery)).is_some() {
        return Look::Held;
    }
    let prefix = format!("stored.{}.", waiting.delivery);
    let Ok(entries) = fs::read_dir(cache.dir()) else {
        return Look::Gone;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix)
            && let Some(held) = mine(&entry.path())
        {
            return Look::Stored(entry.path(), held);
        }
    }
    Look::Gone
}

/// Removes the records of deliveries that were never stored and whose waiters are gone.
fn sweep(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let now = SystemTime::now();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if (name.starts_with("held.") || name.starts_with("stored."))
            && let Ok(meta) = entry.metadata()
            && meta.modified().is_ok_and(|m| is_stale(m, now))
        {
            let _ = fs::remove_file(entry.path());
        }
    }
}

fn is_stale(written: SystemTime, now: SystemTime) -> bool {
    now.duration_since(written)
        .is_ok_and(|age| age > STALE_AFTER)
}

fn nonce() -> u64 {
    let mut bytes = [0u8; 8];
    // SAFETY: getrandom writes at most the length it is given into the buffer.
    let got = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if got != bytes.len() as isize {
        // Only tells records of one process apart: the time will do.
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH);
        return now.map_or(0, |d| d.as_nanos() as u64);
    }
    u64::from_ne_bytes(bytes)
}

/// The delivering process as a descriptor that becomes readable when it ends: `Ok(None)` where
/// the kernel has no pidfd (before 5.3), `Err(())` when the process is gone already.
fn pidfd(pid: u32) -> std::result::Result<Option<OwnedFd>, ()> {
    // SAFETY: a raw syscall with plain integers; a descriptor it returns is ours to own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd >= 0 {
        // SAFETY: a fresh descriptor, owned by nothing else.
        return Ok(Some(unsafe { OwnedFd::from_raw_fd(fd as i32) }));
    }
    match io::Error::last_os_error().raw_os_error() {
        Some(libc::ESRCH) => Err(()),
        _ => Ok(None),
    }
}

/// Changes in the cache dir, through inotify; polled every 50 ms where inotify cannot be had.
struct Changes(Option<OwnedFd>);

impl Changes {
    fn watch(dir: &Path) -> Changes {
        use std::os::unix::ffi::OsStrExt;
        let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
            return Changes(None);
        };
        // SAFETY: plain syscalls; the descriptor is owned from here on.
        unsafe {
            let fd = libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC);
            if fd < 0 {
                return Changes(None);
            }
            let fd = OwnedFd::from_raw_fd(fd);
            let mask = libc::IN_MOVED_TO
                | libc::IN_MOVED_FROM
                | libc::IN_DELETE
                | libc::IN_CLOSE_WRITE
                | libc::IN_DELETE_SELF
                | libc::IN_MOVE_SELF;
            if libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), mask) < 0 {
                return Changes(None);
            }
            Changes(Some(fd))
        }
    }

    /// Waits up to `limit` for a change. `false` once the delivering process has ended (or the
    /// limit passed with nothing to tell).
    fn wait(&self, delivering: Option<&OwnedFd>, limit: Duration) -> bool {
        let Some(fd) = &self.0 else {
            std::thread::sleep(limit.min(Duration::from_millis(50)));
            return true;
        };
        let mut fds = vec![libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        if let Some(process) = delivering {
            fds.push(libc::pollfd {
                fd: process.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        let ms = limit.as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: poll on descriptors we own, with the array's own length.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if ready <= 0 {
            return ready < 0;
        }
        if fds.get(1).is_some_and(|p| p.revents != 0) {
            return false;
        }
        // What changed is looked at anew; the events only say that something did.
        let mut buf = [0u8; 4096];
        // SAFETY: read into a buffer of its own length from a non-blocking descriptor.
        while unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
        true
    }
}

impl Held {
    fn render(&self) -> String {
        let mut text = format!(
            "{HEADER}\nnonce {:016x}\nurl {}\ninterval {}\ntimeout {}\n",
            self.nonce,
            self.url.as_str(),
            self.interval.as_millis(),
            self.timeout.as_millis()
        );
        for token in &self.tokens {
            text.push_str(&format!("token {}\n", token.as_str()));
        }
        text
    }

    /// `None` for anything this version did not write whole.
    fn parse(text: &str) -> Option<Held> {
        let mut lines = text.lines();
        if lines.next() != Some(HEADER) {
            return None;
        }
        let (mut nonce, mut url, mut interval, mut timeout) = (None, None, None, None);
        let mut tokens = Vec::new();
        let millis = |v: &str| v.parse().ok().map(Duration::from_millis);
        for line in lines {
            let (key, value) = line.split_once(' ')?;
            match key {
                "nonce" => nonce = u64::from_str_radix(value, 16).ok(),
                "url" => url = Url::parse(value).ok(),
                "interval" => interval = millis(value),
                "timeout" => timeout = millis(value),
                "token" if value.len() <= MAX_LEN => tokens.push(Token::parse(value).ok()?),
                _ => return None,
            }
        }
        Some(Held {
            nonce: nonce?,
            url: url?,
            interval: interval?,
            timeout: timeout?,
            tokens,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held() -> Held {
        Held {
            nonce: 0x0123_4567_89ab_cdef,
            url: Url::parse("https://relay.example/notify").unwrap(),
            interval: Duration::from_millis(10_500),
            timeout: Duration::from_secs(5),
            tokens: vec![
                Token::parse("fcm-chat.delta:A/B+C=").unwrap(),
                Token::parse("openpgp:wcFMA").unwrap(),
            ],
        }
    }

    #[test]
    fn a_record_reads_back_as_written() {
        assert_eq!(Held::parse(&held().render()), Some(held()));
    }

    #[test]
    fn a_record_not_written_whole_by_this_version_is_none() {
        let text = held().render();
        for bad in [
            text.replacen("held wakeup 2", "held wakeup 1", 1),
            text.replace("timeout 5000\n", ""),
            text.replace("nonce 0123456789abcdef\n", ""),
            text.replace("interval 10500", "interval soon"),
            format!("{text}later line\n"),
            text.replace("url https", "url ftp"),
        ] {
            assert_eq!(Held::parse(&bad), None, "{bad}");
        }
    }

    #[test]
    fn stale_means_older_than_an_hour_and_a_clock_set_back_is_not() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert!(!is_stale(now - Duration::from_secs(3599), now));
        assert!(is_stale(now - Duration::from_secs(3601), now));
        assert!(!is_stale(now + Duration::from_secs(60), now));
    }
}
