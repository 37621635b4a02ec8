//! deltapush-mda: wake Delta Chat on a phone when mail arrives in a mailbox without push.

pub mod check;
pub mod cli;
pub mod error;
pub mod exit;
pub mod message;
pub mod ratelimit;
pub mod relay;
pub mod token;

use std::fmt;
use std::io::Write;
use std::time::{Instant, SystemTime};

use cli::Cli;
use error::{Error, Result};
use ratelimit::Cache;
use relay::Relay;
use token::Token;

/// Where the lines on standard error go, and which of them are wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verbosity {
    Quiet,
    Normal,
    Verbose,
}

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

    /// Error lines, shown unless `-q`.
    pub fn error(&self, err: &Error) {
        if self.verbosity != Verbosity::Quiet {
            emit(&err.to_string());
        }
    }
}

/// Writes each line with the program prefix in one write, so lines of concurrent runs don't mix.
fn emit(text: &str) {
    let mut buf = String::new();
    for line in text.lines() {
        buf.push_str("deltapush-mda: ");
        buf.push_str(line);
        buf.push('\n');
    }
    // Nowhere to report a failure to write to stderr.
    let _ = std::io::stderr().lock().write_all(buf.as_bytes());
}

/// Reads the message, decides, and notifies every token that is due.
pub fn run(cli: &Cli, out: &Output) -> Result<()> {
    if cli.check {
        return check::run(cli);
    }
    // Read (and drain) first: a pipe writer must see us consume the mail even if we fail below.
    let header = message::read_stdin().map_err(Error::Input)?;
    let started = Instant::now();

    let tokens = token::collect(&cli.tokens, cli.token_file.as_deref())?;
    relay::check_url(&cli.url)?;
    let cache_dir = match &cli.cache_dir {
        Some(dir) => dir.clone(),
        None => ratelimit::default_dir().ok_or_else(|| {
            Error::Config("no home directory to keep stamps in; give --cache-dir".to_string())
        })?,
    };

    if let Some(header) = &header {
        let rules = message::Rules {
            skip_from: cli.skip_from.clone(),
            only_chat: cli.only_chat,
            max_age: cli.max_age,
        };
        if let Some(skip) = rules.skip(&message::summarize(header), unix_now()) {
            out.info(format_args!("skipped: {skip}"));
            return Ok(());
        }
    }

    let cache = Cache::open(cache_dir, !cli.dry_run)?;
    let deadline = started + cli.timeout;
    if cli.dry_run {
        dry_run(&cache, &tokens, cli, out);
        return Ok(());
    }

    let mut relay = Relay::new(&cli.url, deadline);
    let mut failures = Vec::new();
    for token in &tokens {
        if let Some(line) = notify(&cache, &mut relay, token, cli, out, deadline)? {
            failures.push(line);
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(Error::NotNotified {
            failures,
            tempfail: cli.tempfail,
        })
    }
}

/// Notifies one token unless it is rate-limited. `Ok(Some(line))` is a failure to report.
fn notify(
    cache: &Cache,
    relay: &mut Relay,
    token: &Token,
    cli: &Cli,
    out: &Output,
    deadline: Instant,
) -> Result<Option<String>> {
    let Some(lock) = cache.lock(token, deadline)? else {
        return Ok(Some(format!(
            "token {token}: another deltapush-mda held its lock for all of --timeout"
        )));
    };
    let last = cache.last_notified(token);
    if let Some(left) = ratelimit::wait_left(last, SystemTime::now(), cli.interval) {
        out.info(format_args!(
            "token {token}: rate-limited: {} s left",
            left.as_secs_f64().ceil()
        ));
        return Ok(None);
    }
    match relay.notify(token) {
        Ok(status) => {
            lock.touch()?;
            out.info(format_args!("token {token}: notified: {status}"));
            Ok(None)
        }
        Err(failure) => Ok(Some(failure.line(token))),
    }
}

fn dry_run(cache: &Cache, tokens: &[Token], cli: &Cli, out: &Output) {
    let out = Output {
        verbosity: match out.verbosity {
            Verbosity::Quiet => Verbosity::Quiet,
            _ => Verbosity::Verbose,
        },
    };
    for token in tokens {
        let last = cache.last_notified(token);
        match ratelimit::wait_left(last, SystemTime::now(), cli.interval) {
            Some(left) => out.info(format_args!(
                "token {token}: rate-limited: {} s left (dry run)",
                left.as_secs_f64().ceil()
            )),
            None => out.info(format_args!(
                "token {token}: would notify {} (dry run)",
                cli.url
            )),
        }
    }
}

fn unix_now() -> i64 {
    match SystemTime::now().duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}
