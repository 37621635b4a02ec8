//! `--check`: answers "why does my phone not ring?" without sending a notification. It starts
//! from the same resolved configuration as a delivery and spends one --timeout in all.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use crate::cache::{self, Cache, State};
use crate::config::Config;
use crate::error::{Error, cache_dir_line};
use crate::exit;
use crate::relay::{self, Url};
use crate::run::Outcome;
use crate::token::Token;
use crate::wakeup::{deferred_failure_line, gone_line};

/// Prints one line per check on stdout and remembers the exit status of the first failure.
struct Report {
    failed: usize,
    first_failure: Option<u8>,
    out: std::io::StdoutLock<'static>,
}

impl Report {
    fn ok(&mut self, what: &str) {
        let _ = writeln!(self.out, "ok    {what}");
    }

    fn fail(&mut self, code: u8, what: &str) {
        let _ = writeln!(self.out, "FAIL  {what}");
        self.failed += 1;
        self.first_failure.get_or_insert(code);
    }

    fn outcome(mut self) -> Outcome {
        let _ = self.out.flush();
        match self.first_failure {
            None => Outcome::Done,
            Some(code) => Outcome::CheckFailed {
                failed: self.failed,
                code,
            },
        }
    }
}

pub fn run(config: &Config) -> Outcome {
    let deadline = Instant::now() + config.timeout;
    let mut r = Report {
        failed: 0,
        first_failure: None,
        out: std::io::stdout().lock(),
    };
    for t in &config.tokens {
        r.ok(&format!("token {t}: well-formed"));
    }
    check_cache(config, &mut r);
    r.ok(&format!("url {}", config.url));
    check_relay(&config.url, deadline, &mut r);
    for line in crate::watch::check(config) {
        match line {
            Ok(what) => r.ok(&what),
            Err((code, what)) => r.fail(code, &what),
        }
    }
    r.outcome()
}

/// A configuration that did not resolve: the one line it gives, as a failed check.
pub fn failed(err: &Error) -> Outcome {
    let mut r = Report {
        failed: 0,
        first_failure: None,
        out: std::io::stdout().lock(),
    };
    r.fail(err.exit_code(), &err.to_string());
    r.outcome()
}

fn check_cache(config: &Config, r: &mut Report) {
    let dir = &config.cache_dir;
    let cache = match Cache::open(dir, true) {
        Ok(cache) => cache,
        Err(e) => return r.fail(exit::CONFIG, &e.to_string()),
    };
    let probe = dir.join(format!(".check-{}", std::process::id()));
    let writable = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .and_then(|_| std::fs::remove_file(&probe));
    match writable {
        Ok(()) => r.ok(&format!("cache dir {}: usable", dir.display())),
        Err(e) => return r.fail(exit::CONFIG, &cache_dir_line(dir, &e.to_string())),
    }
    let now = SystemTime::now();
    let mut tokens: Vec<(Token, State)> = config
        .tokens
        .iter()
        .map(|t| (t.clone(), cache.peek(t)))
        .collect();
    if config.remember {
        for (t, state) in cache.remembered() {
            if !tokens.iter().any(|(known, _)| *known == t) {
                tokens.push((t, state));
            }
        }
    }
    if tokens.is_empty() {
        return r.fail(exit::USAGE, &Error::NoToken.to_string());
    }
    for (t, state) in &tokens {
        token_lines(t, state, config, now, r);
    }
}

/// What the token state says about one token, one line each.
fn token_lines(t: &Token, state: &State, config: &Config, now: SystemTime, r: &mut Report) {
    if let Some(since) = state.gone_since(now) {
        return r.fail(exit::USAGE, &gone_line(t, since));
    }
    if let Some((at, why)) = &state.failed {
        r.fail(exit::UNAVAILABLE, &deferred_failure_line(t, *at, why));
    }
    let mut line = match state.notified {
        None => format!("token {t}: never notified"),
        Some(last) => match now.duration_since(last) {
            Ok(age) => format!("token {t}: last notified {} ago", rounded(age)),
            Err(e) => format!(
                "token {t}: last notified {} in the future",
                rounded(e.duration())
            ),
        },
    };
    if state.is_remembered(now)
        && let Some(seen) = state.seen
    {
        let age = now.duration_since(seen).unwrap_or_default();
        line.push_str(&format!("; remembered, last given {} ago", rounded(age)));
    }
    let next = state.next_post(now, config.interval);
    let left = |due: SystemTime| rounded_up(due.duration_since(now).unwrap_or_default());
    if let Some(waiting) = state.pending {
        // Due once the interval after the last POST is over, and sent within --timeout of that:
        // a wakeup still waiting long after lost its sender (killed, or the machine restarted).
        let due = state
            .notified
            .map_or(waiting, |last| last + config.interval)
            .max(state.paused.unwrap_or(waiting));
        match next {
            Some(due) => line.push_str(&format!("; a deferred wakeup is due in {}", left(due))),
            None if now > due + config.timeout + OVERDUE => line.push_str(&format!(
                "; a deferred wakeup was due {} ago and its sender is gone: the next message \
                 sends it",
                rounded(now.duration_since(due).unwrap_or_default())
            )),
            None => line.push_str("; a deferred wakeup is due now"),
        }
    } else if let Some(paused) = state.paused.filter(|&p| p > now) {
        let due = paused.min(now + cache::MAX_PAUSE);
        line.push_str(&format!(
            "; the relay asked for a pause of {} more",
            left(due)
        ));
    } else if let Some(due) = next {
        line.push_str(&format!("; its interval ends in {}", left(due)));
    }
    r.ok(&line);
}

/// Slack for a sender that is late because the machine is busy, not because it is gone.
const OVERDUE: Duration = Duration::from_secs(5);

fn rounded(d: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(Duration::from_secs(d.as_secs()))
}

fn rounded_up(d: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(Duration::from_secs(crate::wakeup::secs(d)))
}

/// DNS, TCP, then TLS and HTTP with a GET: the relay answers 405 to GET, and any HTTP answer
/// proves the whole path. Each step gets what is left of the one budget.
fn check_relay(url: &Url, deadline: Instant, r: &mut Report) {
    let left = || deadline.saturating_duration_since(Instant::now());
    let host = &url.host;
    let addrs = match resolve(host, url.port, left()) {
        Ok(addrs) if !addrs.is_empty() => addrs,
        Ok(_) => {
            return r.fail(
                exit::UNAVAILABLE,
                &format!("dns {host}: no address; check the host name in --url"),
            );
        }
        Err(e) => {
            return r.fail(
                exit::UNAVAILABLE,
                &format!("dns {host}: {e}; check the host name and the network"),
            );
        }
    };
    let list: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
    r.ok(&format!("dns {host}: {}", list.join(", ")));

    let start = Instant::now();
    let mut last_error = None;
    let mut connected = None;
    for addr in &addrs {
        let budget = left();
        if budget.is_zero() {
            break;
        }
        match TcpStream::connect_timeout(addr, budget) {
            Ok(_) => {
                connected = Some(addr);
                break;
            }
            Err(e) => last_error = Some(e),
        }
    }
    match connected {
        Some(addr) => r.ok(&format!(
            "tcp {addr}: connected in {} ms",
            start.elapsed().as_millis()
        )),
        None => {
            let why = last_error
                .map_or_else(|| "no time left within --timeout".into(), |e| e.to_string());
            return r.fail(
                exit::UNAVAILABLE,
                &format!(
                    "tcp {host} port {}: {why}; is the relay up, is a firewall in the way?",
                    url.port
                ),
            );
        }
    }

    let budget = left();
    if budget.is_zero() {
        return r.fail(
            exit::UNAVAILABLE,
            &format!("http GET {url}: no time left within --timeout"),
        );
    }
    match relay::probe(url, budget) {
        Ok(status) => {
            if url.https {
                r.ok(&format!("tls {host}: certificate verified"));
            }
            r.ok(&format!("http GET {url}: answered {status}"));
        }
        Err(e) if relay::is_tls_error(&e) => r.fail(
            exit::UNAVAILABLE,
            &format!(
                "tls {host}: {}; check the system CA store or SSL_CERT_FILE",
                relay::describe(&e)
            ),
        ),
        Err(e) => r.fail(
            exit::UNAVAILABLE,
            &format!("http GET {url}: {}", relay::describe(&e)),
        ),
    }
}

/// getaddrinfo has no timeout of its own: ask in a thread and stop waiting after `timeout`.
fn resolve(host: &str, port: u16, timeout: Duration) -> std::io::Result<Vec<SocketAddr>> {
    let (tx, rx) = mpsc::channel();
    let target = (host.to_string(), port);
    thread::spawn(move || {
        let _ = tx.send(target.to_socket_addrs().map(Iterator::collect));
    });
    rx.recv_timeout(timeout).unwrap_or_else(|_| {
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "no answer in time",
        ))
    })
}
