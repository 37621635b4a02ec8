//! A delivery: decide about the message, then for each token post now, defer to the end of its
//! interval, or say why not. A run ends in an [`Outcome`]; `main` turns it into an exit status.

use std::fmt;
use std::io::Write;
use std::time::{Duration, Instant, SystemTime};

use crate::cache::{Cache, Locked};
use crate::config::{Config, Mode, Verbosity};
use crate::deferral;
use crate::error::{Error, Result};
use crate::message;
use crate::relay::{Answer, Relay};
use crate::token::Token;
use crate::wakeup::{Decision, apply, decide, deferred_failure_line, gone_line, secs};

/// A remembered token given again within this is not written again.
const SEEN_EVERY: Duration = Duration::from_secs(3600);

/// How a run that did its job ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every token was notified, deferred or rightly left alone, or the message was skipped.
    Done,
    /// At least one token could not be notified; each said why on its own line.
    NotNotified,
    /// `--check` found problems: how many, and the exit status of the first.
    CheckFailed { failed: usize, code: u8 },
}

/// The lines on standard error, and which of them are wanted.
pub struct Output {
    pub verbosity: Verbosity,
}

impl Output {
    /// A decision line, shown with `-v` (and `--dry-run`).
    pub fn info(&self, line: fmt::Arguments) {
        if self.verbosity == Verbosity::Verbose {
            emit(&line.to_string());
        }
    }

    /// A line about something that went wrong, shown unless `-q`.
    pub fn report(&self, line: fmt::Arguments) {
        if self.verbosity != Verbosity::Quiet {
            emit(&line.to_string());
        }
    }
}

/// Writes the line with the program prefix in one write, so lines of concurrent runs don't mix.
fn emit(line: &str) {
    let line = format!("deltapush-mda: {line}\n");
    // Nowhere to report a failure to write to stderr.
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// How a wakeup that may go now goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// Posted by this run, within its --timeout.
    Post,
    /// Handed to the token's sender, so that this run returns at once.
    HandOff,
}

/// Reads the decision off the message, then handles every token.
pub fn deliver(config: &Config, header: Option<&[u8]>, out: &Output) -> Result<Outcome> {
    let started = Instant::now();
    if !wanted(config, header, out) {
        return Ok(Outcome::Done);
    }
    let cache = Cache::open(&config.cache_dir, config.mode != Mode::DryRun)?;
    let deadline = started + config.timeout;
    let tokens = tokens(&cache, config, deadline)?;
    wake(&cache, config, &tokens, Wake::Post, out, deadline)
}

/// Whether the message asks for a wakeup; a skip is said with -v. No message (`--check`,
/// the sender, a release) asks for one.
pub fn wanted(config: &Config, header: Option<&[u8]>, out: &Output) -> bool {
    if let Some(header) = header
        && let Some(skip) = config.rules.skip(&message::summarize(header), unix_now())
    {
        out.info(format_args!("skipped: {skip}"));
        return false;
    }
    true
}

/// The tokens a wakeup goes to: those given, and with --remember every remembered one.
pub fn tokens(cache: &Cache, config: &Config, deadline: Instant) -> Result<Vec<Token>> {
    let tokens = match config.remember {
        true => remember(cache, config, deadline, config.mode == Mode::DryRun)?,
        false => config.tokens.clone(),
    };
    match tokens.is_empty() {
        true => Err(Error::NoToken),
        false => Ok(tokens),
    }
}

/// Wakes each token (or says what it would do, in a dry run).
pub fn wake(
    cache: &Cache,
    config: &Config,
    tokens: &[Token],
    how: Wake,
    out: &Output,
    deadline: Instant,
) -> Result<Outcome> {
    let mut relay = Relay::new(&config.url, deadline);
    let mut outcome = Outcome::Done;
    for token in tokens {
        let notified = match config.mode {
            Mode::DryRun => dry_run(cache, token, config, out),
            _ => notify(cache, &mut relay, token, config, how, out, deadline)?,
        };
        if !notified {
            outcome = Outcome::NotNotified;
        }
    }
    Ok(outcome)
}

/// Posts, defers or reports one token under its lock. `false` when it was not notified.
fn notify(
    cache: &Cache,
    relay: &mut Relay,
    token: &Token,
    config: &Config,
    how: Wake,
    out: &Output,
    deadline: Instant,
) -> Result<bool> {
    let Some(mut locked) = cache.lock(token, deadline)? else {
        out.report(format_args!(
            "token {token}: another deltapush-mda held its lock for all of --timeout"
        ));
        return Ok(false);
    };
    let now = SystemTime::now();
    // A hand-off happens where no one reads the lines: the failure waits for a run that has
    // someone to tell.
    if how == Wake::Post {
        report_failure(&mut locked, token, out)?;
    }
    match decide(&locked.state, now, config.interval) {
        Decision::Gone(since) => {
            out.report(format_args!("{}", gone_line(token, since)));
            Ok(true)
        }
        Decision::Wait(until) => defer(cache, &mut locked, token, config, out, now, until),
        Decision::Post if how == Wake::HandOff => {
            defer(cache, &mut locked, token, config, out, now, now)
        }
        Decision::Post => {
            let answer = relay.notify(token);
            let now = SystemTime::now();
            let line = apply(&mut locked.state, &answer, token, now);
            if let Answer::Pause(_) = answer
                && let Some(until) = locked.state.next_post(now, config.interval)
            {
                return defer(cache, &mut locked, token, config, out, now, until);
            }
            locked.save()?;
            if let Answer::Delivered(status) = answer {
                out.info(format_args!("token {token}: notified: {status}"));
            }
            if let Some(line) = line {
                out.report(format_args!("{line}"));
            }
            // A gone token is reported, not failed: retrying the mail cannot revive it.
            Ok(matches!(answer, Answer::Delivered(_) | Answer::Gone))
        }
    }
}

/// Says, once, that the token's last deferred wakeup failed: a deferred sender cannot report
/// through an exit status, so it left its line in the token state.
fn report_failure(locked: &mut Locked, token: &Token, out: &Output) -> Result<()> {
    if let Some((at, why)) = locked.state.failed.take() {
        out.report(format_args!("{}", deferred_failure_line(token, at, &why)));
        locked.save()?;
    }
    Ok(())
}

/// [`report_failure`] for each token, for a run whose wakeup goes elsewhere (a `--hold`).
pub fn report_failures(
    cache: &Cache,
    tokens: &[Token],
    out: &Output,
    deadline: Instant,
) -> Result<()> {
    for token in tokens {
        if let Some(mut locked) = cache.lock(token, deadline)? {
            report_failure(&mut locked, token, out)?;
        }
    }
    Ok(())
}

/// Leaves the message's wakeup to the token's deferred sender, starting one if none waits.
fn defer(
    cache: &Cache,
    locked: &mut Locked,
    token: &Token,
    config: &Config,
    out: &Output,
    now: SystemTime,
    until: SystemTime,
) -> Result<bool> {
    let left = until.duration_since(now).unwrap_or_default();
    // Without an interval only a pause defers, and a pause is a failure to say.
    if config.interval.is_zero() && !left.is_zero() {
        locked.save()?;
        out.report(format_args!(
            "token {token}: not notified: the relay asked for a pause of {} s more; \
             the next message after it will try again",
            secs(left)
        ));
        return Ok(false);
    }
    locked.state.pending.get_or_insert(now);
    locked.save()?;
    if let Some(waiter) = cache.claim_waiter(token)?
        && let Err(e) = deferral::start(config, token, waiter)
    {
        out.report(format_args!(
            "token {token}: not notified: the deferred sender did not start: {e}; \
                 the next message will try again"
        ));
        return Ok(false);
    }
    match left.is_zero() {
        true => out.info(format_args!("token {token}: handed to its sender")),
        false => out.info(format_args!("token {token}: deferred by {} s", secs(left))),
    }
    Ok(true)
}

/// What a run would do, said and not done.
fn dry_run(cache: &Cache, token: &Token, config: &Config, out: &Output) -> bool {
    let now = SystemTime::now();
    match decide(&cache.peek(token), now, config.interval) {
        Decision::Gone(since) => {
            out.info(format_args!("{} (dry run)", gone_line(token, since)));
        }
        Decision::Wait(until) => {
            let left = secs(until.duration_since(now).unwrap_or_default());
            out.info(format_args!(
                "token {token}: would defer by {left} s (dry run)"
            ));
        }
        Decision::Post => {
            out.info(format_args!(
                "token {token}: would notify {} (dry run)",
                config.url
            ));
        }
    }
    true
}

/// Records the tokens given as seen, forgets the stale ones, and returns every token to notify:
/// those given, then the other remembered ones.
fn remember(cache: &Cache, config: &Config, deadline: Instant, dry: bool) -> Result<Vec<Token>> {
    let now = SystemTime::now();
    if !dry {
        for token in &config.tokens {
            let Some(mut locked) = cache.lock(token, deadline)? else {
                continue;
            };
            // A token the relay called dead is not taken back while it is. Seen within the
            // hour is seen enough for a 90-day memory: no write for every message.
            let fresh = locked.state.token.as_deref() == Some(token.as_str())
                && locked
                    .state
                    .seen
                    .is_some_and(|seen| now.duration_since(seen).is_ok_and(|d| d < SEEN_EVERY));
            if locked.state.gone_since(now).is_none() && !fresh {
                locked.state.token = Some(token.as_str().to_string());
                locked.state.seen = Some(now);
                locked.save()?;
            }
        }
    }
    let mut tokens = config.tokens.clone();
    for (token, state) in cache.remembered() {
        if tokens.contains(&token) {
            continue;
        }
        if state.is_remembered(now) && state.gone_since(now).is_none() {
            tokens.push(token);
        } else if !dry && let Some(mut locked) = cache.lock(&token, deadline)? {
            locked.state.forget();
            locked.save()?;
        }
    }
    Ok(tokens)
}

pub fn unix_now() -> i64 {
    match SystemTime::now().duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}
