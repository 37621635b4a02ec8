//! The account `--watch` watches: its URL, `imaps://USER@HOST[:PORT][/MAILBOX]` or `imap://…`
//! (RFC 5092, the parts a watcher needs), how it logs in, and where its password comes from.
//! Below both the configuration, which resolves it once, and the watcher, which uses it.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::cli::Auth;
use crate::error::{Error, Result, WatchUrlProblem};
use crate::relay::is_loopback;
use crate::token::read_checked;

/// What `--watch` watches, and how it logs in.
#[derive(Debug, Clone)]
pub struct Watch {
    pub url: WatchUrl,
    pub secret: Secret,
    pub auth: Auth,
}

/// Where the IMAP password (or OAuth token) comes from; read again at every login.
#[derive(Debug, Clone)]
pub enum Secret {
    File(PathBuf),
    Command(String),
}

/// Reads the first line of a password file, with the token file's checks and one more: only
/// its owner may read it.
pub fn read_password_file(path: &Path) -> Result<String> {
    let text = read_checked(path, true).map_err(|problem| Error::PasswordFile {
        path: path.to_path_buf(),
        problem,
    })?;
    Ok(text
        .lines()
        .next()
        .unwrap_or("")
        .trim_end_matches('\r')
        .to_string())
}

/// How the connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// imaps://: TLS from the first byte.
    Implicit,
    /// imap://: STARTTLS before the login; a server that offers none is refused, unless the
    /// host is this machine, where nothing travels over a network.
    StartTls { plain_allowed: bool },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchUrl {
    text: String,
    pub security: Security,
    /// Without the brackets of an IPv6 literal.
    pub host: String,
    pub port: u16,
    pub user: String,
    pub mailbox: String,
}

impl WatchUrl {
    pub fn parse(text: &str) -> Result<WatchUrl> {
        let bad = |problem| Error::WatchUrl {
            url: text.to_string(),
            problem,
        };
        let (implicit, rest) = if let Some(rest) = strip_prefix_ci(text, "imaps://") {
            (true, rest)
        } else if let Some(rest) = strip_prefix_ci(text, "imap://") {
            (false, rest)
        } else {
            return Err(bad(WatchUrlProblem::Scheme));
        };
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let Some((userinfo, hostport)) = authority.rsplit_once('@') else {
            return Err(bad(WatchUrlProblem::NoUser));
        };
        // A password in the URL would show in `ps` and in every log line naming the URL.
        if userinfo.contains(':') {
            return Err(bad(WatchUrlProblem::Password));
        }
        let user = percent_decode(userinfo).ok_or_else(|| bad(WatchUrlProblem::Encoding))?;
        if user.is_empty() {
            return Err(bad(WatchUrlProblem::NoUser));
        }
        let (host, port) = match hostport.strip_prefix('[') {
            Some(v6) => {
                let (host, after) = v6
                    .split_once(']')
                    .ok_or_else(|| bad(WatchUrlProblem::NoHost))?;
                (host, after.strip_prefix(':'))
            }
            None => match hostport.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (hostport, None),
            },
        };
        if host.is_empty() {
            return Err(bad(WatchUrlProblem::NoHost));
        }
        let port = match port {
            None => match implicit {
                true => 993,
                false => 143,
            },
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| bad(WatchUrlProblem::Port))?,
        };
        let mailbox = percent_decode(path.trim_end_matches('/'))
            .ok_or_else(|| bad(WatchUrlProblem::Encoding))?;
        let mailbox = match mailbox.is_empty() {
            true => "INBOX".to_string(),
            false => mailbox,
        };
        let security = match implicit {
            true => Security::Implicit,
            false => Security::StartTls {
                plain_allowed: is_loopback(host),
            },
        };
        Ok(WatchUrl {
            text: text.to_string(),
            security,
            host: host.to_string(),
            port,
            user,
            mailbox,
        })
    }

    /// What the watcher's state file is named after: one per account and mailbox.
    pub fn key(&self) -> String {
        format!(
            "{}\n{}\n{}\n{}",
            self.user, self.host, self.port, self.mailbox
        )
    }
}

impl fmt::Display for WatchUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn strip_prefix_ci<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_and_defaults() {
        let u = WatchUrl::parse("imaps://me%40example.org@mail.example.org").unwrap();
        assert_eq!(
            (u.user.as_str(), u.host.as_str(), u.port, u.mailbox.as_str()),
            ("me@example.org", "mail.example.org", 993, "INBOX")
        );
        assert_eq!(u.security, Security::Implicit);
        let u = WatchUrl::parse("imap://bob@127.0.0.1:1143/Chats%20too/").unwrap();
        assert_eq!((u.port, u.mailbox.as_str()), (1143, "Chats too"));
        assert_eq!(
            u.security,
            Security::StartTls {
                plain_allowed: true
            }
        );
        let u = WatchUrl::parse("IMAP://bob@[::1]:2/x").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 2));
        let u = WatchUrl::parse("imap://bob@example.org").unwrap();
        assert_eq!(
            (u.port, u.security),
            (
                143,
                Security::StartTls {
                    plain_allowed: false
                }
            )
        );
    }

    #[test]
    fn refusals() {
        for (url, problem) in [
            ("https://me@example.org", WatchUrlProblem::Scheme),
            ("imaps://example.org", WatchUrlProblem::NoUser),
            ("imaps://@example.org", WatchUrlProblem::NoUser),
            ("imaps://me:secret@example.org", WatchUrlProblem::Password),
            ("imaps://me@", WatchUrlProblem::NoHost),
            ("imaps://me@h:0", WatchUrlProblem::Port),
            ("imaps://me@h:99999", WatchUrlProblem::Port),
            ("imaps://me%4@h", WatchUrlProblem::Encoding),
        ] {
            match WatchUrl::parse(url) {
                Err(Error::WatchUrl { problem: p, .. }) => assert_eq!(p, problem, "{url}"),
                other => panic!("{url}: {other:?}"),
            }
        }
    }
}
