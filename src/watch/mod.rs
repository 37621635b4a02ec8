//! `--watch`: one IMAP connection kept in IDLE on one mailbox, and a wakeup for every new
//! message in it, through the same decision and token state as a delivery (`run::deliver`).
//!
//! The watcher tracks UIDs, not notifications: after every wake, reconnect or restart it fetches
//! every message above the highest UID it handled, so mail that lands while it fetches, renews
//! IDLE or is away is picked up by the next fetch, once. The first start begins from the
//! mailbox as it is, and so does a UIDVALIDITY change: old mail wakes no one.

mod mark;
mod session;
mod signals;
mod transport;

use std::io::Read;
use std::os::fd::RawFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use imap_next::imap_types::response::Capability;
use rustls::ClientConfig;

use crate::cache::Cache;
use crate::cli::Auth;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::message;
use crate::run::{self, Outcome, Output};

use crate::account::{Secret, Security, Watch, read_password_file};
use mark::Mark;
use session::{Reply, Session, Woken};
use transport::{Fault, Transport};

/// IDLE is renewed this often: well inside the 29 minutes of RFC 2177, and each renewal (DONE,
/// NOOP) proves the connection alive. A dead one is noticed sooner by TCP keepalive.
const IDLE_RENEW: Duration = Duration::from_secs(10 * 60);
/// A server without IDLE is asked (NOOP) this often: a message then waits 15 s on average and
/// 30 s at most, for two small commands a minute, which no provider minds and which keep the
/// session well inside the 30 minutes of an IMAP autologout.
pub const POLL_EVERY: Duration = Duration::from_secs(30);
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(4 * 60);
/// A password command that takes longer than this is taken as failed.
const COMMAND_LIMIT: Duration = Duration::from_secs(60);

/// A connection that watched this long before it failed was fine: the backoff starts over.
/// One that fails sooner (a server that takes the login, then drops the session) keeps backing
/// off, so it cannot make the watcher reconnect every second.
const STABLE: Duration = Duration::from_secs(60);

/// Why one connection ended.
enum End {
    /// Reconnect after a backoff; says why.
    Lost {
        why: String,
    },
    Stopped,
    Fatal(Error),
}

impl From<Fault> for End {
    fn from(f: Fault) -> End {
        match f {
            Fault::Lost(why) => End::Lost { why },
            Fault::Stopped => End::Stopped,
        }
    }
}

/// The password (or token) for this login: from the file, or from the command's first line.
fn secret(secret: &Secret) -> Result<String, End> {
    match secret {
        Secret::File(path) => read_password_file(path).map_err(End::Fatal),
        Secret::Command(cmd) => run_password_command(cmd).map_err(|why| End::Lost {
            why: format!("--password-command: {why}"),
        }),
    }
}

fn run_password_command(cmd: &str) -> std::result::Result<String, String> {
    let mut child = Command::new("/bin/sh")
        .args(["-c", cmd])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        // Its own complaints are the user's to read.
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    let mut pipe = child.stdout.take().expect("stdout is piped");
    let started = Instant::now();
    let read = pipe.by_ref().take(64 * 1024).read_to_string(&mut out);
    drop(pipe);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() < COMMAND_LIMIT => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err("did not end in time".into());
            }
            Err(e) => return Err(e.to_string()),
        }
    };
    read.map_err(|e| format!("its output: {e}"))?;
    if !status.success() {
        return Err(format!("failed ({status})"));
    }
    let line = out.lines().next().unwrap_or("").trim_end_matches('\r');
    if line.is_empty() {
        return Err("printed nothing".into());
    }
    Ok(line.to_string())
}

/// Watches until SIGTERM (`Ok`) or an error that no reconnect can cure.
pub fn run(config: &Config, out: &Output) -> Result<Outcome> {
    let watch = config
        .watch
        .as_ref()
        .expect("Mode::Watch comes with its settings");
    let stop = signals::install().map_err(|e| Error::WatchSetup(format!("signals: {e}")))?;
    let tls = transport::tls_config().map_err(Error::WatchSetup)?;
    // Created (0700) and checked up front: the mark lives there as much as the token state.
    Cache::open(&config.cache_dir, true)?;
    let mark_path = mark::path(&config.cache_dir, &watch.url.key());
    let Some(_held) = mark::hold(&mark_path)? else {
        return Err(Error::WatchBusy {
            url: watch.url.to_string(),
        });
    };
    let mut watcher = Watcher {
        config,
        watch,
        out,
        tls,
        stop,
        mark_path: mark_path.as_path(),
        mark: mark::read(&mark_path),
        reported: None,
        watching_since: None,
    };
    let mut backoff = FIRST_BACKOFF;
    loop {
        match watcher.connection() {
            End::Stopped => return Ok(Outcome::Done),
            End::Fatal(e) => return Err(e),
            End::Lost { why } => {
                if let Some(since) = watcher.watching_since.take()
                    && since.elapsed() >= STABLE
                {
                    backoff = FIRST_BACKOFF;
                }
                let line = format!(
                    "{}: {why}; trying again in {} s",
                    watch.url,
                    backoff.as_secs()
                );
                // One line per change of state: the same failure again is news only with -v.
                match watcher.reported.as_deref() == Some(why.as_str()) {
                    true => out.info(format_args!("{line}")),
                    false => out.report(format_args!("{line}")),
                }
                watcher.reported = Some(why);
                if signals::stopped_within(stop, backoff) {
                    return Ok(Outcome::Done);
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// `--check --watch`: logs in, looks at the mailbox, logs out; posts nothing. One line each:
/// `Ok` what is fine, `Err` the exit status and what is not.
pub fn check(config: &Config) -> Vec<std::result::Result<String, (u8, String)>> {
    let Some(watch) = &config.watch else {
        return Vec::new();
    };
    let url = &watch.url;
    let tls = match transport::tls_config() {
        Ok(tls) => tls,
        Err(e) => {
            let e = Error::WatchSetup(e);
            return vec![Err((e.exit_code(), e.to_string()))];
        }
    };
    let mut s = match open(watch, config.timeout, &tls, -1) {
        Ok(s) => s,
        Err(End::Fatal(e)) => return vec![Err((e.exit_code(), e.to_string()))],
        Err(End::Lost { why, .. }) => {
            return vec![Err((crate::exit::UNAVAILABLE, format!("{url}: {why}")))];
        }
        Err(End::Stopped) => return Vec::new(),
    };
    let mut lines = vec![Ok(format!("{url}: logged in as {}", url.user))];
    lines.push(Ok(match s.has(&Capability::Idle) {
        true => format!("{url}: the server offers IDLE"),
        false => format!(
            "{url}: the server offers no IDLE; the watcher will ask every {} s",
            POLL_EVERY.as_secs()
        ),
    }));
    match s.examine(&url.mailbox) {
        Ok(Ok(e)) => {
            let mark = mark::read(&mark::path(&config.cache_dir, &url.key()));
            let handled = match mark {
                Some(m) if Some(m.uidvalidity) == e.uidvalidity => {
                    format!("; the watcher has handled up to UID {}", m.uid)
                }
                Some(_) => "; the watcher's state is of an older UIDVALIDITY".to_string(),
                None => "; the watcher has not run on it yet".to_string(),
            };
            lines.push(Ok(format!(
                "{url}: {} holds {} message{}, the next UID is {}{handled}",
                url.mailbox,
                e.exists,
                if e.exists == 1 { "" } else { "s" },
                e.uidnext.map_or("unknown".to_string(), |n| n.to_string()),
            )));
        }
        Ok(Err(text)) => {
            let e = Error::NoMailbox {
                url: url.to_string(),
                said: printable(&text),
            };
            lines.push(Err((e.exit_code(), e.to_string())));
        }
        Err(Fault::Lost(why)) => {
            lines.push(Err((crate::exit::UNAVAILABLE, format!("{url}: {why}"))))
        }
        Err(Fault::Stopped) => {}
    }
    s.logout();
    lines
}

struct Watcher<'a> {
    config: &'a Config,
    watch: &'a Watch,
    out: &'a Output,
    tls: Arc<ClientConfig>,
    stop: RawFd,
    mark_path: &'a Path,
    mark: Option<Mark>,
    /// The failure last reported, until the watcher is back.
    reported: Option<String>,
    /// When the current connection began to watch.
    watching_since: Option<Instant>,
}

impl Watcher<'_> {
    /// One connection, from connect to its end.
    fn connection(&mut self) -> End {
        let mut session = match open(self.watch, self.config.timeout, &self.tls, self.stop) {
            Ok(s) => s,
            Err(end) => return end,
        };
        match self.watch_mailbox(&mut session) {
            End::Stopped => {
                session.logout();
                End::Stopped
            }
            other => other,
        }
    }

    fn watch_mailbox(&mut self, s: &mut Session) -> End {
        match self.watch_mailbox_inner(s) {
            Ok(never) => match never {},
            Err(end) => end,
        }
    }

    fn watch_mailbox_inner(&mut self, s: &mut Session) -> Result<std::convert::Infallible, End> {
        let url = &self.watch.url;
        let examined = match s.examine(&url.mailbox)? {
            Ok(e) => e,
            Err(text) => {
                return Err(End::Fatal(Error::NoMailbox {
                    url: url.to_string(),
                    said: printable(&text),
                }));
            }
        };
        let uidvalidity = examined.uidvalidity.unwrap_or(0);
        let from_now = |s: &mut Session| -> Result<u32, End> {
            Ok(match examined.uidnext {
                Some(next) => next - 1,
                None => s.last_uid()?,
            })
        };
        match self.mark {
            Some(m) if m.uidvalidity == uidvalidity => {}
            Some(_) => {
                self.out.report(format_args!(
                    "{url}: the mailbox's UIDVALIDITY changed; starting over from the mail there now"
                ));
                let uid = from_now(s)?;
                self.set_mark(Mark { uidvalidity, uid })?;
            }
            None => {
                let uid = from_now(s)?;
                self.set_mark(Mark { uidvalidity, uid })?;
            }
        }
        // Whatever arrived while the watcher was away.
        self.catch_up(s)?;
        let idle = s.has(&Capability::Idle);
        match idle {
            true => self.out.report(format_args!("watching {url} with IDLE")),
            false => self.out.report(format_args!(
                "watching {url}, asking every {} s: the server offers no IDLE",
                POLL_EVERY.as_secs()
            )),
        }
        self.reported = None;
        self.watching_since = Some(Instant::now());
        loop {
            if idle {
                if s.idle(IDLE_RENEW)? == Woken::Renew {
                    s.noop()?;
                }
            } else {
                if signals::stopped_within(self.stop, POLL_EVERY) {
                    return Err(End::Stopped);
                }
                s.noop()?;
            }
            self.catch_up(s)?;
        }
    }

    /// Wakes the tokens for the messages above the mark, then moves the mark past them, until a
    /// fetch finds nothing new. One wakeup serves all the messages of one fetch: the phone
    /// fetches them all, so the first message that the rules let through is handed to
    /// `run::deliver`, and those after it need none of their own (a relay that is down then
    /// costs one --timeout per fetch, not one per message).
    fn catch_up(&mut self, s: &mut Session) -> Result<(), End> {
        loop {
            let Some(mark) = self.mark else {
                return Ok(());
            };
            let found = s.fetch_after(mark.uid)?;
            let Some(&(last, _)) = found.last() else {
                return Ok(());
            };
            let mut woken = false;
            for (uid, header) in &found {
                self.out.info(format_args!("new message, UID {uid}"));
                if woken {
                    continue;
                }
                let wanted = self
                    .config
                    .rules
                    .skip(&message::summarize(header), run::unix_now())
                    .is_none();
                // The same decision as a delivery, which also says why a message is skipped.
                run::deliver(self.config, Some(header), self.out).map_err(End::Fatal)?;
                woken = wanted;
            }
            // After the wakeup, not before: a crash in between costs a second wakeup, never a
            // missed one.
            self.set_mark(Mark { uid: last, ..mark })?;
            if !s.changed {
                return Ok(());
            }
        }
    }

    fn set_mark(&mut self, mark: Mark) -> Result<(), End> {
        mark::save(self.mark_path, mark).map_err(End::Fatal)?;
        self.mark = Some(mark);
        Ok(())
    }
}

/// Connect, secure, log in: a session ready for EXAMINE. `stop` is the stop pipe, or -1.
fn open(
    watch: &Watch,
    timeout: Duration,
    tls: &Arc<ClientConfig>,
    stop: RawFd,
) -> Result<Session, End> {
    let url = &watch.url;
    let deadline = Instant::now() + timeout;
    let mut transport = Transport::connect(&url.host, url.port, stop, deadline)?;
    if url.security == Security::Implicit {
        transport.start_tls(tls, &url.host, deadline)?;
    }
    let mut s = Session::greet(transport, timeout)?;
    if s.preauth {
        // No STARTTLS after PREAUTH (RFC 3501): plain is for loopback only, as ever.
        if url.security
            == (Security::StartTls {
                plain_allowed: false,
            })
        {
            return Err(End::Fatal(Error::NoStartTls {
                url: url.to_string(),
            }));
        }
        s.capability()?;
        return Ok(s);
    }
    if let Security::StartTls { plain_allowed } = url.security {
        s.capability()?;
        if s.has(&Capability::StartTls) {
            match s.starttls()? {
                Reply::Ok => {}
                Reply::Refused { text, .. } => {
                    return Err(End::Lost {
                        why: format!("STARTTLS refused: {text}"),
                    });
                }
            }
            let deadline = Instant::now() + timeout;
            s.transport_mut().start_tls(tls, &url.host, deadline)?;
            s.restart_after_tls();
        } else if !plain_allowed {
            return Err(End::Fatal(Error::NoStartTls {
                url: url.to_string(),
            }));
        }
    }
    let secret = secret(&watch.secret)?;
    let reply = match watch.auth {
        Auth::Password => s.login(&url.user, &secret)?,
        Auth::Xoauth2 => s.xoauth2(&url.user, &secret)?,
    };
    drop(secret);
    if let Reply::Refused { code, text } = reply {
        // RFC 5530: these say "not now", not "not you".
        let passing = matches!(
            code.as_deref(),
            Some("UNAVAILABLE" | "SERVERBUG" | "INUSE" | "LIMIT" | "CONTACTADMIN")
        );
        let said = printable(&text);
        return Err(match passing {
            true => End::Lost {
                why: format!("login failed for now: {said}"),
            },
            false => End::Fatal(Error::LoginRefused {
                url: url.to_string(),
                said,
            }),
        });
    }
    s.capability()?;
    Ok(s)
}

/// Server text for one line of ours: printable, short.
fn printable(text: &str) -> String {
    let clean: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect();
    // Ours adds a `;` after it.
    clean.trim().trim_end_matches('.').to_string()
}
