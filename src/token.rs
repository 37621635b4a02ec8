//! Notify tokens: validation, the token file, and the only form in which a token is ever shown.

use std::fmt;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use crate::error::{Error, Result};

/// The relay has no documented limit; 4096 bytes is four times the longest token seen (openpgp, ~920).
pub const MAX_LEN: usize = 4096;
/// A token file bigger than this is not a token file.
const MAX_FILE_LEN: u64 = 1024 * 1024;
/// How much of a token may appear in output: enough to tell tokens apart, too little to use one.
const SHOWN_CHARS: usize = 8;

/// A notify token: opaque, visible ASCII, 1 to 4096 bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    pub fn parse(s: &str) -> Result<Token, String> {
        if s.is_empty() {
            return Err("token is empty".to_string());
        }
        if s.len() > MAX_LEN {
            return Err(format!(
                "token {} is {} bytes long, more than {MAX_LEN}; copy it again from Delta Chat",
                Shown(s),
                s.len()
            ));
        }
        if let Some(pos) = s.bytes().position(|b| !b.is_ascii_graphic()) {
            return Err(format!(
                "token {} has a character that is not visible ASCII at byte {}; copy it again from Delta Chat",
                Shown(s),
                pos + 1
            ));
        }
        Ok(Token(s.to_string()))
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// Debug and Display show only the prefix, so a token cannot leak through `{:?}` in a panic or log.
impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Shown(&self.0).fmt(f)
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({})", Shown(&self.0))
    }
}

/// The first characters of a possibly invalid token, with anything unprintable escaped.
pub struct Shown<'a>(pub &'a str);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars().take(SHOWN_CHARS) {
            if c.is_ascii_graphic() {
                write!(f, "{c}")?;
            } else {
                write!(f, "{}", c.escape_default())?;
            }
        }
        f.write_str("…")
    }
}

/// Merges the command-line tokens and those of the token file, in order, each once.
pub fn collect(args: &[String], file: Option<&Path>) -> Result<Vec<Token>> {
    let mut tokens: Vec<Token> = Vec::new();
    let mut push = |t: Token| {
        if !tokens.contains(&t) {
            tokens.push(t);
        }
    };
    for arg in args {
        push(Token::parse(arg).map_err(Error::Usage)?);
    }
    if let Some(path) = file {
        for t in read_file(path)? {
            push(t);
        }
    }
    if tokens.is_empty() {
        return Err(Error::Usage(
            "no token given: pass TOKEN or --token-file PATH (see --help)".to_string(),
        ));
    }
    Ok(tokens)
}

/// Reads a token file: one token per line, blank lines and `#` comments ignored.
pub fn read_file(path: &Path) -> Result<Vec<Token>> {
    let shown = path.display();
    let config = |what: String| Error::Config(format!("--token-file {shown}: {what}"));
    // O_NONBLOCK so that a FIFO put in place of the file cannot hang the open; it is refused below.
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| config(e.to_string()))?;
    let meta = file.metadata().map_err(|e| config(e.to_string()))?;
    if !meta.is_file() {
        return Err(config("not a regular file".to_string()));
    }
    // Like ssh with authorized_keys: anyone who can write the file could redirect the pushes.
    if meta.mode() & 0o002 != 0 {
        return Err(config(format!(
            "writable by every user; run: chmod o-w {shown}"
        )));
    }
    if meta.len() > MAX_FILE_LEN {
        return Err(config(format!(
            "{} bytes, too big for a token file",
            meta.len()
        )));
    }
    let mut text = String::new();
    file.take(MAX_FILE_LEN)
        .read_to_string(&mut text)
        .map_err(|e| config(e.to_string()))?;
    let mut tokens = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let token =
            Token::parse(line).map_err(|e| Error::Usage(format!("{shown}:{}: {e}", n + 1)))?;
        tokens.push(token);
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const OPENPGP: &str = "openpgp:wcFMA1a2b3c4d5e6f7/g+h8i9j0k==";

    #[test]
    fn accepts_every_known_token_shape() {
        for t in [
            OPENPGP,
            "fcm-chat.delta:abc_DEF-123",
            "sandbox:0123456789abcdef",
            "webpush:https://push.example/x",
            &"a".repeat(64),
            &"x".repeat(MAX_LEN),
        ] {
            assert!(Token::parse(t).is_ok(), "{t}");
        }
    }

    #[test]
    fn refuses_empty_long_and_invisible() {
        assert_eq!(Token::parse("").unwrap_err(), "token is empty");
        let long = "y".repeat(MAX_LEN + 1);
        assert!(Token::parse(&long).unwrap_err().contains("4097 bytes"));
        for bad in ["a b", "a\tb", "a\nb", "ab\u{7f}", "tökén", "a\0b"] {
            assert!(Token::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn shows_only_an_escaped_prefix() {
        let t = Token::parse(OPENPGP).unwrap();
        assert_eq!(t.to_string(), "openpgp:…");
        assert_eq!(format!("{t:?}"), "Token(openpgp:…)");
        assert_eq!(Shown("a\u{1b}[31mbcdefgh").to_string(), "a\\u{1b}[31mbc…");
        let err = Token::parse("secret12 with a space").unwrap_err();
        assert!(err.starts_with("token secret12… has"), "{err}");
        assert!(!err.contains("with a space"));
    }

    #[test]
    fn collect_merges_and_dedups_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        let mut f = fs::File::create(&path).unwrap();
        writeln!(f, "# phone\n\n  tokB  \r\ntokA\n#tokC\ntokB").unwrap();
        let args = vec!["tokA".to_string(), "tokA".to_string()];
        let got: Vec<String> = collect(&args, Some(&path))
            .unwrap()
            .iter()
            .map(|t| String::from_utf8(t.as_bytes().to_vec()).unwrap())
            .collect();
        assert_eq!(got, ["tokA", "tokB"]);
    }

    #[test]
    fn no_token_is_a_usage_error() {
        assert!(matches!(collect(&[], None), Err(Error::Usage(_))));
    }

    #[test]
    fn bad_line_in_file_names_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        fs::write(&path, "good\nbad token\n").unwrap();
        let err = read_file(&path).unwrap_err().to_string();
        assert!(err.ends_with(":2: token bad toke… has a character that is not visible ASCII at byte 4; copy it again from Delta Chat"), "{err}");
    }

    #[test]
    fn refuses_directory_fifo_and_world_writable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let err = read_file(dir.path()).unwrap_err();
        assert!(matches!(err, Error::Config(_)), "{err}");

        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let err = read_file(&fifo).unwrap_err().to_string();
        assert!(err.ends_with("not a regular file"), "{err}");

        let open = dir.path().join("open");
        fs::write(&open, "tok\n").unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o666)).unwrap();
        let err = read_file(&open).unwrap_err().to_string();
        assert!(err.contains("writable by every user"), "{err}");

        let err = read_file(&dir.path().join("missing")).unwrap_err();
        assert!(matches!(err, Error::Config(_)));
    }
}
