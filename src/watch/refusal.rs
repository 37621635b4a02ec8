//! What a server's NO or BAD means for the watcher: give up, come back soon, or come back slowly.
//!
//! The rule, and why:
//! - **Wrong credentials**: a NO to the login with `AUTHENTICATIONFAILED`, `AUTHORIZATIONFAILED`
//!   or `EXPIRED` (RFC 5530), or a bare NO with no code at all. Courier, Exchange and many older
//!   servers say a bare NO for a wrong password, so a bare NO counts as one. With a password file
//!   the next login would send the same secret and get the same answer, and repeated failures are
//!   what lock an account (fail2ban, Exchange's smart lockout): the watcher stops (exit 77). With
//!   `--password-command` the next login asks the command again, and an OAuth helper may well have
//!   a fresh token by then (Outlook answers an expired one with a bare `NO AUTHENTICATE failed.`):
//!   it retries at the login pace.
//! - **Not now**: `UNAVAILABLE`, `INUSE`, `LIMIT`, `SERVERBUG`, any BAD, and any text with a
//!   suggested backoff time (Exchange's throttling): the normal backoff, or the server's own time
//!   when it gave one.
//! - **Anything else** (`[ALERT]`, as in Gmail's `Too many simultaneous connections`,
//!   `CONTACTADMIN`, a code nobody knows): the server may mean either, so the login is tried
//!   again at the login pace, which no provider locks an account for.

use std::time::Duration;

/// How soon to try again after a refusal that is not the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// The connection backoff: 1 s doubling to 4 min.
    Backoff,
    /// A refused login: slow enough that no provider locks the account.
    Login,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The server says these credentials are wrong.
    Credentials,
    /// Try again at this pace, and no sooner than the server asked.
    Later { pace: Pace, asked: Option<Duration> },
}

/// The longest wait a server may ask for: beyond it, a typo or a hostile server would stop the
/// watcher for as long as it likes.
pub const MAX_ASKED: Duration = Duration::from_secs(16 * 60);

/// A refused LOGIN or AUTHENTICATE. `code` is the response code's name, `bad` a BAD.
pub fn login(code: Option<&str>, bad: bool, text: &str) -> Refusal {
    let asked = asked_wait(text);
    if bad || asked.is_some() || code.is_some_and(not_now) {
        return Refusal::Later {
            pace: Pace::Backoff,
            asked,
        };
    }
    match code {
        None | Some("AUTHENTICATIONFAILED" | "AUTHORIZATIONFAILED" | "EXPIRED") => {
            Refusal::Credentials
        }
        Some(_) => Refusal::Later {
            pace: Pace::Login,
            asked: None,
        },
    }
}

/// A refused EXAMINE: `true` when the mailbox is not there for this user (exit 78), `false`
/// when the server only cannot open it now.
pub fn no_mailbox(code: Option<&str>, bad: bool, text: &str) -> bool {
    !bad && asked_wait(text).is_none()
        && matches!(code, None | Some("NONEXISTENT" | "NOPERM" | "CANNOT"))
}

/// RFC 5530's codes for a failure that passes.
fn not_now(code: &str) -> bool {
    matches!(code, "UNAVAILABLE" | "INUSE" | "LIMIT" | "SERVERBUG")
}

/// Exchange's `Suggested Backoff Time: N milliseconds`, up to [`MAX_ASKED`].
pub fn asked_wait(text: &str) -> Option<Duration> {
    let lower = text.to_ascii_lowercase();
    let at = lower.find("backoff time")?;
    let rest = lower[at + "backoff time".len()..].trim_start_matches([':', ' ']);
    let digits: String = rest
        .chars()
        .take_while(char::is_ascii_digit)
        .take(12)
        .collect();
    let n: u64 = digits.parse().ok()?;
    let unit = rest[digits.len()..].trim_start();
    let wait = match unit.starts_with("ms") || unit.starts_with("milli") {
        true => Duration::from_millis(n),
        false => Duration::from_secs(n),
    };
    Some(wait.min(MAX_ASKED))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BACKOFF: Refusal = Refusal::Later {
        pace: Pace::Backoff,
        asked: None,
    };

    #[test]
    fn credentials() {
        for code in [
            None,
            Some("AUTHENTICATIONFAILED"),
            Some("AUTHORIZATIONFAILED"),
            Some("EXPIRED"),
        ] {
            assert_eq!(
                login(code, false, "Authentication failed."),
                Refusal::Credentials
            );
        }
    }

    #[test]
    fn not_now_and_bad() {
        for code in ["UNAVAILABLE", "INUSE", "LIMIT", "SERVERBUG"] {
            assert_eq!(login(Some(code), false, "try later"), BACKOFF);
        }
        assert_eq!(login(None, true, "Command Error. 12"), BACKOFF);
    }

    #[test]
    fn gmail_connection_limit_is_retried_slowly() {
        let gmail = "Too many simultaneous connections. (Failure)";
        assert_eq!(
            login(Some("ALERT"), false, gmail),
            Refusal::Later {
                pace: Pace::Login,
                asked: None
            }
        );
    }

    #[test]
    fn exchange_throttling() {
        let text = "Request is throttled. Suggested Backoff Time: 5000 milliseconds";
        assert_eq!(asked_wait(text), Some(Duration::from_secs(5)));
        assert_eq!(
            login(None, true, text),
            Refusal::Later {
                pace: Pace::Backoff,
                asked: Some(Duration::from_secs(5))
            }
        );
        assert!(!no_mailbox(None, false, text));
        assert_eq!(
            asked_wait("Suggested Backoff Time: 99999999999999 milliseconds"),
            Some(MAX_ASKED)
        );
        assert_eq!(asked_wait("backoff time: soon"), None);
    }

    #[test]
    fn examine() {
        assert!(no_mailbox(
            Some("NONEXISTENT"),
            false,
            "Mailbox doesn't exist: Nope"
        ));
        assert!(no_mailbox(None, false, "Mailbox does not exist"));
        assert!(!no_mailbox(None, true, "Request is throttled"));
        assert!(!no_mailbox(Some("UNAVAILABLE"), false, "Try again"));
    }
}
