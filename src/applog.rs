//! The log that Delta Chat shows (Settings → Advanced → View Log), read for what `--setup`
//! needs: the push tokens, whether the account is on a chatmail relay, and the IMAP servers the
//! app uses, in the order it tries them. Pure: lines in, findings out; the caller reads the
//! lines and bounds them.
//!
//! The forms, from the apps and the core (chatmail/core `get_info`, rendered `key=value` a line):
//! - Android (`LogViewFragment.java`): `push-token=fcm-chat.delta:…` or `push-token=<empty>`;
//!   iOS (`LogViewController.swift`): `notify-token=<hex>` or `notify-token=<unset>`.
//! - `is_chatmail=true|false`.
//! - the settings, `used_transport_settings=` since core 2.34 (several transports joined by `,`,
//!   each `ID: ADDR …`), `used_account_settings=` before:
//!   - 2.x (`ConfiguredLoginParam`): `ADDR imap:[HOST:PORT:SECURITY[:USER], …] [folder:"F"]
//!     smtp:[…] [provider:ID] cert_CHECKS`; the user follows each server up to 2.49, ADDR is
//!     `***@DOMAIN` since 2.50, `folder:` since 2.52, `provider:` until 2.56.
//!   - 1.x (`LoginParam`): `ADDR imap:USER:***:HOST:PORT[:Security][:cert_CHECKS][:AUTH] smtp:…`,
//!     the security capitalised (`Ssl`, `Starttls`, `Plain`, `Automatic`) when it is there.

use crate::token::{Platform, Token, TokenProblem};

/// Longer than any line the apps write about the account: a token is at most 4096 bytes.
pub const MAX_LINE: usize = 64 * 1024;
/// The whole log: the apps show a few MB at most (Android: the last 10000 logcat lines).
pub const MAX_LOG: u64 = 16 * 1024 * 1024;

/// What the log says.
#[derive(Debug, Default)]
pub struct Log {
    /// In the order found, each once.
    pub tokens: Vec<Token>,
    /// A token line that says this phone has no push token.
    pub without_push: Option<Platform>,
    pub chatmail: bool,
    /// The transports of the first settings line the log has.
    pub transports: Vec<Transport>,
    /// A settings line this version cannot read (cut short, or a form it does not know).
    pub unread_settings: Option<usize>,
}

/// One configured transport (account) of the app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transport {
    pub address: Address,
    /// In the app's order.
    pub imap: Vec<Candidate>,
    /// The folder the app watches, when not INBOX (core 2.52 and later).
    pub folder: Option<String>,
    /// The app was told to take any certificate of these servers; the watcher checks it.
    pub lax_certificates: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Whole(String),
    /// Core 2.50 and later hide the local part: `***@DOMAIN`.
    Domain(String),
}

impl Address {
    pub fn domain(&self) -> &str {
        match self {
            Address::Whole(a) => a.rsplit_once('@').map_or("", |(_, d)| d),
            Address::Domain(d) => d,
        }
    }
}

/// One IMAP server to try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub host: String,
    pub port: u16,
    pub security: Security,
    /// Shown up to core 2.49.
    pub user: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    Tls,
    Starttls,
    Plain,
}

/// A log that is not one to read.
#[derive(Debug, PartialEq, Eq)]
pub enum Problem {
    TooBig,
    LineTooLong { line: usize },
    NotText { line: usize },
    Token { line: usize, problem: TokenProblem },
}

/// Takes the log line by line.
#[derive(Debug, Default)]
pub struct Reader {
    log: Log,
    line: usize,
    read: u64,
}

impl Reader {
    pub fn new() -> Reader {
        Reader::default()
    }

    /// One line, without its line end; more than [`MAX_LINE`] bytes is one too long.
    pub fn line(&mut self, bytes: &[u8]) -> Result<(), Problem> {
        self.line += 1;
        let line = self.line;
        self.read += bytes.len() as u64 + 1;
        if self.read > MAX_LOG {
            return Err(Problem::TooBig);
        }
        if bytes.len() > MAX_LINE {
            return Err(Problem::LineTooLong { line });
        }
        let text = match std::str::from_utf8(bytes) {
            Ok(text) if !text.contains('\0') => text.trim_end_matches('\r'),
            _ => return Err(Problem::NotText { line }),
        };
        for key in ["push-token=", "notify-token="] {
            if let Some(at) = find_key(text, key) {
                match Token::parse(&text[at..]) {
                    Ok(token) if !self.log.tokens.contains(&token) => self.log.tokens.push(token),
                    Ok(_) => {}
                    Err(TokenProblem::NoPushToken(platform)) => {
                        self.log.without_push = Some(platform)
                    }
                    Err(problem) => return Err(Problem::Token { line, problem }),
                }
                return Ok(());
            }
        }
        if let Some(at) = find_key(text, "is_chatmail=") {
            self.log.chatmail |= text[at + "is_chatmail=".len()..].trim() == "true";
            return Ok(());
        }
        for key in ["used_transport_settings=", "used_account_settings="] {
            if let Some(at) = find_key(text, key) {
                if self.log.transports.is_empty() {
                    match transports(text[at + key.len()..].trim()) {
                        Some(found) => {
                            self.log.transports = found;
                            self.log.unread_settings = None;
                        }
                        None if text.ends_with("Not configured") => {}
                        None => self.log.unread_settings = Some(line),
                    }
                }
                return Ok(());
            }
        }
        Ok(())
    }

    /// The next log: its lines are counted from 1 again; the size limit is for all of them.
    pub fn next_source(&mut self) {
        self.line = 0;
    }

    pub fn finish(self) -> Log {
        self.log
    }
}

/// Where `key` starts as a key of its own: at the start of the line or after a character that
/// cannot be part of a key (a timestamp, a logcat prefix, a quote mark before it).
fn find_key(text: &str, key: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(pos) = text[from..].find(key) {
        let at = from + pos;
        let before = text[..at].chars().next_back();
        if before.is_none_or(|c| !(c.is_alphanumeric() || c == '-' || c == '_')) {
            return Some(at);
        }
        from = at + key.len();
    }
    None
}

/// The transports of a settings line; `None` when it does not read as one.
fn transports(mut rest: &str) -> Option<Vec<Transport>> {
    let mut found = Vec::new();
    loop {
        // The transport ID, since core 2.34.
        if let Some((id, after)) = rest.split_once(": ")
            && !id.is_empty()
            && id.bytes().all(|b| b.is_ascii_digit())
        {
            rest = after;
        }
        let (addr, after) = rest.split_once(" imap:")?;
        let address = match addr.strip_prefix("***@") {
            Some(domain) if is_domain(domain) => Address::Domain(domain.to_ascii_lowercase()),
            _ => match addr.rsplit_once('@') {
                Some((local, domain)) if !local.is_empty() && is_domain(domain) => {
                    Address::Whole(addr.to_string())
                }
                _ => return None,
            },
        };
        let imap;
        let mut folder = None;
        let mut lax = false;
        if let Some(list) = after.strip_prefix('[') {
            let (list, after) = list.split_once(']')?;
            imap = list
                .split(", ")
                .map(candidate)
                .collect::<Option<Vec<_>>>()?;
            rest = after;
            if let Some(quoted) = rest.strip_prefix(" folder:") {
                let (name, after) = debug_string(quoted)?;
                folder = Some(name).filter(|f| !f.eq_ignore_ascii_case("INBOX"));
                rest = after;
            }
        } else {
            let (spec, after) = after.split_once(' ').unwrap_or((after, ""));
            imap = legacy(spec)?;
            lax = spec.split(':').any(lax_checks);
            rest = after;
        }
        if imap.is_empty() {
            return None;
        }
        // A transport ends in its `cert_CHECKS`; the next one follows after a comma.
        let mut next = None;
        if let Some((_, after)) = rest.split_once(" cert_") {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            lax |= lax_checks(&format!("cert_{}", &after[..end]));
            next = after[end..].strip_prefix(',');
        }
        found.push(Transport {
            address,
            imap,
            folder,
            lax_certificates: lax,
        });
        match next {
            Some(n) => rest = n,
            None => break,
        }
    }
    Some(found)
}

/// The app takes any certificate of this account's servers (`ConfiguredCertificateChecks`,
/// `CertificateChecks` in 1.x: `cert_accept_invalid_certificates`, or `…2`).
fn lax_checks(word: &str) -> bool {
    word.starts_with("cert_accept_invalid_certificates")
}

/// `HOST:PORT:SECURITY` or, up to core 2.49, `HOST:PORT:SECURITY:USER`.
fn candidate(text: &str) -> Option<Candidate> {
    let mut parts = text.splitn(4, ':');
    let host = parts.next().filter(|h| is_host(h))?;
    let port = parts.next()?.parse().ok().filter(|&p| p != 0)?;
    let security = match parts.next()? {
        "tls" => Security::Tls,
        "starttls" => Security::Starttls,
        "plain" => Security::Plain,
        _ => return None,
    };
    Some(Candidate {
        host: host.to_string(),
        port,
        security,
        user: parts.next().filter(|u| !u.is_empty()).map(str::to_string),
    })
}

/// Core 1.x: `USER:PASSWORD:HOST:PORT[:Security][:cert_CHECKS][:AUTH]`. Without a security
/// (before 1.136), or with `Automatic`, the port tells.
fn legacy(spec: &str) -> Option<Vec<Candidate>> {
    let mut parts = spec.split(':');
    let user = parts.next()?;
    let _password = parts.next()?;
    let host = parts.next().filter(|h| is_host(h) && *h != "unset")?;
    let port: u16 = parts.next()?.parse().ok()?;
    let security = parts.find_map(|p| match p {
        "Ssl" => Some(Some(Security::Tls)),
        "Starttls" => Some(Some(Security::Starttls)),
        "Plain" => Some(Some(Security::Plain)),
        "Automatic" => Some(None),
        _ => None,
    });
    let user = Some(user)
        .filter(|u| !u.is_empty() && *u != "unset")
        .map(str::to_string);
    let one = |port, security| Candidate {
        host: host.to_string(),
        port,
        security,
        user: user.clone(),
    };
    Some(match (security.flatten(), port) {
        (Some(Security::Tls), 0) => vec![one(993, Security::Tls)],
        (Some(Security::Starttls), 0) => vec![one(143, Security::Starttls)],
        (Some(Security::Plain), 0) => vec![one(143, Security::Plain)],
        (Some(security), port) => vec![one(port, security)],
        (None, 0) => vec![one(993, Security::Tls), one(143, Security::Starttls)],
        (None, 143) => vec![one(143, Security::Starttls)],
        (None, port) => vec![one(port, Security::Tls)],
    })
}

/// A Rust `{:?}` string at the start of `text`, and what follows it.
fn debug_string(text: &str) -> Option<(String, &str)> {
    let mut chars = text.strip_prefix('"')?.char_indices();
    let mut out = String::new();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, &text[i + 2..])),
            '\\' => match chars.next()?.1 {
                c @ ('"' | '\\' | '\'') => out.push(c),
                // A folder name with a control character or an escaped Unicode: not one to watch.
                _ => return None,
            },
            c => out.push(c),
        }
    }
    None
}

fn is_domain(text: &str) -> bool {
    !text.is_empty() && is_host(text)
}

/// A host name or an IP address as the core prints it: nothing that could smuggle a URL part.
fn is_host(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 253
        && text
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<Log, Problem> {
        let mut r = Reader::new();
        for line in text.split('\n') {
            r.line(line.as_bytes())?;
        }
        Ok(r.finish())
    }

    fn tls(host: &str, port: u16) -> Candidate {
        Candidate {
            host: host.into(),
            port,
            security: Security::Tls,
            user: None,
        }
    }

    fn starttls(host: &str, port: u16) -> Candidate {
        Candidate {
            security: Security::Starttls,
            ..tls(host, port)
        }
    }

    fn with_user(c: Candidate, user: &str) -> Candidate {
        Candidate {
            user: Some(user.into()),
            ..c
        }
    }

    fn one(address: Address, imap: Vec<Candidate>) -> Vec<Transport> {
        vec![Transport {
            address,
            imap,
            folder: None,
            lax_certificates: false,
        }]
    }

    #[test]
    fn every_form_of_the_settings_line() {
        let domain = || Address::Domain("example.org".into());
        let whole = || Address::Whole("me@example.org".into());
        let both = vec![
            tls("imap.example.org", 993),
            starttls("imap.example.org", 143),
        ];
        let users = || {
            both.iter()
                .map(|c| with_user(c.clone(), "me@example.org"))
                .collect::<Vec<_>>()
        };
        for (line, want) in [
            // 2.57 and later
            (
                "used_transport_settings=1: ***@example.org imap:[imap.example.org:993:tls, \
                 imap.example.org:143:starttls] smtp:[smtp.example.org:465:tls] cert_automatic",
                one(domain(), both.clone()),
            ),
            // 2.50 to 2.56
            (
                "used_transport_settings=1: ***@example.org imap:[imap.example.org:993:tls, \
                 imap.example.org:143:starttls] smtp:[smtp.example.org:465:tls] provider:none \
                 cert_automatic",
                one(domain(), both.clone()),
            ),
            // 2.34 to 2.49
            (
                "used_transport_settings=1: me@example.org imap:[imap.example.org:993:tls:me@example.org, \
                 imap.example.org:143:starttls:me@example.org] smtp:[smtp.example.org:465:tls:me@example.org] \
                 provider:none cert_automatic",
                one(whole(), users()),
            ),
            // 2.0 to 2.33, and 1.148 to 1.159
            (
                "used_account_settings=me@example.org imap:[imap.example.org:993:tls:me@example.org, \
                 imap.example.org:143:starttls:me@example.org] smtp:[smtp.example.org:465:tls:me@example.org] \
                 provider:none cert_automatic",
                one(whole(), users()),
            ),
            // 1.142
            (
                "used_account_settings=me@example.org imap:me@example.org:***:imap.example.org:993:Ssl:AUTH_NORMAL \
                 smtp:me@example.org:***:smtp.example.org:465:Ssl:AUTH_NORMAL cert_automatic",
                one(
                    whole(),
                    vec![with_user(tls("imap.example.org", 993), "me@example.org")],
                ),
            ),
            // 1.136
            (
                "used_account_settings=me@example.org imap:me:***:imap.example.org:143:Starttls:cert_strict:AUTH_NORMAL \
                 smtp:me:***:smtp.example.org:587:Starttls:cert_strict:AUTH_NORMAL",
                one(
                    whole(),
                    vec![with_user(starttls("imap.example.org", 143), "me")],
                ),
            ),
            // 1.99: no security, the port tells
            (
                "used_account_settings=me@example.org imap:unset:***:imap.example.org:993:cert_automatic:AUTH_NORMAL \
                 smtp:unset:***:smtp.example.org:465:cert_automatic:AUTH_NORMAL",
                one(whole(), vec![tls("imap.example.org", 993)]),
            ),
        ] {
            assert_eq!(read(line).unwrap().transports, want, "{line}");
        }
    }

    #[test]
    fn several_transports_and_a_folder() {
        let log = read(
            "used_transport_settings=1: ***@example.org imap:[imap.example.org:993:tls] \
             folder:\"Delta \\\"Chat\\\"\" smtp:[smtp.example.org:465:tls, smtp.example.org:587:starttls] \
             cert_automatic,2: ***@example.net imap:[mail.example.net:993:tls] smtp:[] \
             cert_accept_invalid_certificates",
        )
        .unwrap();
        assert_eq!(
            log.transports,
            vec![
                Transport {
                    address: Address::Domain("example.org".into()),
                    imap: vec![tls("imap.example.org", 993)],
                    folder: Some("Delta \"Chat\"".into()),
                    lax_certificates: false,
                },
                Transport {
                    address: Address::Domain("example.net".into()),
                    imap: vec![tls("mail.example.net", 993)],
                    folder: None,
                    lax_certificates: true,
                },
            ]
        );
    }

    #[test]
    fn certificates_the_app_takes_unchecked() {
        for (line, lax) in [
            (
                "used_account_settings=me@example.org imap:me:***:imap.example.org:993:Ssl:\
                 cert_accept_invalid_certificates:AUTH_NORMAL smtp:me:***:h:465:Ssl:cert_strict:AUTH_NORMAL",
                true,
            ),
            (
                "used_account_settings=me@example.org imap:me:***:imap.example.org:993:Ssl:AUTH_NORMAL \
                 smtp:me:***:h:465:Ssl:AUTH_NORMAL cert_accept_invalid_certificates2",
                true,
            ),
            (
                "used_transport_settings=1: ***@example.org imap:[imap.example.org:993:tls] smtp:[] \
                 cert_strict",
                false,
            ),
        ] {
            assert_eq!(
                read(line).unwrap().transports[0].lax_certificates,
                lax,
                "{line}"
            );
        }
    }

    #[test]
    fn tokens_behind_prefixes_once_each() {
        let log = read(
            "push-token=fcm-chat.delta:abc\n\
             12-07 11:32:28.123  1234  5678 I DeltaChat: push-token=fcm-chat.delta:abc\r\n\
             [7 Dec 2026 at 11:32:28] notify-token=0123abcd\n\
             my-push-token=nope\n\
             is_chatmail=false",
        )
        .unwrap();
        let shown: Vec<String> = log.tokens.iter().map(|t| t.to_string()).collect();
        assert_eq!(shown.len(), 2);
        assert!(shown[0].starts_with("fcm#") && shown[1].starts_with("token#"));
        assert!(!log.chatmail);
        assert!(log.transports.is_empty() && log.unread_settings.is_none());
    }

    #[test]
    fn no_push_chatmail_and_unread_settings() {
        let log = read(
            "push-token=<empty>\nis_chatmail=true\nused_transport_settings=1: ***@example.org imap:[imap.exa",
        )
        .unwrap();
        assert_eq!(log.without_push, Some(Platform::Android));
        assert!(log.chatmail && log.tokens.is_empty());
        assert_eq!(log.unread_settings, Some(3));
        let log = read("notify-token=<unset>\nused_account_settings=Not configured").unwrap();
        assert_eq!(log.without_push, Some(Platform::Ios));
        assert_eq!(log.unread_settings, None);
    }

    #[test]
    fn hostile_lines() {
        assert!(matches!(
            read("x\npush-token=fcm-a\u{1b}[2Jb"),
            Err(Problem::Token {
                line: 2,
                problem: TokenProblem::Invisible { at: 6, .. }
            })
        ));
        assert_eq!(read("a\nb\0c").unwrap_err(), Problem::NotText { line: 2 });
        let mut r = Reader::new();
        assert_eq!(r.line(&[0xff, 0xfe]), Err(Problem::NotText { line: 1 }));
        assert_eq!(
            r.line(&vec![b'a'; MAX_LINE + 1]),
            Err(Problem::LineTooLong { line: 2 })
        );
        let mut r = Reader::new();
        let chunk = vec![b'a'; MAX_LINE];
        let problem = std::iter::repeat_with(|| r.line(&chunk)).find_map(Result::err);
        assert_eq!(problem, Some(Problem::TooBig));
        // A server that is not a host name cannot become part of a URL.
        for line in [
            "used_transport_settings=1: ***@example.org imap:[evil/x@host:993:tls] smtp:[] cert_automatic",
            "used_transport_settings=1: ***@example.org imap:[host:99999:tls] smtp:[] cert_automatic",
            "used_transport_settings=1: ***@exa mple.org imap:[host:993:tls] smtp:[] cert_automatic",
        ] {
            let log = read(line).unwrap();
            assert_eq!(
                (log.transports.len(), log.unread_settings),
                (0, Some(1)),
                "{line}"
            );
        }
    }
}
