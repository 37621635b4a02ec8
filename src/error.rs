//! The one error type, and the exit code each kind of failure maps to (sysexits.h).

use std::fmt;
use std::io;
use std::path::PathBuf;

/// EX_USAGE: the command line or a token is wrong.
pub const EX_USAGE: u8 = 64;
/// EX_UNAVAILABLE: `--check` could not reach the relay.
pub const EX_UNAVAILABLE: u8 = 69;
/// EX_IOERR: standard input could not be read.
pub const EX_IOERR: u8 = 74;
/// EX_TEMPFAIL: a token could not be notified and `--tempfail` asks the caller to retry.
pub const EX_TEMPFAIL: u8 = 75;
/// EX_CONFIG: the setup (cache dir, URL, token file) is wrong.
pub const EX_CONFIG: u8 = 78;

#[derive(Debug)]
pub enum Error {
    /// A bad option or token; the text names which.
    Usage(String),
    /// A setup problem the user must fix; the text names the flag or path.
    Config(String),
    /// A file in the cache dir could not be used.
    Cache { path: PathBuf, source: io::Error },
    /// Standard input failed while reading the message.
    Input(io::Error),
    /// Some tokens could not be notified. Each failure is one line; delivery of the mail
    /// itself must not fail because the relay is down, so this is exit 0 unless `--tempfail`.
    NotNotified {
        failures: Vec<String>,
        tempfail: bool,
    },
    /// `--check` found problems (already reported one per line); `code` is the first one's.
    CheckFailed { failed: usize, code: u8 },
}

impl Error {
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) => EX_USAGE,
            Error::Config(_) | Error::Cache { .. } => EX_CONFIG,
            Error::Input(_) => EX_IOERR,
            Error::NotNotified { tempfail: true, .. } => EX_TEMPFAIL,
            Error::NotNotified {
                tempfail: false, ..
            } => 0,
            Error::CheckFailed { code, .. } => *code,
        }
    }
}

impl fmt::Display for Error {
    /// One line per failure, without the program-name prefix (the caller adds it to each line).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(msg) | Error::Config(msg) => f.write_str(msg),
            Error::Cache { path, source } => write!(
                f,
                "cache dir {}: {}; fix it or give another with --cache-dir",
                path.display(),
                source
            ),
            Error::Input(e) => write!(f, "reading the message from standard input: {e}"),
            Error::NotNotified { failures, .. } => f.write_str(&failures.join("\n")),
            Error::CheckFailed { failed: 1, .. } => f.write_str("1 check failed"),
            Error::CheckFailed { failed, .. } => write!(f, "{failed} checks failed"),
        }
    }
}

impl std::error::Error for Error {}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_failures_fail_the_delivery_only_when_asked() {
        let failures = vec!["token a…: x".to_string(), "token b…: y".to_string()];
        let quiet = Error::NotNotified {
            failures: failures.clone(),
            tempfail: false,
        };
        let loud = Error::NotNotified {
            failures,
            tempfail: true,
        };
        assert_eq!((quiet.exit_code(), loud.exit_code()), (0, EX_TEMPFAIL));
        assert_eq!(loud.to_string(), "token a…: x\ntoken b…: y");
    }

    #[test]
    fn codes_by_kind() {
        let io = || io::Error::from(io::ErrorKind::PermissionDenied);
        assert_eq!(Error::Usage(String::new()).exit_code(), EX_USAGE);
        assert_eq!(Error::Config(String::new()).exit_code(), EX_CONFIG);
        let cache = Error::Cache {
            path: "/c/x.lock".into(),
            source: io(),
        };
        assert_eq!(cache.exit_code(), EX_CONFIG);
        assert_eq!(
            cache.to_string(),
            "cache dir /c/x.lock: permission denied; fix it or give another with --cache-dir"
        );
        assert_eq!(Error::Input(io()).exit_code(), EX_IOERR);
        let check = Error::CheckFailed {
            failed: 2,
            code: 69,
        };
        assert_eq!(
            (check.exit_code(), check.to_string()),
            (69, "2 checks failed".into())
        );
    }
}
