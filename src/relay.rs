//! The HTTP side: one POST per token to the notification relay, retried within a time budget.

use std::io;
use std::net::IpAddr;
use std::thread;
use std::time::{Duration, Instant};

use ureq::Agent;
use ureq::http::Uri;
use ureq::tls::{RootCerts, TlsConfig};

use crate::error::{Error, Result};
use crate::token::Token;

const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// The least time worth giving one more attempt.
const MIN_ATTEMPT: Duration = Duration::from_millis(500);
/// The relay answers with a few bytes; anything longer is not worth reading.
const MAX_ANSWER: u64 = 64 * 1024;

/// Refuses a URL that is not https, unless it is plain http to this machine (for tests and
/// local relays): tokens never travel in clear over a network.
pub fn check_url(url: &str) -> Result<()> {
    let bad = |why: &str| Error::Config(format!("--url {url}: {why}"));
    let uri: Uri = url.parse().map_err(|_| bad("not a valid URL"))?;
    let host = uri.host().ok_or_else(|| bad("no host"))?;
    match uri.scheme_str() {
        Some("https") => Ok(()),
        Some("http") if is_loopback(host) => Ok(()),
        Some("http") => Err(bad(
            "plain http is only allowed to a loopback host; use https://",
        )),
        _ => Err(bad("only https:// URLs are supported")),
    }
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Why a token was not notified.
#[derive(Debug, PartialEq, Eq)]
pub enum Failure {
    /// 410: the token is dead for good.
    Gone,
    /// Another 4xx (or a redirect): retrying would not help.
    Refused(u16),
    /// 5xx, network trouble or the budget ran out; `detail` says what happened last.
    Unavailable(String),
}

impl Failure {
    /// The error line for `token`, without the program-name prefix.
    pub fn line(&self, token: &Token) -> String {
        match self {
            Failure::Gone => format!(
                "token {token}: the relay says it is no longer valid (410 Gone); \
                 copy the current notify token from Delta Chat"
            ),
            Failure::Refused(status) => {
                format!("token {token}: the relay refused it with HTTP {status}; check --url")
            }
            Failure::Unavailable(detail) => {
                format!("token {token}: not notified: {detail}; the next message will try again")
            }
        }
    }
}

/// The relay, with an HTTP agent built on first use, so a run that sends nothing pays for no
/// TLS or certificate set-up.
pub struct Relay {
    url: String,
    deadline: Instant,
    agent: Option<Agent>,
}

impl Relay {
    pub fn new(url: &str, deadline: Instant) -> Relay {
        Relay {
            url: url.to_string(),
            deadline,
            agent: None,
        }
    }

    /// Posts the token; on 5xx or a network error tries again with backoff until the deadline.
    /// Returns the 2xx status.
    pub fn notify(&mut self, token: &Token) -> Result<u16, Failure> {
        let mut backoff = FIRST_BACKOFF;
        loop {
            let left = self.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Failure::Unavailable("no time left within --timeout".into()));
            }
            let detail = match self.post(token, left) {
                Ok(status @ 200..=299) => return Ok(status),
                Ok(410) => return Err(Failure::Gone),
                Ok(status @ 500..=599) => format!("the relay answered HTTP {status}"),
                Ok(status) => return Err(Failure::Refused(status)),
                // A certificate will not become trusted within the budget: retrying only held
                // the caller for all of --timeout and let a final timeout hide the real cause.
                Err(e) if is_tls_error(&e) => return Err(Failure::Unavailable(describe(&e))),
                Err(e) => describe(&e),
            };
            // A retry with almost no time left would only time out and hide the real cause.
            let left = self.deadline.saturating_duration_since(Instant::now());
            if left <= backoff + MIN_ATTEMPT {
                return Err(Failure::Unavailable(detail));
            }
            thread::sleep(backoff);
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    fn post(&mut self, token: &Token, timeout: Duration) -> Result<u16, ureq::Error> {
        let agent = self.agent.get_or_insert_with(new_agent);
        let response = agent
            .post(&self.url)
            .config()
            .timeout_global(Some(timeout))
            .build()
            .content_type("application/octet-stream")
            .send(token.as_bytes())?;
        let status = response.status().as_u16();
        // Read the (tiny) answer so the connection can be reused for the next token.
        let _ = response
            .into_body()
            .into_with_config()
            .limit(MAX_ANSWER)
            .read_to_vec();
        Ok(status)
    }
}

fn new_agent() -> Agent {
    Agent::config_builder()
        .http_status_as_error(false)
        // A redirected POST would turn into a GET that notifies nobody: report it instead.
        .max_redirects(0)
        .user_agent(concat!("deltapush-mda/", env!("CARGO_PKG_VERSION")))
        .tls_config(
            TlsConfig::builder()
                // The system's CA store, and SSL_CERT_FILE / SSL_CERT_DIR when set.
                .root_certs(RootCerts::PlatformVerifier)
                .build(),
        )
        .build()
        .into()
}

/// A GET of the notify URL, for `--check`: the status, whatever it is.
pub fn probe(url: &str, timeout: Duration) -> Result<u16, ureq::Error> {
    let response = new_agent()
        .get(url)
        .config()
        .timeout_global(Some(timeout))
        .build()
        .call()?;
    Ok(response.status().as_u16())
}

/// Whether the error happened while setting up TLS (certificate, handshake).
pub fn is_tls_error(e: &ureq::Error) -> bool {
    match e {
        ureq::Error::Tls(_) | ureq::Error::Rustls(_) | ureq::Error::Pem(_) => true,
        // rustls reports handshake and certificate failures through the stream as InvalidData.
        ureq::Error::Io(io) => io.kind() == io::ErrorKind::InvalidData,
        _ => false,
    }
}

/// One line, no token: ureq's errors name the host, never the body.
pub fn describe(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Timeout(_) => "the relay did not answer in time".to_string(),
        ureq::Error::HostNotFound => "relay host not found (DNS)".to_string(),
        ureq::Error::ConnectionFailed => "could not connect to the relay".to_string(),
        ureq::Error::Io(io) => match io.kind() {
            io::ErrorKind::ConnectionRefused => "the relay refused the connection".to_string(),
            io::ErrorKind::TimedOut => "the relay did not answer in time".to_string(),
            io::ErrorKind::InvalidData => format!("TLS: {io}"),
            _ => format!("network error: {io}"),
        },
        other => other.to_string().replace('\n', " "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_policy() {
        for ok in [
            "https://notifications.delta.chat/notify",
            "http://127.0.0.1:8080/notify",
            "http://127.8.9.10/notify",
            "http://localhost/notify",
            "http://LOCALHOST:1/",
            "http://[::1]:8080/notify",
        ] {
            assert!(check_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://notifications.delta.chat/notify",
            "http://10.0.0.1/notify",
            "http://127.0.0.1.example.com/",
            "http://localhost.evil/",
            "ftp://127.0.0.1/",
            "notifications.delta.chat/notify",
            "",
            "https://",
        ] {
            assert!(matches!(check_url(bad), Err(Error::Config(_))), "{bad}");
        }
        assert_eq!(
            check_url("http://example.com/notify")
                .unwrap_err()
                .to_string(),
            "--url http://example.com/notify: plain http is only allowed to a loopback host; use https://"
        );
    }

    #[test]
    fn failure_lines_show_only_the_prefix() {
        let t = Token::parse("openpgp:SECRETSECRETSECRET").unwrap();
        for f in [
            Failure::Gone,
            Failure::Refused(404),
            Failure::Unavailable("x".into()),
        ] {
            let line = f.line(&t);
            assert!(line.starts_with("token openpgp:…: "), "{line}");
            assert!(!line.contains("SECRET"));
        }
    }

    #[test]
    fn no_budget_means_no_attempt() {
        let mut relay = Relay::new("http://127.0.0.1:9/", Instant::now());
        let t = Token::parse("tok").unwrap();
        assert_eq!(
            relay.notify(&t),
            Err(Failure::Unavailable("no time left within --timeout".into()))
        );
        assert!(relay.agent.is_none());
    }
}
