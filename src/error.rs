//! Everything that stops a run before it can decide about a token. Each message is written once,
//! here; I/O causes are kept as sources. Outcomes of a run that did its job (a skip, a deferral,
//! a relay that failed) are not errors: see `run::Outcome`.

use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::exit;
use crate::privileges::Kept;
use crate::token::{FileProblem, TokenProblem, location};

#[derive(Debug)]
pub enum Error {
    /// clap's report, cut to one line.
    Usage(String),
    /// Neither TOKEN nor a token in --token-file.
    NoToken,
    /// A token given on the command line or in the token file (`at`) is not usable.
    Token {
        at: Option<(PathBuf, usize)>,
        problem: TokenProblem,
    },
    TokenFile {
        path: PathBuf,
        problem: FileProblem,
    },
    Url {
        url: String,
        problem: UrlProblem,
    },
    /// No --cache-dir, and no home directory to put the default one in.
    NoHome,
    /// The cache dir itself is not usable.
    CacheDir {
        path: PathBuf,
        problem: CacheDirProblem,
    },
    /// A file in the cache dir could not be used.
    Cache {
        path: PathBuf,
        source: io::Error,
    },
    /// Standard input failed while reading the message.
    Input(io::Error),
    /// The deferred sender got no usable token on its pipe.
    DeferredInput,
    /// Started with a way back to another user, which could not be given up.
    Privileges(Kept),
    WatchUrl {
        url: String,
        problem: WatchUrlProblem,
    },
    /// --watch without --password-file or --password-command.
    NoPassword,
    PasswordFile {
        path: PathBuf,
        problem: FileProblem,
    },
    /// The IMAP server said no to the login: trying again with the same secret cannot help.
    LoginRefused {
        url: String,
        said: String,
    },
    /// EXAMINE failed: no such mailbox, or not one this user may read.
    NoMailbox {
        url: String,
        said: String,
    },
    /// An imap:// server over a network that offers no STARTTLS.
    NoStartTls {
        url: String,
    },
    /// Another watcher watches the same mailbox with the same cache dir.
    WatchBusy {
        url: String,
    },
    /// The watcher could not set up its SIGTERM handling or its TLS.
    WatchSetup(String),
    /// --setup: the log (`from`: standard input or --log FILE) is not one to read.
    Log {
        from: String,
        problem: LogProblem,
    },
    /// --setup: the log could not be read.
    LogRead {
        path: Option<PathBuf>,
        source: io::Error,
    },
    /// --setup: the log has no token line at all.
    LogWithoutToken,
    /// --setup: a question without a terminal to ask it on.
    Unasked {
        what: &'static str,
        option: &'static str,
    },
    /// --setup: an address that is not one.
    Address(String),
    /// --setup: the address given is not the one of the account in the log.
    AddressNotInLog {
        address: String,
        log: String,
    },
    /// --setup: a server of the log outside the address's domain, not trusted.
    Untrusted {
        host: String,
        domain: String,
        declined: bool,
    },
    /// --setup: no server of the log took the connection; the last one's line.
    NoServer {
        tried: usize,
        last: String,
    },
    /// --setup: the check of the chosen server failed: its exit status and line.
    Checked(u8, String),
    /// --setup: writing one of the watcher's files.
    SetupWrite {
        path: PathBuf,
        source: io::Error,
    },
    /// --setup: `systemctl --user` failed once the user's systemd answered.
    Systemd {
        command: String,
        said: String,
    },
    /// --setup: the terminal failed while asking.
    Terminal(io::Error),
}

/// Why a log is not one to read (see `applog::Problem`).
pub use crate::applog::Problem as LogProblem;

#[derive(Debug, PartialEq, Eq)]
pub enum WatchUrlProblem {
    Scheme,
    NoUser,
    Password,
    NoHost,
    Port,
    Encoding,
}

#[derive(Debug, PartialEq, Eq)]
pub enum UrlProblem {
    Invalid,
    NoHost,
    PlainHttp,
    Scheme,
}

#[derive(Debug)]
pub enum CacheDirProblem {
    Io(io::Error),
    Symlink,
    NotDir,
    WorldWritable,
}

impl Error {
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) | Error::NoToken | Error::Token { .. } | Error::DeferredInput => {
                exit::USAGE
            }
            Error::TokenFile { .. }
            | Error::Url { .. }
            | Error::NoHome
            | Error::CacheDir { .. }
            | Error::Cache { .. } => exit::CONFIG,
            Error::Input(_) => exit::IOERR,
            Error::NoPassword => exit::USAGE,
            Error::WatchUrl { .. } | Error::PasswordFile { .. } | Error::NoMailbox { .. } => {
                exit::CONFIG
            }
            Error::LoginRefused { .. } => exit::NOPERM,
            Error::NoStartTls { .. } | Error::WatchBusy { .. } | Error::WatchSetup(_) => {
                exit::UNAVAILABLE
            }
            Error::Privileges(_) => exit::NOPERM,
            Error::Log { .. }
            | Error::LogWithoutToken
            | Error::Unasked { .. }
            | Error::Address(_)
            | Error::AddressNotInLog { .. }
            | Error::Untrusted {
                declined: false, ..
            } => exit::USAGE,
            Error::Untrusted { declined: true, .. } => exit::NOPERM,
            Error::LogRead { path: None, .. } => exit::IOERR,
            Error::LogRead { path: Some(_), .. } | Error::SetupWrite { .. } => exit::CONFIG,
            Error::NoServer { .. } | Error::Systemd { .. } => exit::UNAVAILABLE,
            Error::Checked(code, _) => *code,
            Error::Terminal(_) => exit::IOERR,
        }
    }
}

impl fmt::Display for Error {
    /// One line, without the program-name prefix.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(line) => f.write_str(line),
            Error::NoToken => {
                f.write_str("no token given: pass TOKEN or --token-file PATH (see --help)")
            }
            Error::Token { at, problem } => write!(f, "{}{problem}", location(at)),
            Error::TokenFile { path, problem } => {
                write!(f, "--token-file {}: ", path.display())?;
                file_problem(f, path, problem, "a token file")
            }
            Error::PasswordFile { path, problem } => {
                write!(f, "--password-file {}: ", path.display())?;
                file_problem(f, path, problem, "a password file")
            }
            Error::Url { url, problem } => {
                let why = match problem {
                    UrlProblem::Invalid => "not a valid URL",
                    UrlProblem::NoHost => "no host",
                    UrlProblem::PlainHttp => {
                        "plain http is only allowed to a loopback host; use https://"
                    }
                    UrlProblem::Scheme => "only https:// URLs are supported",
                };
                write!(f, "--url {url}: {why}")
            }
            Error::NoHome => {
                f.write_str("no home directory to keep the cache dir in; give --cache-dir")
            }
            Error::CacheDir { path, problem } => {
                let why = match problem {
                    CacheDirProblem::Io(e) => e.to_string(),
                    CacheDirProblem::Symlink => "is a symbolic link".into(),
                    CacheDirProblem::NotDir => "not a directory".into(),
                    CacheDirProblem::WorldWritable => "writable by every user".into(),
                };
                write!(f, "{}", cache_dir_line(path, &why))
            }
            Error::Cache { path, source } => {
                write!(f, "{}", cache_dir_line(path, &source.to_string()))
            }
            Error::Input(e) => write!(f, "reading the message from standard input: {e}"),
            Error::DeferredInput => f.write_str("--send-deferred: no token on standard input"),
            Error::WatchUrl { url, problem } => {
                let why = match problem {
                    WatchUrlProblem::Scheme => "use imaps://USER@HOST[:PORT][/MAILBOX] or imap://…",
                    WatchUrlProblem::NoUser => "no user: imaps://USER@HOST",
                    WatchUrlProblem::Password => {
                        "a password in the URL; give it with --password-file or --password-command"
                    }
                    WatchUrlProblem::NoHost => "no host",
                    WatchUrlProblem::Port => "not a valid port",
                    WatchUrlProblem::Encoding => "a bad %-escape",
                };
                write!(f, "--watch {url}: {why}")
            }
            Error::NoPassword => {
                f.write_str("--watch needs --password-file PATH or --password-command CMD")
            }
            Error::LoginRefused { url, said } => write!(
                f,
                "{url}: the server refused the login: {said}; fix the password, then start again"
            ),
            Error::NoMailbox { url, said } => {
                write!(f, "{url}: the server cannot open the mailbox: {said}")
            }
            Error::NoStartTls { url } => write!(
                f,
                "{url}: the server offers no STARTTLS, and the password must not travel in clear; \
                 use imaps://"
            ),
            Error::WatchBusy { url } => write!(
                f,
                "{url}: another deltapush-mda --watch watches this mailbox with this cache dir"
            ),
            Error::WatchSetup(why) => write!(f, "--watch: {why}"),
            Error::Privileges(Kept { kind, ids, source }) => write!(
                f,
                "started with real {kind} {}, effective {}, saved {}, and could not make them all \
                 {}: {source}; nothing was read or sent",
                ids.real, ids.effective, ids.saved, ids.effective
            ),
            Error::Log { from, problem } => match problem {
                LogProblem::TooBig => write!(
                    f,
                    "{from}: more than {} MiB, not a log from Delta Chat's View Log",
                    crate::applog::MAX_LOG >> 20
                ),
                LogProblem::LineTooLong { line } => write!(
                    f,
                    "{from}, line {line}: longer than {} KiB, not a log from Delta Chat's View Log",
                    crate::applog::MAX_LINE >> 10
                ),
                LogProblem::NotText { line } => write!(
                    f,
                    "{from}, line {line}: not text, not a log from Delta Chat's View Log"
                ),
                LogProblem::Token { line, problem } => write!(f, "{from}, line {line}: {problem}"),
            },
            Error::LogRead { path: None, source } => {
                write!(f, "reading the log from standard input: {source}")
            }
            Error::LogRead {
                path: Some(path),
                source,
            } => write!(f, "--log {}: {source}", path.display()),
            Error::LogWithoutToken => f.write_str(
                "the log has no push-token= or notify-token= line: paste the log of the phone \
                 from its top (Delta Chat Desktop has no push token)",
            ),
            Error::Unasked { what, option } => {
                write!(f, "no terminal to ask for {what}: give {option}")
            }
            Error::Address(text) => write!(f, "{text}: not an email address"),
            Error::AddressNotInLog { address, log } => write!(
                f,
                "{address} is not the account of the log ({log}): paste the log of that account"
            ),
            Error::Untrusted {
                host,
                domain,
                declined: false,
            } => write!(
                f,
                "the log's server {host} is not in {domain}, your address's domain: to send \
                 the password there, give --trust-server {host}; nothing written"
            ),
            Error::Untrusted {
                host,
                declined: true,
                ..
            } => write!(f, "the password does not go to {host}; nothing written"),
            Error::NoServer { tried: 1, last } => write!(f, "{last}; nothing written"),
            Error::NoServer { tried, last } => write!(
                f,
                "none of the {tried} servers in the log answered, the last: {last}; nothing written"
            ),
            Error::Checked(_, line) => write!(f, "{line}; nothing written"),
            Error::SetupWrite { path, source } => write!(f, "writing {}: {source}", path.display()),
            Error::Systemd { command, said } => write!(f, "{command}: {said}"),
            Error::Terminal(e) => write!(f, "the terminal: {e}; nothing written"),
        }
    }
}

/// Why a token or password file cannot be used.
fn file_problem(
    f: &mut fmt::Formatter<'_>,
    path: &std::path::Path,
    problem: &FileProblem,
    what: &str,
) -> fmt::Result {
    match problem {
        FileProblem::Io(e) => write!(f, "{e}"),
        FileProblem::NotRegular => f.write_str("not a regular file"),
        FileProblem::WorldWritable => write!(
            f,
            "writable by every user; run: chmod o-w {}",
            path.display()
        ),
        FileProblem::WorldReadable => write!(
            f,
            "readable by every user; run: chmod o-rw {}",
            path.display()
        ),
        FileProblem::TooBig(len) => write!(f, "{len} bytes, too big for {what}"),
    }
}

/// The one wording for anything wrong in or with the cache dir.
pub fn cache_dir_line(path: &std::path::Path, why: &str) -> String {
    format!(
        "cache dir {}: {why}; fix it or give another with --cache-dir",
        path.display()
    )
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::TokenFile {
                problem: FileProblem::Io(e),
                ..
            }
            | Error::PasswordFile {
                problem: FileProblem::Io(e),
                ..
            }
            | Error::CacheDir {
                problem: CacheDirProblem::Io(e),
                ..
            }
            | Error::Cache { source: e, .. }
            | Error::Input(e)
            | Error::Privileges(Kept { source: e, .. })
            | Error::LogRead { source: e, .. }
            | Error::SetupWrite { source: e, .. }
            | Error::Terminal(e) => Some(e),
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn codes_by_kind_and_causes_kept() {
        let io = || io::Error::from(io::ErrorKind::PermissionDenied);
        assert_eq!(Error::NoToken.exit_code(), exit::USAGE);
        let cache = Error::Cache {
            path: "/c/x.lock".into(),
            source: io(),
        };
        assert_eq!(cache.exit_code(), exit::CONFIG);
        assert_eq!(
            cache.to_string(),
            "cache dir /c/x.lock: permission denied; fix it or give another with --cache-dir"
        );
        assert!(cache.source().is_some());
        assert_eq!(Error::Input(io()).exit_code(), exit::IOERR);
        assert!(Error::NoHome.source().is_none());
    }
}
