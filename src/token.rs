//! Notify tokens: what a person pastes, validation, the token file, and the only form in which a
//! token is ever shown: its kind and a fingerprint.

use std::fmt;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The relay has no documented limit; 4096 bytes is four times the longest token seen (openpgp, ~920).
pub const MAX_LEN: usize = 4096;
/// A token file bigger than this is not a token file.
const MAX_FILE_LEN: u64 = 1024 * 1024;
/// Hex digits of the SHA-256 shown: enough to tell a user's phones apart, useless to anyone else.
const FINGERPRINT_LEN: usize = 8;

/// A notify token: opaque, visible ASCII, 1 to 4096 bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    value: String,
    /// SHA-256 in hex: the token state's file name and, cut short, the fingerprint.
    hash: String,
}

impl Token {
    /// Takes a token as pasted: the bare value, or a `push-token=…` / `notify-token=…` line of
    /// Delta Chat's log.
    pub fn parse(text: &str) -> Result<Token, TokenProblem> {
        let text = text.trim_matches(|c: char| c.is_ascii_whitespace());
        let (value, platform) = match text.split_once('=').map(|(k, v)| (k.trim_end(), v)) {
            Some(("push-token", v)) => (v.trim(), Some(Platform::Android)),
            Some(("notify-token", v)) => (v.trim(), Some(Platform::Ios)),
            _ => (text, None),
        };
        match (value, platform) {
            ("" | "<empty>", Some(p)) | ("<unset>", Some(p)) => {
                return Err(TokenProblem::NoPushToken(p));
            }
            ("<empty>", None) => return Err(TokenProblem::NoPushToken(Platform::Android)),
            ("<unset>", None) => return Err(TokenProblem::NoPushToken(Platform::Ios)),
            ("", None) => return Err(TokenProblem::Empty),
            _ => {}
        }
        let name = Name::of(value.as_bytes());
        if value.len() > MAX_LEN {
            return Err(TokenProblem::TooLong {
                name,
                len: value.len(),
            });
        }
        if let Some(pos) = value.bytes().position(|b| !b.is_ascii_graphic()) {
            return Err(TokenProblem::Invisible { name, at: pos + 1 });
        }
        Ok(Token {
            value: value.to_string(),
            hash: hex_sha256(value.as_bytes()),
        })
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.value.as_bytes()
    }

    pub fn as_str(&self) -> &str {
        &self.value
    }

    /// The SHA-256 of the token in hex: never the token itself, so it can name a file.
    pub fn hash(&self) -> &str {
        &self.hash
    }
}

/// Display and Debug show only the kind and fingerprint, so a token cannot leak through `{:?}`.
impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}#{}",
            kind(self.value.as_bytes()),
            &self.hash[..FINGERPRINT_LEN]
        )
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({self})")
    }
}

/// The shown name of text that may not be a valid token, e.g. `webpush#0b71e4aa`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name(String);

impl Name {
    pub fn of(bytes: &[u8]) -> Name {
        Name(format!(
            "{}#{}",
            kind(bytes),
            &hex_sha256(bytes)[..FINGERPRINT_LEN]
        ))
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which phone said it has no token, for the one line that says why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    Android,
    Ios,
}

/// The kind of a token, from the forms the relay takes (chatmail/notifiers).
fn kind(token: &[u8]) -> &'static str {
    const PREFIXES: [(&[u8], &str); 5] = [
        (b"fcm-", "fcm"),
        (b"sandbox:", "sandbox"),
        (b"ubports-", "ubports"),
        (b"webpush:", "webpush"),
        (b"openpgp:", "openpgp"),
    ];
    for (prefix, kind) in PREFIXES {
        if token.starts_with(prefix) {
            return kind;
        }
    }
    // An APNs device token is 32 bytes in hex.
    if token.len() >= 32 && token.iter().all(u8::is_ascii_hexdigit) {
        return "apns";
    }
    "token"
}

fn hex_sha256(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// Why a token is not usable.
#[derive(Debug, PartialEq, Eq)]
pub enum TokenProblem {
    Empty,
    TooLong { name: Name, len: usize },
    Invisible { name: Name, at: usize },
    NoPushToken(Platform),
}

impl fmt::Display for TokenProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenProblem::Empty => f.write_str("token is empty"),
            TokenProblem::TooLong { name, len } => write!(
                f,
                "token {name} is {len} bytes long, more than {}; copy it again from Delta Chat",
                crate::token::MAX_LEN
            ),
            TokenProblem::Invisible { name, at } => write!(
                f,
                "token {name} has a character that is not visible ASCII at byte {at}; \
                 copy it again from Delta Chat"
            ),
            TokenProblem::NoPushToken(Platform::Android) => f.write_str(
                "this phone has no push token (push-token=<empty>): it has no Google Play \
                 services, so nothing can wake Delta Chat on it",
            ),
            TokenProblem::NoPushToken(Platform::Ios) => f.write_str(
                "this phone has no push token (notify-token=<unset>): notifications are off for \
                 Delta Chat; turn them on, then copy the token again from View Log",
            ),
        }
    }
}

/// Merges tokens in order, each once.
pub fn dedup(tokens: impl IntoIterator<Item = Token>) -> Vec<Token> {
    let mut out: Vec<Token> = Vec::new();
    for t in tokens {
        if !out.contains(&t) {
            out.push(t);
        }
    }
    out
}

/// Why a token file gave no tokens.
#[derive(Debug)]
pub enum ReadError {
    File(FileProblem),
    /// The token on this line (counted from 1) is not usable.
    Line(usize, TokenProblem),
}

/// Reads a token file: one token per line, blank lines and `#` comments ignored.
pub fn read_file(path: &Path) -> Result<Vec<Token>, ReadError> {
    let text = read_checked(path, false).map_err(ReadError::File)?;
    let mut tokens = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let token = Token::parse(line).map_err(|problem| ReadError::Line(n + 1, problem))?;
        tokens.push(token);
    }
    Ok(tokens)
}

/// Reads a small file that only its owner should control: a token file, or with `secret` (a
/// password file) one that only its owner may read too.
pub fn read_checked(path: &Path, secret: bool) -> Result<String, FileProblem> {
    // O_NONBLOCK so that a FIFO put in place of the file cannot hang the open; it is refused below.
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(FileProblem::Io)?;
    let meta = file.metadata().map_err(FileProblem::Io)?;
    if !meta.is_file() {
        return Err(FileProblem::NotRegular);
    }
    // Like ssh with authorized_keys: anyone who can write the file could redirect the pushes.
    if meta.mode() & 0o002 != 0 {
        return Err(FileProblem::WorldWritable);
    }
    // Like ssh with a private key.
    if secret && meta.mode() & 0o004 != 0 {
        return Err(FileProblem::WorldReadable);
    }
    if meta.len() > MAX_FILE_LEN {
        return Err(FileProblem::TooBig(meta.len()));
    }
    let mut text = String::new();
    file.take(MAX_FILE_LEN)
        .read_to_string(&mut text)
        .map_err(FileProblem::Io)?;
    Ok(text)
}

/// Why a token file or a password file cannot be used.
#[derive(Debug)]
pub enum FileProblem {
    Io(std::io::Error),
    NotRegular,
    WorldWritable,
    WorldReadable,
    TooBig(u64),
}

/// Where a token came from, for error lines: `PATH:LINE: `.
pub fn location(at: &Option<(PathBuf, usize)>) -> String {
    match at {
        Some((path, line)) => format!("{}:{line}: ", path.display()),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPENPGP: &str = "openpgp:wcFMA1a2b3c4d5e6f7/g+h8i9j0k==";

    #[test]
    fn accepts_every_known_token_shape() {
        for (t, kind) in [
            (OPENPGP, "openpgp"),
            ("fcm-chat.delta:abc_DEF-123", "fcm"),
            ("sandbox:0123456789abcdef", "sandbox"),
            ("ubports-abc", "ubports"),
            ("webpush:https://push.example/x|key|auth", "webpush"),
            (&"a1".repeat(32), "apns"),
            (&"x".repeat(MAX_LEN), "token"),
        ] {
            let token = Token::parse(t).unwrap();
            assert_eq!(token.to_string(), format!("{kind}#{}", &token.hash()[..8]));
        }
    }

    #[test]
    fn log_lines_mean_their_value() {
        let bare = Token::parse("fcm-chat.delta:abc").unwrap();
        for pasted in [
            "push-token=fcm-chat.delta:abc",
            "  push-token= fcm-chat.delta:abc \r",
            "\tnotify-token=fcm-chat.delta:abc",
        ] {
            assert_eq!(Token::parse(pasted).unwrap(), bare, "{pasted:?}");
        }
    }

    #[test]
    fn a_phone_without_a_token_says_why() {
        for (text, platform) in [
            ("push-token=<empty>", Platform::Android),
            ("push-token=", Platform::Android),
            ("<empty>", Platform::Android),
            ("notify-token=<unset>", Platform::Ios),
            (" notify-token = ", Platform::Ios),
            ("<unset>", Platform::Ios),
        ] {
            assert_eq!(
                Token::parse(text),
                Err(TokenProblem::NoPushToken(platform)),
                "{text:?}"
            );
        }
    }

    #[test]
    fn refuses_empty_long_and_invisible() {
        assert_eq!(Token::parse(""), Err(TokenProblem::Empty));
        assert_eq!(Token::parse("  "), Err(TokenProblem::Empty));
        let long = "y".repeat(MAX_LEN + 1);
        assert!(matches!(
            Token::parse(&long),
            Err(TokenProblem::TooLong { len: 4097, .. })
        ));
        for bad in ["a b", "a\tb", "ab\u{7f}", "tökén", "a\0b"] {
            assert!(Token::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn two_tokens_of_one_kind_are_told_apart_and_never_shown() {
        let a = Token::parse("fcm-chat.delta:SECRETaaaa").unwrap();
        let b = Token::parse("fcm-chat.delta:SECRETbbbb").unwrap();
        assert_ne!(a.to_string(), b.to_string());
        for shown in [a.to_string(), format!("{b:?}")] {
            assert!(
                !shown.contains("SECRET") && !shown.contains("chat"),
                "{shown}"
            );
        }
        let err = Token::parse("secret12 with a space")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("secret") && !err.contains("space"), "{err}");
    }

    #[test]
    fn dedup_keeps_order() {
        let t = |s| Token::parse(s).unwrap();
        let got = dedup([t("tokA"), t("tokB"), t("tokA"), t("push-token=tokB")]);
        assert_eq!(got, [t("tokA"), t("tokB")]);
    }
}
