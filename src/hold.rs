//! A wakeup held until its message is stored.
//!
//! Dovecot runs Sieve, and so a `--hold` run, before it stores the message; its commit hook
//! (`examples/dovecot/deltapush.lua`) runs `--release` after. A POST sent from Sieve reached the
//! relay 3–42 ms before the message was in the mailbox, and a phone that fetched then found
//! nothing. So the Sieve run decides, with the header block and the rules, and keeps what it
//! would wake in `<cache dir>/held.<pid>`, named by the delivering process (the parent of both
//! runs). The release takes that record and hands each token to its sender, so the delivery
//! never waits for the relay.
//!
//! One delivering process stores one message at a time, so its pid tells its deliveries apart
//! for as long as the record is needed: from Sieve to the commit of the same message.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crate::cache::{self, Cache};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::relay::Url;
use crate::run::{self, Outcome, Output, Wake};
use crate::token::{MAX_LEN, Token};

/// The first line of every held record this version writes.
const HEADER: &str = "deltapush-mda held wakeup 1";
/// A record is a few settings and the tokens; anything longer was not written by us.
const MAX_RECORD_LEN: u64 = 1024 * 1024;
/// A message is stored within this of its Sieve run. A record older than this belongs to a
/// delivery that was never stored (the user's script discarded it, or the server stopped), and
/// is swept.
const STALE_AFTER: Duration = Duration::from_secs(3600);

/// What a `--hold` run decided to wake, and how: everything the release needs.
#[derive(Debug, PartialEq, Eq)]
pub struct Held {
    pub url: Url,
    pub interval: Duration,
    pub timeout: Duration,
    pub tokens: Vec<Token>,
}

/// A `--hold` run: the decision and the tokens of a delivery, kept instead of woken.
pub fn hold(config: &Config, header: Option<&[u8]>, out: &Output) -> Result<Outcome> {
    let started = Instant::now();
    let cache = Cache::open(&config.cache_dir, true)?;
    if !run::wanted(config, header, out) {
        clear(&cache, delivery())?;
        return Ok(Outcome::Done);
    }
    let held = Held {
        url: config.url.clone(),
        interval: config.interval,
        timeout: config.timeout,
        tokens: run::tokens(&cache, config, started + config.timeout)?,
    };
    keep(&cache, delivery(), &held)?;
    for token in &held.tokens {
        out.info(format_args!(
            "token {token}: held until the message is stored"
        ));
    }
    Ok(Outcome::Done)
}

/// A `--release` run: what the `--hold` run of the same delivery kept goes to the senders.
pub fn release(config: &Config, out: &Output) -> Result<Outcome> {
    let started = Instant::now();
    // No cache dir: nothing was held.
    let cache = Cache::open(&config.cache_dir, false)?;
    let Some(held) = take(&cache, delivery())? else {
        return Ok(Outcome::Done);
    };
    // The held wakeup goes the way the run that decided it was told.
    let config = Config {
        url: held.url,
        interval: held.interval,
        timeout: held.timeout,
        tokens: held.tokens,
        ..config.clone()
    };
    let deadline = started + config.timeout;
    run::wake(
        &cache,
        &config,
        &config.tokens,
        Wake::HandOff,
        out,
        deadline,
    )
}

/// The delivering process: the parent of the Sieve program and of the commit hook's command.
pub fn delivery() -> u32 {
    std::os::unix::process::parent_id()
}

fn path(cache: &Cache, delivery: u32) -> PathBuf {
    cache.dir().join(format!("held.{delivery}"))
}

/// Keeps the record for `delivery`, replacing any earlier one of the same process, and sweeps
/// stale ones.
pub fn keep(cache: &Cache, delivery: u32, held: &Held) -> Result<()> {
    sweep(cache.dir());
    cache::replace(&path(cache, delivery), &held.render())
}

/// Drops what `delivery` held: its latest message wakes no one, and an earlier record of the
/// same process (a message that was never stored) must not be released by this one's commit.
pub fn clear(cache: &Cache, delivery: u32) -> Result<()> {
    let path = path(cache, delivery);
    match fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::Cache { path, source: e }),
        _ => Ok(()),
    }
}

/// Takes the record of `delivery` out of the cache dir, if there is one to release.
pub fn take(cache: &Cache, delivery: u32) -> Result<Option<Held>> {
    let path = path(cache, delivery);
    let Some((text, written)) = cache::read_private(&path, MAX_RECORD_LEN) else {
        return Ok(None);
    };
    // Taken once: a second commit of the same delivery (a copy filed into a second folder)
    // finds nothing.
    fs::remove_file(&path).map_err(|source| Error::Cache { path, source })?;
    if is_stale(written, SystemTime::now()) {
        return Ok(None);
    }
    Ok(Held::parse(&text))
}

fn is_stale(written: SystemTime, now: SystemTime) -> bool {
    now.duration_since(written)
        .is_ok_and(|age| age > STALE_AFTER)
}

/// Removes the records of deliveries that were never stored.
fn sweep(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let now = SystemTime::now();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix("held.")) else {
            continue;
        };
        if pid.bytes().all(|b| b.is_ascii_digit())
            && let Ok(meta) = entry.metadata()
            && meta.modified().is_ok_and(|m| is_stale(m, now))
        {
            let _ = fs::remove_file(entry.path());
        }
    }
}

impl Held {
    fn render(&self) -> String {
        let mut text = format!(
            "{HEADER}\nurl {}\ninterval {}\ntimeout {}\n",
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
        let (mut url, mut interval, mut timeout, mut tokens) = (None, None, None, Vec::new());
        let millis = |v: &str| v.parse().ok().map(Duration::from_millis);
        for line in lines {
            let (key, value) = line.split_once(' ')?;
            match key {
                "url" => url = Url::parse(value).ok(),
                "interval" => interval = millis(value),
                "timeout" => timeout = millis(value),
                "token" if value.len() <= MAX_LEN => tokens.push(Token::parse(value).ok()?),
                _ => return None,
            }
        }
        Some(Held {
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
            text.replacen("held wakeup 1", "held wakeup 2", 1),
            text.replace("timeout 5000\n", ""),
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
