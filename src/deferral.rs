//! The deferred wakeup: a run that finds the token's interval taken leaves the message's wakeup
//! to one sender per token, which waits for the interval's end and posts then.
//!
//! The sender is this program again, started detached (`detach`), with the token on a private
//! pipe (never on its command line, where `ps` would show it), and the token's waiter lock on
//! descriptor 3, taken by the run under the token's lock so that no second run can start a
//! second sender. It cannot report through an exit status: a failure is
//! left in the token state for the next run to print.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::FromRawFd;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use crate::cache::Cache;
use crate::config::Config;
use crate::detach;
use crate::error::{Error, Result};
use crate::relay::{Answer, Relay};
use crate::token::{MAX_LEN, Token};
use crate::wakeup::{Decision, apply, decide};

/// A little past the interval's end, so a clock tick short of it does not send the sender back
/// to sleep for a millisecond.
const SLACK: Duration = Duration::from_millis(5);

/// Starts the token's sender, handing it `waiter` (the claimed waiter lock). Returns once it runs.
pub fn start(config: &Config, token: &Token, waiter: File) -> io::Result<()> {
    let mut args: Vec<OsString> = ["--send-deferred", "--url", config.url.as_str()]
        .map(OsString::from)
        .into();
    args.push("--interval".into());
    args.push(
        humantime::format_duration(config.interval)
            .to_string()
            .into(),
    );
    args.push("--timeout".into());
    args.push(
        humantime::format_duration(config.timeout)
            .to_string()
            .into(),
    );
    args.push("--cache-dir".into());
    args.push(config.cache_dir.clone().into());
    detach::spawn(&args, Some(waiter), token.as_bytes())
}

/// The sender: waits for the token's next allowed POST, posts if a message still waits, and
/// records what happened.
pub fn send(config: &Config) -> Result<()> {
    let token = read_token()?;
    let cache = Cache::open(&config.cache_dir, true)?;
    // SAFETY: descriptor 3 is only ever taken over here, once; a sender started by hand may not
    // have it, which the check below finds.
    let given = unsafe { File::from_raw_fd(detach::HANDED_FD) };
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
