//! The HTTP side: one POST per token to the notification relay, retried within a time budget.

use std::io;
use std::net::IpAddr;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use ureq::Agent;
use ureq::http::Uri;
use ureq::tls::{RootCerts, TlsConfig};

use crate::error::{Error, Result, UrlProblem};
use crate::token::Token;

const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// The least time worth giving one more attempt.
const MIN_ATTEMPT: Duration = Duration::from_millis(500);
/// The relay answers with a few bytes; anything longer is not worth reading.
const MAX_ANSWER: u64 = 64 * 1024;

/// The relay's URL, checked: https, or plain http to this machine only (for tests and local
/// relays), so tokens never travel in clear over a network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    text: String,
    /// Without the brackets of an IPv6 literal.
    pub host: String,
    pub port: u16,
    pub https: bool,
}

impl Url {
    pub fn parse(text: &str) -> Result<Url> {
        let bad = |problem| Error::Url {
            url: text.to_string(),
            problem,
        };
        let uri: Uri = text.parse().map_err(|_| bad(UrlProblem::Invalid))?;
        let host = uri.host().ok_or_else(|| bad(UrlProblem::NoHost))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") if is_loopback(&host) => false,
            Some("http") => return Err(bad(UrlProblem::PlainHttp)),
            _ => return Err(bad(UrlProblem::Scheme)),
        };
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        Ok(Url {
            text: text.to_string(),
            host,
            port,
            https,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl std::fmt::Display for Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

pub fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// What the relay made of a token, once retries are over.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// A 2xx: the phone is being woken.
    Delivered(u16),
    /// 410: the token is dead (also an `openpgp:` token the relay cannot decrypt).
    Gone,
    /// 429 or 503 with Retry-After (429 without it too): send this token nothing for this long.
    Pause(Duration),
    /// Another 4xx (or a redirect): retrying would not help.
    Refused(u16),
    /// 5xx, network trouble or the budget ran out; says what happened last.
    Unavailable(String),
}

impl Answer {
    /// Why the token was not notified, when retrying later may help or the setup is wrong.
    pub fn why_not(&self) -> Option<String> {
        match self {
            Answer::Refused(status) => Some(format!(
                "the relay refused it with HTTP {status}; check --url"
            )),
            Answer::Unavailable(detail) => Some(detail.clone()),
            Answer::Delivered(_) | Answer::Gone | Answer::Pause(_) => None,
        }
    }
}

/// How long a 429 without Retry-After pauses a token.
const DEFAULT_PAUSE: Duration = Duration::from_secs(60);

/// The relay, with an HTTP agent built on first use, so a run that sends nothing pays for no
/// TLS or certificate set-up.
pub struct Relay {
    url: String,
    deadline: Instant,
    agent: Option<Agent>,
}

impl Relay {
    pub fn new(url: &Url, deadline: Instant) -> Relay {
        Relay {
            url: url.as_str().to_string(),
            deadline,
            agent: None,
        }
    }

    /// Posts the token; on 5xx or a network error tries again with backoff until the deadline.
    pub fn notify(&mut self, token: &Token) -> Answer {
        let mut backoff = FIRST_BACKOFF;
        loop {
            let left = self.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Answer::Unavailable("no time left within --timeout".into());
            }
            let detail = match self.post(token, left) {
                Ok((status @ 200..=299, _)) => return Answer::Delivered(status),
                Ok((410, _)) => return Answer::Gone,
                Ok((429, retry_after)) => {
                    return Answer::Pause(retry_after.unwrap_or(DEFAULT_PAUSE));
                }
                Ok((503, Some(retry_after))) => return Answer::Pause(retry_after),
                Ok((status @ 500..=599, _)) => format!("the relay answered HTTP {status}"),
                Ok((status, _)) => return Answer::Refused(status),
                // A certificate will not become trusted within the budget: retrying only held
                // the caller for all of --timeout and let a final timeout hide the real cause.
                Err(e) if is_tls_error(&e) => return Answer::Unavailable(describe(&e)),
                Err(e) => describe(&e),
            };
            // A retry with almost no time left would only time out and hide the real cause.
            let left = self.deadline.saturating_duration_since(Instant::now());
            if left <= backoff + MIN_ATTEMPT {
                return Answer::Unavailable(detail);
            }
            thread::sleep(backoff);
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One POST: the status and the Retry-After it came with.
    fn post(
        &mut self,
        token: &Token,
        timeout: Duration,
    ) -> Result<(u16, Option<Duration>), ureq::Error> {
        let agent = self.agent.get_or_insert_with(new_agent);
        let response = agent
            .post(&self.url)
            .config()
            .timeout_global(Some(timeout))
            .build()
            .content_type("application/octet-stream")
            .send(token.as_bytes())?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| retry_after(v, SystemTime::now()));
        // Read the (tiny) answer so the connection can be reused for the next token.
        let _ = response
            .into_body()
            .into_with_config()
            .limit(MAX_ANSWER)
            .read_to_vec();
        Ok((status, retry_after))
    }
}

/// A Retry-After value: seconds, or an HTTP date. The caller caps it.
fn retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    // An HTTP date (IMF-fixdate) is an RFC 5322 date.
    let date = mail_parser::DateTime::parse_rfc822(value).filter(|d| d.is_valid())?;
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(date.to_timestamp()).ok()?);
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
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
pub fn probe(url: &Url, timeout: Duration) -> Result<u16, ureq::Error> {
    let response = new_agent()
        .get(url.as_str())
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
        ureq::Error::Tls(_) | ureq::Error::Rustls(_) | ureq::Error::Pem(_) => {
            format!("TLS: {}", e.to_string().replace('\n', " "))
        }
        other => format!("bad answer: {}", other.to_string().replace('\n', " ")),
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
            assert!(Url::parse(ok).is_ok(), "{ok}");
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
            assert!(matches!(Url::parse(bad), Err(Error::Url { .. })), "{bad}");
        }
        assert_eq!(
            Url::parse("http://example.com/notify")
                .unwrap_err()
                .to_string(),
            "--url http://example.com/notify: plain http is only allowed to a loopback host; use https://"
        );
        let u = Url::parse("http://[::1]:8080/notify").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.https), ("::1", 8080, false));
        let u = Url::parse("https://notifications.delta.chat/notify").unwrap();
        assert_eq!((u.port, u.https), (443, true));
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_737);
        assert_eq!(retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(retry_after(" 0 ", now), Some(Duration::ZERO));
        // RFC 9110's example date is 784111777.
        assert_eq!(
            retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(Duration::from_secs(40))
        );
        assert_eq!(
            retry_after(
                "Sun, 06 Nov 1994 08:49:37 GMT",
                now + Duration::from_secs(100)
            ),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after("soon", now), None);
        assert_eq!(retry_after("-5", now), None);
    }

    #[test]
    fn no_budget_means_no_attempt() {
        let url = Url::parse("http://127.0.0.1:9/").unwrap();
        let mut relay = Relay::new(&url, Instant::now());
        let t = Token::parse("tok").unwrap();
        assert_eq!(
            relay.notify(&t),
            Answer::Unavailable("no time left within --timeout".into())
        );
        assert!(relay.agent.is_none());
    }
}
