//! `--check`: answers "why does my phone not ring?" without sending a notification.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use ureq::http::Uri;

use crate::cli::Cli;
use crate::error::{EX_CONFIG, EX_UNAVAILABLE, EX_USAGE, Error, Result};
use crate::ratelimit::{self, Cache};
use crate::relay;
use crate::token::{self, Token};

/// Prints one line per check on stdout and remembers the exit code of the first failure.
struct Report {
    failed: usize,
    code: u8,
    out: std::io::StdoutLock<'static>,
}

impl Report {
    fn ok(&mut self, what: &str) {
        let _ = writeln!(self.out, "ok    {what}");
    }

    fn fail(&mut self, code: u8, what: &str) {
        let _ = writeln!(self.out, "FAIL  {what}");
        if self.failed == 0 {
            self.code = code;
        }
        self.failed += 1;
    }
}

pub fn run(cli: &Cli) -> Result<()> {
    let mut r = Report {
        failed: 0,
        code: 0,
        out: std::io::stdout().lock(),
    };
    let tokens = check_tokens(cli, &mut r);
    check_cache(cli, &tokens, &mut r);
    match relay::check_url(&cli.url) {
        Ok(()) => {
            r.ok(&format!("url {}", cli.url));
            check_relay(&cli.url, cli.timeout, &mut r);
        }
        Err(e) => r.fail(EX_CONFIG, &e.to_string()),
    }
    let _ = r.out.flush();
    match r.failed {
        0 => Ok(()),
        failed => Err(Error::CheckFailed {
            failed,
            code: r.code,
        }),
    }
}

fn check_tokens(cli: &Cli, r: &mut Report) -> Vec<Token> {
    let mut tokens: Vec<Token> = Vec::new();
    let mut add = |t: Token, r: &mut Report| {
        if tokens.contains(&t) {
            r.fail(
                EX_USAGE,
                &format!("token {t}: given twice; remove the duplicate"),
            );
        } else {
            r.ok(&format!("token {t}: well-formed"));
            tokens.push(t);
        }
    };
    for arg in &cli.tokens {
        match Token::parse(arg) {
            Ok(t) => add(t, r),
            Err(e) => r.fail(EX_USAGE, &e),
        }
    }
    if let Some(path) = &cli.token_file {
        match token::read_file(path) {
            Ok(list) => list.into_iter().for_each(|t| add(t, r)),
            Err(e) => r.fail(e.exit_code(), &e.to_string()),
        }
    }
    if tokens.is_empty() && r.failed == 0 {
        r.fail(
            EX_USAGE,
            "no token given: pass TOKEN or --token-file PATH (see --help)",
        );
    }
    tokens
}

fn check_cache(cli: &Cli, tokens: &[Token], r: &mut Report) {
    let Some(dir) = cli.cache_dir.clone().or_else(ratelimit::default_dir) else {
        r.fail(
            EX_CONFIG,
            "cache dir: no home directory to keep stamps in; give --cache-dir",
        );
        return;
    };
    let shown = dir.display().to_string();
    let cache = match Cache::open(dir.clone(), true) {
        Ok(cache) => cache,
        Err(e) => return r.fail(EX_CONFIG, &e.to_string()),
    };
    let probe = dir.join(format!(".check-{}", std::process::id()));
    let writable = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .and_then(|_| std::fs::remove_file(&probe));
    match writable {
        Ok(()) => r.ok(&format!("cache dir {shown}: usable")),
        Err(e) => {
            return r.fail(
                EX_CONFIG,
                &format!("cache dir {shown}: {e}; fix it or give another with --cache-dir"),
            );
        }
    }
    let now = SystemTime::now();
    for t in tokens {
        let line = match cache.last_notified(t) {
            None => format!("token {t}: never notified"),
            Some(last) => {
                let when = match now.duration_since(last) {
                    Ok(age) => format!("{} ago", rounded(age)),
                    Err(e) => format!("{} in the future", rounded(e.duration())),
                };
                match ratelimit::wait_left(Some(last), now, cli.interval) {
                    Some(left) => format!(
                        "token {t}: last notified {when}; rate-limited for {} more",
                        rounded(left)
                    ),
                    None => format!("token {t}: last notified {when}"),
                }
            }
        };
        r.ok(&line);
    }
}

fn rounded(d: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(Duration::from_secs(d.as_secs()))
}

/// DNS, TCP, then TLS and HTTP with a GET: the relay answers 405 to GET, and any HTTP answer
/// proves the whole path.
fn check_relay(url: &str, timeout: Duration, r: &mut Report) {
    let Ok(uri) = url.parse::<Uri>() else { return };
    let host = uri.host().unwrap_or_default().to_string();
    let https = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });

    let addrs = match resolve(&host, port, timeout) {
        Ok(addrs) if !addrs.is_empty() => addrs,
        Ok(_) => {
            return r.fail(
                EX_UNAVAILABLE,
                &format!("dns {host}: no address; check the host name in --url"),
            );
        }
        Err(e) => {
            return r.fail(
                EX_UNAVAILABLE,
                &format!("dns {host}: {e}; check the host name and the network"),
            );
        }
    };
    let list: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
    r.ok(&format!("dns {host}: {}", list.join(", ")));

    let start = Instant::now();
    let mut last_error = None;
    let connected = addrs
        .iter()
        .find(|a| match TcpStream::connect_timeout(a, timeout) {
            Ok(_) => true,
            Err(e) => {
                last_error = Some(e);
                false
            }
        });
    match (connected, last_error) {
        (Some(addr), _) => r.ok(&format!(
            "tcp {addr}: connected in {} ms",
            start.elapsed().as_millis()
        )),
        (None, e) => {
            let why = e.map_or_else(|| "no connection".to_string(), |e| e.to_string());
            return r.fail(
                EX_UNAVAILABLE,
                &format!(
                    "tcp {host} port {port}: {why}; is the relay up, is a firewall in the way?"
                ),
            );
        }
    }

    match relay::probe(url, timeout) {
        Ok(status) => {
            if https {
                r.ok(&format!("tls {host}: certificate verified"));
            }
            r.ok(&format!("http GET {url}: answered {status}"));
        }
        Err(e) if relay::is_tls_error(&e) => r.fail(
            EX_UNAVAILABLE,
            &format!(
                "tls {host}: {}; check the system CA store or SSL_CERT_FILE",
                relay::describe(&e)
            ),
        ),
        Err(e) => r.fail(
            EX_UNAVAILABLE,
            &format!("http GET {url}: {}", relay::describe(&e)),
        ),
    }
}

/// getaddrinfo has no timeout of its own: ask in a thread and stop waiting after `timeout`.
fn resolve(host: &str, port: u16, timeout: Duration) -> std::io::Result<Vec<SocketAddr>> {
    let (tx, rx) = mpsc::channel();
    let target = (
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
        port,
    );
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
