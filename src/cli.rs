//! The command line. Doc comments here are the `--help` text.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueHint};

pub const DEFAULT_URL: &str = "https://notifications.delta.chat/notify";

const AFTER_HELP: &str = "\
Exit status (sysexits.h):
  0   notified, skipped, rate-limited, or the relay failed (an error line says so)
  64  usage: no token, a malformed token, a bad option
  69  --check could not reach the relay
  74  standard input could not be read
  75  a token could not be notified and --tempfail was given: the caller should retry
  78  configuration: cache dir not usable, insecure --url, unreadable --token-file

getmail destination (~/.config/getmail/getmailrc):
  [destination]
  type = MDA_external
  path = /usr/bin/deltapush-mda
  arguments = (\"--token-file\", \"/home/me/.config/deltapush-mda/tokens\")";

/// Wake Delta Chat on your phone when mail arrives: reads one message on standard input
/// (none when standard input is a terminal) and posts each notify token to the Delta Chat
/// notification relay, unless the message is automatic (Auto-Submitted) or the token was
/// notified less than --interval ago. Silent on success.
#[derive(Debug, Parser)]
#[command(name = "deltapush-mda", version, after_help = AFTER_HELP)]
pub struct Cli {
    /// Notify tokens, as shown by Delta Chat (Settings → Advanced → notify token)
    #[arg(value_name = "TOKEN", value_hint = ValueHint::Other)]
    pub tokens: Vec<String>,

    /// Read tokens from this file, one per line; blank lines and # comments are ignored
    #[arg(long, value_name = "PATH", env = "DELTAPUSH_TOKEN_FILE", value_hint = ValueHint::FilePath)]
    pub token_file: Option<PathBuf>,

    /// Notification relay; plain http:// only to a loopback host
    #[arg(long, value_name = "URL", env = "DELTAPUSH_URL", default_value = DEFAULT_URL,
          value_hint = ValueHint::Url)]
    pub url: String,

    /// Notify each token at most once per this interval, e.g. 10s or "1m 30s"; 0 turns the limit off
    #[arg(long, value_name = "DURATION", env = "DELTAPUSH_INTERVAL", default_value = "10s",
          value_parser = parse_duration, value_hint = ValueHint::Other)]
    pub interval: Duration,

    /// Network budget for the whole run: all tokens and all retries
    #[arg(long, value_name = "DURATION", default_value = "15s", value_parser = parse_duration,
          value_hint = ValueHint::Other)]
    pub timeout: Duration,

    /// Where the per-token stamps live [default: $XDG_CACHE_HOME/deltapush-mda or ~/.cache/deltapush-mda]
    #[arg(long, value_name = "DIR", env = "DELTAPUSH_CACHE_DIR", value_hint = ValueHint::DirPath)]
    pub cache_dir: Option<PathBuf>,

    /// Decide and report what would be done, one line per token; send nothing, write nothing
    #[arg(long)]
    pub dry_run: bool,

    /// Exit 75 (EX_TEMPFAIL) when a token could not be notified, so the caller retries the mail
    #[arg(long)]
    pub tempfail: bool,

    /// Skip mail from this address (your own, so mail from your other devices stays quiet);
    /// repeatable or comma-separated
    #[arg(
        long,
        value_name = "ADDR",
        env = "DELTAPUSH_SKIP_FROM",
        value_delimiter = ',',
        value_hint = ValueHint::EmailAddress
    )]
    pub skip_from: Vec<String>,

    /// Notify only for Delta Chat messages (those with a Chat-Version header)
    #[arg(long)]
    pub only_chat: bool,

    /// Skip mail whose Date is older than this, e.g. 1h; a missing or bad Date counts as new.
    /// Delta Chat shifts Date by a few minutes, so keep this above 10m
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, value_hint = ValueHint::Other)]
    pub max_age: Option<Duration>,

    /// Send nothing; check the tokens, the cache dir and the way to the relay, one line each,
    /// and exit 0 only if all is well
    #[arg(long, conflicts_with = "dry_run")]
    pub check: bool,

    /// Print one line per decision on standard error
    #[arg(short, long, conflicts_with = "quiet")]
    pub verbose: bool,

    /// Print nothing, not even errors: the exit status says it all
    #[arg(short, long)]
    pub quiet: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("{e} (examples: 10s, 1m 30s, 0)"))
}

/// Turns clap's multi-line report into our one-line form.
pub fn usage_line(err: &clap::Error) -> String {
    let text = err.to_string();
    let first = text.lines().next().unwrap_or_default();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    format!("{first}; see --help")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults() {
        let cli = Cli::try_parse_from(["deltapush-mda", "tok"]).unwrap();
        assert_eq!(cli.interval, Duration::from_secs(10));
        assert_eq!(cli.timeout, Duration::from_secs(15));
        assert_eq!(cli.url, DEFAULT_URL);
        assert_eq!(cli.tokens, ["tok"]);
    }

    #[test]
    fn durations_in_humantime() {
        let cli = Cli::try_parse_from(["x", "--interval", "1m 30s", "--timeout", "0"]).unwrap();
        assert_eq!(cli.interval, Duration::from_secs(90));
        assert_eq!(cli.timeout, Duration::ZERO);
        let err = Cli::try_parse_from(["x", "--interval", "soon"]).unwrap_err();
        let line = usage_line(&err);
        assert!(
            line.starts_with("invalid value 'soon' for '--interval <DURATION>'"),
            "{line}"
        );
        assert!(!line.contains('\n'));
    }

    #[test]
    fn skip_from_list() {
        let cli =
            Cli::try_parse_from(["x", "--skip-from", "a@b,c@d", "--skip-from", "e@f"]).unwrap();
        assert_eq!(cli.skip_from, ["a@b", "c@d", "e@f"]);
    }

    #[test]
    fn verbose_and_quiet_conflict() {
        assert!(Cli::try_parse_from(["x", "-v", "-q", "tok"]).is_err());
    }
}
