//! The one resolved configuration: the command line and the environment become this once, and
//! every mode (a delivery, a dry run, `--check`, the deferred sender) starts from it.

use std::path::PathBuf;
use std::time::Duration;

use crate::account::{self, Secret, Watch, WatchUrl};
use crate::cli::{Auth, Cli, Waiting};
use crate::error::{Error, Result};
use crate::message::Rules;
use crate::relay::Url;
use crate::token::{self, Token};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Deliver,
    DryRun,
    Check,
    /// Decide, and hold the wakeup until the delivering process has stored the message.
    Hold,
    /// Wait for the delivering process to store the message, then wake what was held.
    WaitStored(Waiting),
    SendDeferred,
    Watch,
    /// Set up a watcher from the app's log (`--setup NAME`).
    Setup,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verbosity {
    Quiet,
    Normal,
    Verbose,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub mode: Mode,
    /// Given on the command line and in the token file, in order, each once. Empty only with
    /// --remember (the remembered ones are notified) and for the deferred sender.
    pub tokens: Vec<Token>,
    pub url: Url,
    pub interval: Duration,
    /// The network budget of the whole run.
    pub timeout: Duration,
    /// Absolute, so the deferred sender (started in `/`) finds the same one.
    pub cache_dir: PathBuf,
    pub remember: bool,
    pub rules: Rules,
    pub tempfail: bool,
    pub verbosity: Verbosity,
    /// Set with --watch, in every mode that takes it; with --setup, the mailbox asked for.
    pub watch: Option<Watch>,
    /// How many times faster than real time the watcher's own clock runs (tests only).
    pub watch_speedup: u32,
    /// Set in `Mode::Setup`.
    pub setup: Option<Setup>,
}

/// What `--setup` was given; every question it would ask has its option here.
#[derive(Debug, Clone)]
pub struct Setup {
    pub name: String,
    /// Empty: the log comes on standard input.
    pub logs: Vec<PathBuf>,
    pub address: Option<String>,
    /// Servers outside the address's domain that may have the password.
    pub trusted: Vec<String>,
    /// --password-file (absolute) or --password-command.
    pub secret: Option<Secret>,
    pub auth: Auth,
    /// --watch: this mailbox instead of the log's servers.
    pub url: Option<WatchUrl>,
    /// --url was given: the watcher is to use it too.
    pub relay_given: bool,
}

/// The default cache dir: `$XDG_CACHE_HOME/deltapush-mda`, else `~/.cache/deltapush-mda`.
fn default_cache_dir() -> Option<PathBuf> {
    directories::ProjectDirs::from("", "", "deltapush-mda").map(|d| d.cache_dir().to_path_buf())
}

/// The verbosity the command line asks for; also used when it does not parse.
pub fn verbosity(quiet: bool, verbose: bool) -> Verbosity {
    match (quiet, verbose) {
        (true, _) => Verbosity::Quiet,
        (_, true) => Verbosity::Verbose,
        _ => Verbosity::Normal,
    }
}

impl Config {
    pub fn resolve(cli: Cli) -> Result<Config> {
        let mode = match cli.wait_stored {
            _ if cli.check => Mode::Check,
            _ if cli.dry_run => Mode::DryRun,
            _ if cli.send_deferred => Mode::SendDeferred,
            _ if cli.hold => Mode::Hold,
            Some(waiting) => Mode::WaitStored(waiting),
            None if cli.setup.is_some() => Mode::Setup,
            None if cli.watch.is_some() => Mode::Watch,
            None => Mode::Deliver,
        };
        let secret = |file: Option<PathBuf>, command: Option<String>| -> Result<Option<Secret>> {
            Ok(match (file, command) {
                (Some(path), _) => {
                    // Checked now, so a wrong file stops the start and not the first login.
                    account::read_password_file(&path)?;
                    Some(Secret::File(path))
                }
                (None, Some(cmd)) => Some(Secret::Command(cmd)),
                (None, None) => None,
            })
        };
        let mut setup = None;
        if let Some(name) = cli.setup {
            if let Some(address) = &cli.address {
                crate::setup::check_address(address)?;
            }
            setup = Some(Setup {
                name,
                logs: cli.log,
                address: cli.address,
                trusted: cli.trust_server,
                // The unit reads the file from another directory.
                secret: secret(cli.password_file.clone(), cli.password_command.clone())?.map(|s| {
                    match s {
                        Secret::File(path) => {
                            Secret::File(std::path::absolute(&path).unwrap_or(path))
                        }
                        other => other,
                    }
                }),
                url: cli.watch.as_deref().map(WatchUrl::parse).transpose()?,
                auth: cli.auth,
                relay_given: cli.url != crate::cli::DEFAULT_URL,
            });
        }
        let watch = match &cli.watch {
            None => None,
            // The set-up builds its own, once it knows the server and the password.
            Some(_) if setup.is_some() => None,
            Some(url) => Some(Watch {
                url: WatchUrl::parse(url)?,
                secret: secret(cli.password_file, cli.password_command)?
                    .ok_or(Error::NoPassword)?,
                auth: cli.auth,
            }),
        };
        let mut tokens = Vec::new();
        for arg in &cli.tokens {
            tokens.push(Token::parse(arg).map_err(|problem| Error::Token { at: None, problem })?);
        }
        if let Some(path) = &cli.token_file {
            tokens.extend(token::read_file(path).map_err(|e| match e {
                token::ReadError::File(problem) => Error::TokenFile {
                    path: path.clone(),
                    problem,
                },
                token::ReadError::Line(line, problem) => Error::Token {
                    at: Some((path.clone(), line)),
                    problem,
                },
            })?);
        }
        let tokens = token::dedup(tokens);
        // The sender reads its token on a pipe; the waiter finds its tokens in the held record.
        // The set-up finds its tokens in the log.
        let needs_token = !matches!(mode, Mode::SendDeferred | Mode::WaitStored(_) | Mode::Setup);
        if tokens.is_empty() && !cli.remember && needs_token {
            return Err(Error::NoToken);
        }
        let url = Url::parse(&cli.url)?;
        let cache_dir = match cli.cache_dir {
            Some(dir) => dir,
            None => default_cache_dir().ok_or(Error::NoHome)?,
        };
        let cache_dir = std::path::absolute(&cache_dir).map_err(|source| Error::Cache {
            path: cache_dir.clone(),
            source,
        })?;
        Ok(Config {
            mode,
            tokens,
            url,
            interval: cli.interval,
            timeout: cli.timeout,
            cache_dir,
            remember: cli.remember,
            rules: Rules {
                skip_from: cli.skip_from,
                only_chat: cli.only_chat,
                max_age: cli.max_age,
            },
            tempfail: cli.tempfail,
            // A dry run exists to show its decisions.
            verbosity: match verbosity(cli.quiet, cli.verbose) {
                Verbosity::Normal if mode == Mode::DryRun => Verbosity::Verbose,
                v => v,
            },
            watch,
            setup,
            watch_speedup: cli.watch_speedup,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn resolve(args: &[&str]) -> Result<Config> {
        Config::resolve(Cli::try_parse_from([&["deltapush-mda"], args].concat()).unwrap())
    }

    #[test]
    fn defaults() {
        let c = resolve(&["--cache-dir", "/c", "tok"]).unwrap();
        assert_eq!(c.mode, Mode::Deliver);
        assert_eq!(c.interval, Duration::from_secs(10));
        assert_eq!(c.timeout, Duration::from_secs(15));
        assert_eq!(c.url.as_str(), crate::cli::DEFAULT_URL);
        assert_eq!(c.tokens, [Token::parse("tok").unwrap()]);
        assert_eq!(c.verbosity, Verbosity::Normal);
    }

    #[test]
    fn every_mode_dedups_tokens_alike() {
        for mode in [&[][..], &["--check"], &["--dry-run"]] {
            let args = [mode, &["--cache-dir", "/c", "tok", "tok", "push-token=tok"]].concat();
            assert_eq!(resolve(&args).unwrap().tokens.len(), 1, "{mode:?}");
        }
    }

    #[test]
    fn relative_cache_dir_becomes_absolute() {
        let c = resolve(&["--cache-dir", "rel", "tok"]).unwrap();
        assert!(c.cache_dir.is_absolute());
        assert!(c.cache_dir.ends_with("rel"));
    }

    #[test]
    fn no_token_is_a_usage_error_unless_remembered_ones_count() {
        assert!(matches!(
            resolve(&["--cache-dir", "/c"]),
            Err(Error::NoToken)
        ));
        assert!(resolve(&["--cache-dir", "/c", "--remember"]).is_ok());
    }

    #[test]
    fn dry_run_shows_its_decisions_unless_quiet() {
        let c = resolve(&["--dry-run", "--cache-dir", "/c", "tok"]).unwrap();
        assert_eq!(c.verbosity, Verbosity::Verbose);
        let c = resolve(&["--dry-run", "-q", "--cache-dir", "/c", "tok"]).unwrap();
        assert_eq!(c.verbosity, Verbosity::Quiet);
    }
}
