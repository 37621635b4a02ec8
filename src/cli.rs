//! The command line as clap sees it. Doc comments here are the `--help` text; `config` resolves
//! what is parsed here into the one configuration every mode starts from.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Parser, ValueEnum, ValueHint};

pub const DEFAULT_URL: &str = "https://notifications.delta.chat/notify";

/// Where each platform's app shows its token: (platform, the log line, what else it may say).
/// In Delta Chat: Settings → Advanced → View Log, near the top.
pub const TOKEN_PLACES: &[(&str, &str, &str)] = &[
    (
        "Android",
        "push-token=fcm-chat.delta:…",
        "push-token=<empty> without Google Play services: no push on that phone",
    ),
    (
        "iOS",
        "notify-token=<64 hex digits>",
        "notify-token=<unset> when notifications are off",
    ),
    ("Desktop", "", "has no push token"),
];

/// The `--help` epilogue: where the token is, the exit statuses, a getmail destination.
pub fn after_help() -> String {
    let mut text = String::from(
        "Where the token is: in Delta Chat, Settings → Advanced → View Log, near the top:\n",
    );
    for (platform, line, note) in TOKEN_PLACES {
        match line.is_empty() {
            true => text.push_str(&format!("  {platform:<8} {note}\n")),
            false => text.push_str(&format!("  {platform:<8} {line}  ({note})\n")),
        }
    }
    text.push_str("A whole line copied from the log works as TOKEN and in --token-file.\n\n");
    text.push_str(&crate::exit::help_table());
    text.push_str(
        "\ngetmail destination (~/.config/getmail/getmailrc):\n  [destination]\n  \
         type = MDA_external\n  path = /usr/bin/deltapush-mda\n  \
         arguments = (\"--token-file\", \"/home/me/.config/deltapush-mda/tokens\")",
    );
    text
}

/// Wake Delta Chat on your phone when mail arrives: reads one message on standard input
/// (none when standard input is a terminal) and posts each notify token to the Delta Chat
/// notification relay, unless the message is automatic (Auto-Submitted). A token is posted at
/// most once per --interval; a message inside the interval gets one shared wakeup at its end.
/// Silent on success.
#[derive(Debug, Parser)]
#[command(name = "deltapush-mda", version, after_help = after_help())]
// What the password options go with: a watcher, or the set-up of one.
#[command(group = ArgGroup::new("mailbox").args(["watch", "setup"]).multiple(true))]
pub struct Cli {
    /// Notify tokens, or push-token=… / notify-token=… lines copied from Delta Chat's log
    #[arg(value_name = "TOKEN", value_hint = ValueHint::Other)]
    pub tokens: Vec<String>,

    /// Read tokens from this file, one per line; blank lines and # comments are ignored
    #[arg(long, value_name = "PATH", env = "DELTAPUSH_TOKEN_FILE", value_hint = ValueHint::FilePath)]
    pub token_file: Option<PathBuf>,

    /// Notification relay; plain http:// only to a loopback host
    #[arg(long, value_name = "URL", env = "DELTAPUSH_URL", default_value = DEFAULT_URL,
          value_hint = ValueHint::Url)]
    pub url: String,

    /// Post each token at most once per this interval, e.g. 10s or "1m 30s"; 0 turns the limit off
    #[arg(long, value_name = "DURATION", env = "DELTAPUSH_INTERVAL", default_value = "10s",
          value_parser = parse_duration, value_hint = ValueHint::Other)]
    pub interval: Duration,

    /// Network budget for the whole run: all tokens and all retries
    #[arg(long, value_name = "DURATION", env = "DELTAPUSH_TIMEOUT", default_value = "15s",
          value_parser = parse_duration, value_hint = ValueHint::Other)]
    pub timeout: Duration,

    /// Where the per-token state lives [default: $XDG_CACHE_HOME/deltapush-mda or ~/.cache/deltapush-mda]
    #[arg(long, value_name = "DIR", env = "DELTAPUSH_CACHE_DIR", value_hint = ValueHint::DirPath)]
    pub cache_dir: Option<PathBuf>,

    /// Remember every token given, and notify all remembered tokens of this cache dir each time;
    /// a token is forgotten after 90 days without being given, or once the relay says it is gone
    #[arg(long)]
    pub remember: bool,

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

    /// Send nothing; check the tokens, the cache dir and the way to the relay (and with --watch
    /// the login and the mailbox), one line each, and exit 0 only if all is well
    #[arg(long, conflicts_with = "dry_run")]
    pub check: bool,

    /// Keep watching this IMAP mailbox and wake the tokens for every new message in it:
    /// imaps://USER@HOST[:PORT][/MAILBOX] (TLS, port 993) or imap://… (STARTTLS, port 143).
    /// MAILBOX is INBOX unless given; %40 in USER stands for @. Reads no standard input
    #[arg(long, value_name = "URL", env = "DELTAPUSH_WATCH", value_hint = ValueHint::Url,
          conflicts_with_all = ["dry_run", "tempfail", "hold"])]
    pub watch: Option<String>,

    /// With --watch or --setup: the IMAP password is the first line of this file (only its owner may read it)
    #[arg(long, value_name = "PATH", env = "DELTAPUSH_PASSWORD_FILE",
          value_hint = ValueHint::FilePath, requires = "mailbox")]
    pub password_file: Option<PathBuf>,

    /// With --watch or --setup: run this shell command at every login; the first line of its output is the
    /// password, or the OAuth 2 access token with --auth xoauth2
    #[arg(long, value_name = "CMD", env = "DELTAPUSH_PASSWORD_COMMAND",
          value_hint = ValueHint::CommandString, requires = "mailbox", conflicts_with = "password_file")]
    pub password_command: Option<String>,

    /// With --watch or --setup: how to log in
    #[arg(long, value_name = "MECHANISM", value_enum, env = "DELTAPUSH_AUTH",
          default_value_t = Auth::Password, requires = "mailbox")]
    pub auth: Auth,

    /// The watcher's own clock (renewal, poll, backoff, login pace) runs this many times faster,
    /// so the tests wait out none of them; --timeout is not affected. Not for people.
    #[arg(long, hide = true, value_name = "N", env = "DELTAPUSH_WATCH_SPEEDUP", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..), requires = "watch")]
    pub watch_speedup: u32,

    /// Print one line per decision on standard error
    #[arg(short, long, conflicts_with = "quiet")]
    pub verbose: bool,

    /// Print nothing, not even errors: the exit status says it all
    #[arg(short, long)]
    pub quiet: bool,

    /// For Dovecot's Sieve, which runs before the message is stored: decide, and hold the
    /// wakeup until Dovecot's commit hook (deltapush.lua) says the message is stored
    #[arg(long, conflicts_with_all = ["check", "dry_run"])]
    pub hold: bool,

    /// The waiter that a --hold run starts: it waits for the delivering process to store the
    /// message, then wakes what was held. Not for people.
    #[arg(long, hide = true, value_name = "PID.NONCE", value_parser = parse_waiting,
          conflicts_with_all = ["check", "dry_run", "remember", "hold"])]
    pub wait_stored: Option<Waiting>,

    /// Set up a watcher of the account NAME from Delta Chat's log (pasted on standard input, or
    /// --log): asks only what the log lacks, checks the login, writes the files of
    /// deltapush-watch@NAME, then enables and starts that systemd user unit. Run it again to add a
    /// phone's token or change a setting. With --watch, that mailbox instead of the log's servers
    #[arg(long, value_name = "NAME", value_parser = parse_name, value_hint = ValueHint::Other,
          conflicts_with_all = ["tokens", "token_file", "check", "dry_run", "tempfail", "hold",
                                "remember", "skip_from", "only_chat", "max_age", "interval"])]
    pub setup: Option<String>,

    /// With --setup: read the log from this file (saved from View Log) instead of standard
    /// input; repeatable, one log per phone
    #[arg(long, value_name = "FILE", value_hint = ValueHint::FilePath, requires = "setup")]
    pub log: Vec<PathBuf>,

    /// With --setup: your address, where the log hides it (***@example.org)
    #[arg(long, value_name = "ADDR", value_hint = ValueHint::EmailAddress, requires = "setup")]
    pub address: Option<String>,

    /// With --setup: send the password to this IMAP server of the log although it is not in
    /// your address's domain (asked on a terminal); repeatable or comma-separated
    #[arg(long, value_name = "HOST", value_delimiter = ',', value_hint = ValueHint::Hostname,
          requires = "setup")]
    pub trust_server: Vec<String>,

    /// The deferred sender that a run starts: it reads one token on standard input, waits for
    /// the token's interval to end and posts it. Not for people.
    #[arg(long, hide = true, conflicts_with_all = ["check", "dry_run", "remember", "hold"])]
    pub send_deferred: bool,
}

/// How the watcher logs in to the IMAP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Auth {
    /// IMAP LOGIN with the user and password
    Password,
    /// SASL XOAUTH2 with an OAuth 2 access token (Gmail, Outlook), from --password-command
    Xoauth2,
}

/// A held wakeup: the delivering process, and the nonce of its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waiting {
    pub delivery: u32,
    pub nonce: u64,
}

fn parse_waiting(s: &str) -> Result<Waiting, String> {
    let (pid, nonce) = s.split_once('.').ok_or("PID.NONCE")?;
    Ok(Waiting {
        delivery: pid.parse().map_err(|_| "PID.NONCE")?,
        nonce: u64::from_str_radix(nonce, 16).map_err(|_| "PID.NONCE")?,
    })
}

/// An account's name: part of the unit's name and of its files' names.
fn parse_name(s: &str) -> Result<String, String> {
    let fine = !s.is_empty()
        && s.len() <= 64
        && !s.starts_with(['.', '-'])
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    match fine {
        true => Ok(s.to_string()),
        false => {
            Err("a NAME is 1 to 64 letters, digits, '.', '_' or '-', not first '.' or '-'".into())
        }
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("{e} (examples: 10s, 1m 30s, 0)"))
}

/// Turns clap's multi-line report into our one-line form.
pub fn usage_line(err: &clap::Error) -> String {
    let text = err.to_string();
    let mut lines = text.lines();
    let first = lines.next().unwrap_or_default();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    // "the following required arguments were not provided:" lists them on the lines below.
    match first.strip_suffix(':') {
        Some(head) => {
            let listed: Vec<&str> = lines
                .take_while(|l| l.starts_with("  "))
                .map(str::trim)
                .collect();
            format!("{head}: {}; see --help", listed.join(", "))
        }
        None => format!("{first}; see --help"),
    }
}
