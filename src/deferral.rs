//! The deferred wakeup: a run that finds the token's interval taken leaves the message's wakeup
//! to one sender per token, which waits for the interval's end and posts then.
//!
//! The sender is this program again, started detached: a session of its own, no descriptor of
//! the caller (getmail, procmail, maildrop and Dovecot all wait for the pipes they handed over),
//! the token on a private pipe (never on its command line, where `ps` would show it), and the
//! token's waiter lock on descriptor 3, taken by the run under the token's lock so that no
//! second run can start a second sender. It cannot report through an exit status: a failure is
//! left in the token state for the next run to print.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use crate::cache::Cache;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::relay::{Answer, Relay};
use crate::run::{Decision, apply, decide};
use crate::token::{MAX_LEN, Token};

/// The descriptor the sender finds its waiter lock on.
const WAITER_FD: i32 = 3;
/// A little past the interval's end, so a clock tick short of it does not send the sender back
/// to sleep for a millisecond.
const SLACK: Duration = Duration::from_millis(5);

/// Starts the token's sender, handing it `waiter` (the claimed waiter lock). Returns once it runs.
pub fn start(config: &Config, token: &Token, waiter: File) -> io::Result<()> {
    let exe = std::env::current_exe()?;
    let lock_fd = waiter.as_raw_fd();
    let mut cmd = Command::new(exe);
    cmd.arg0("deltapush-mda")
        .args(["--send-deferred", "--url", config.url.as_str()])
        .arg("--interval")
        .arg(humantime::format_duration(config.interval).to_string())
        .arg("--timeout")
        .arg(humantime::format_duration(config.timeout).to_string())
        .arg("--cache-dir")
        .arg(&config.cache_dir)
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // Its configuration is its command line alone. The caller's DELTAPUSH_* variables would be
    // read again, in `/`: a DELTAPUSH_TOKEN_FILE relative to the caller's directory stopped
    // every sender before it read its token, and the wakeup was lost.
    for (name, _) in std::env::vars_os() {
        if name.as_encoded_bytes().starts_with(b"DELTAPUSH_") {
            cmd.env_remove(name);
        }
    }
    // SAFETY: only async-signal-safe calls (setsid, dup2, fcntl, close_range) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // Out of the caller's session and process group: killing those leaves it alone.
            if libc::setsid() == -1 {
                return Err(io::Error::last_os_error());
            }
            if lock_fd == WAITER_FD {
                // dup2 onto itself would keep close-on-exec set.
                if libc::fcntl(WAITER_FD, libc::F_SETFD, 0) == -1 {
                    return Err(io::Error::last_os_error());
                }
            } else if libc::dup2(lock_fd, WAITER_FD) == -1 {
                return Err(io::Error::last_os_error());
            }
            close_inherited();
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    // The parent's copy of the lock goes; the sender's copy keeps it held.
    drop(waiter);
    let mut pipe = child.stdin.take().expect("stdin is piped");
    // A token fits in a pipe's buffer: this never waits for the sender.
    pipe.write_all(token.as_bytes())?;
    Ok(())
}

/// Marks every descriptor above the waiter lock close-on-exec: whatever the caller left open
/// (Dovecot hands over about 20) must not outlive this run in the sender. Marking rather than
/// closing keeps std's own exec-error pipe working.
unsafe fn close_inherited() {
    let first = (WAITER_FD + 1) as libc::c_uint;
    // SAFETY: a raw syscall with plain integers.
    let done = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    } == 0;
    if !done {
        // Kernels before 5.11: one fcntl per possible descriptor.
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct it is given.
        let max = match unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } {
            0 => limit.rlim_cur.min(65536) as i32,
            _ => 1024,
        };
        for fd in first as i32..max {
            // SAFETY: fcntl on a descriptor that may not exist only fails with EBADF.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
    }
}

/// The sender: waits for the token's next allowed POST, posts if a message still waits, and
/// records what happened.
pub fn send(config: &Config) -> Result<()> {
    let token = read_token()?;
    let cache = Cache::open(&config.cache_dir, true)?;
    // SAFETY: descriptor 3 is only ever taken over here, once; a sender started by hand may not
    // have it, which the check below finds.
    let given = unsafe { File::from_raw_fd(WAITER_FD) };
    let waiter = match cache.is_waiter_of(&given, &token) {
        true => given,
        false => {
            std::mem::forget(given);
            match cache.claim_waiter(&token)? {
                Some(waiter) => waiter,
                // Another sender waits for this token already.
                None => return Ok(()),
            }
        }
    };
    loop {
        // A sender has no caller to hold up: it may wait for the lock as long as it takes.
        let patience = Instant::now() + config.timeout.max(Duration::from_secs(1));
        let Some(mut locked) = cache.lock(&token, patience)? else {
            continue;
        };
        let now = SystemTime::now();
        let decision = match locked.state.pending {
            // Another run posted since: that POST woke the phone for every waiting message.
            None => None,
            Some(_) => Some(decide(&locked.state, now, config.interval)),
        };
        match decision {
            Some(Decision::Wait(until)) => {
                drop(locked);
                thread::sleep(until.duration_since(now).unwrap_or_default() + SLACK);
                continue;
            }
            None => {}
            Some(Decision::Gone(_)) => {
                locked.state.pending = None;
                locked.save()?;
            }
            Some(Decision::Post) => {
                let deadline = Instant::now() + config.timeout;
                let answer = Relay::new(&config.url, deadline).notify(&token);
                let now = SystemTime::now();
                apply(&mut locked.state, &answer, &token, now);
                if let Answer::Pause(_) = answer {
                    // Still pending: the next round waits for the pause to end.
                    locked.save()?;
                    continue;
                }
                if let Some(why) = answer.why_not() {
                    locked.state.pending = None;
                    locked.state.failed = Some((now, why));
                }
                locked.save()?;
            }
        }
        // Let go of the waiter lock while still holding the token's: a run that comes after
        // this starts a new sender instead of counting on this one.
        drop(waiter);
        drop(locked);
        return Ok(());
    }
}

fn read_token() -> Result<Token> {
    let mut text = String::new();
    io::stdin()
        .take(MAX_LEN as u64 + 1)
        .read_to_string(&mut text)
        .map_err(|_| Error::DeferredInput)?;
    Token::parse(&text).map_err(|_| Error::DeferredInput)
}
