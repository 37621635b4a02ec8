//! `--watch`: one IMAP connection kept in IDLE on one mailbox, and a wakeup for every new
//! message in it, through the same decision and token state as a delivery (`run::deliver`).
//!
//! The watcher tracks UIDs, not notifications: after every wake, reconnect or restart it fetches
//! every message above the highest UID it handled, so mail that lands while it fetches, renews
//! IDLE or is away is picked up by the next fetch, once. The first start begins from the
//! mailbox as it is, and so does a UIDVALIDITY change: old mail wakes no one.

mod mark;
mod refusal;
mod session;
mod signals;
mod transport;

use std::io::Read;
use std::os::fd::RawFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::ClientConfig;

use crate::cache::Cache;
use crate::cli::Auth;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::run::{self, Outcome, Output};

use crate::account::{Secret, Security, Watch, read_password_file};
use mark::Mark;
use refusal::{Pace, Refusal};
use session::{Session, Woken};
use transport::{Fault, Transport};

// The watcher's own timings, as its clock counts them (see `Clock`).

/// IDLE is renewed this often, and each renewal fetches by UID: a server whose IDLE stops
/// announcing new mail without a word (mailbox.org, Outlook, Yahoo, iCloud, as their users
/// report) costs a message at most this much delay. Delta Chat's core renews as often, and it is
/// well inside AOL's 5 minutes and RFC 2177's 29.
const IDLE_RENEW: Duration = Duration::from_secs(5 * 60);
/// Once IDLE has missed a message, this server's IDLE is not trusted: a renewal a minute costs
/// three small commands, and the next missed message is late by a minute at most.
const IDLE_RENEW_UNTRUSTED: Duration = Duration::from_secs(60);
/// A server without IDLE is asked (NOOP) this often: a message then waits 15 s on average and
/// 30 s at most, for two small commands a minute, which no provider minds and which keep the
/// session well inside the 30 minutes of an IMAP autologout.
pub const POLL_EVERY: Duration = Duration::from_secs(30);
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(4 * 60);
/// A refused login is tried again after 2 minutes, then 4, 8 and every 16: at most three
/// failures in any 10 minutes, below fail2ban's default of 5 and Exchange's lockout threshold
/// of 10, while an OAuth helper that had not yet refreshed its token is back within minutes.
const FIRST_LOGIN_PACE: Duration = Duration::from_secs(2 * 60);
const MAX_LOGIN_PACE: Duration = Duration::from_secs(16 * 60);
/// A password command that takes longer than this is taken as failed.
const COMMAND_LIMIT: Duration = Duration::from_secs(60);

/// A connection that watched this long before it failed was fine: the backoff starts over.
/// One that fails sooner (a server that takes the login, then drops the session) keeps backing
/// off, so it cannot make the watcher reconnect every second.
const STABLE: Duration = Duration::from_secs(60);

/// The watcher's clock: real time, or in the tests (`--watch-speedup`) a clock that runs
/// faster, so that no test waits out a renewal or a backoff. Lines name the nominal times.
#[derive(Clone, Copy)]
struct Clock {
    speedup: u32,
}

impl Clock {
    fn real(self, nominal: Duration) -> Duration {
        nominal / self.speedup
    }
}

/// Why one connection ended.
enum End {
    /// Reconnect at this pace, and no sooner than the server asked; says why.
    Lost {
        why: String,
        pace: Pace,
        asked: Option<Duration>,
    },
    Stopped,
    Fatal(Error),
}

impl End {
    fn lost(why: String) -> End {
        End::Lost {
            why,
            pace: Pace::Backoff,
            asked: None,
        }
    }
}

impl From<Fault> for End {
    fn from(f: Fault) -> End {
        match f {
            Fault::Stopped => End::Stopped,
            Fault::Refused { why, asked } => End::Lost {
                why,
                pace: Pace::Backoff,
                asked,
            },
            f => End::lost(f.why()),
        }
    }
}

/// The password (or token) for this login: from the file, or from the command's first line.
fn secret(secret: &Secret) -> Result<String, End> {
    match secret {
        Secret::File(path) => read_password_file(path).map_err(End::Fatal),
        Secret::Command(cmd) => {
            run_password_command(cmd).map_err(|why| End::lost(format!("--password-command: {why}")))
        }
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
    let clock = Clock {
        speedup: config.watch_speedup,
    };
    let mut watcher = Watcher {
        config,
        watch,
        out,
        tls,
        stop,
        clock,
        mark_path: mark_path.as_path(),
        mark: mark::read(&mark_path),
        reported: None,
        watching_since: None,
        renew: IDLE_RENEW,
        login_pace: FIRST_LOGIN_PACE,
    };
    let mut backoff = FIRST_BACKOFF;
    loop {
        let (why, pace, asked) = match watcher.connection() {
            End::Stopped => return Ok(Outcome::Done),
            End::Fatal(e) => return Err(e),
            End::Lost { why, pace, asked } => (why, pace, asked),
        };
        if let Some(since) = watcher.watching_since.take()
            && since.elapsed() >= clock.real(STABLE)
        {
            backoff = FIRST_BACKOFF;
        }
        let next = match pace {
            Pace::Backoff => &mut backoff,
            Pace::Login => &mut watcher.login_pace,
        };
        let wait = (*next).max(asked.unwrap_or_default());
        *next = match pace {
            Pace::Backoff => (*next * 2).min(MAX_BACKOFF),
            Pace::Login => (*next * 2).min(MAX_LOGIN_PACE),
        };
        let line = format!(
            "{}: {why}; trying again in {} s",
            watch.url,
            wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
        );
        // One line per change of state: the same failure again is news only with -v.
        match watcher.reported.as_deref() == Some(why.as_str()) {
            true => out.info(format_args!("{line}")),
            false => out.report(format_args!("{line}")),
        }
        watcher.reported = Some(why);
        if signals::stopped_within(stop, clock.real(wait)) {
            return Ok(Outcome::Done);
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
    lines.push(Ok(match s.offers_idle() {
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
        Ok(Err(refused)) => {
            let (code, line) =
                match refusal::no_mailbox(refused.code.as_deref(), refused.bad, &refused.said) {
                    true => {
                        let e = Error::NoMailbox {
                            url: url.to_string(),
                            said: refused.said,
                        };
                        (e.exit_code(), e.to_string())
                    }
                    false => (
                        crate::exit::UNAVAILABLE,
                        format!("{url}: {}", refused.fault("EXAMINE").why()),
                    ),
                };
            lines.push(Err((code, line)));
        }
        Err(Fault::Stopped) => {}
        Err(fault) => lines.push(Err((
            crate::exit::UNAVAILABLE,
            format!("{url}: {}", fault.why()),
        ))),
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
    clock: Clock,
    mark_path: &'a Path,
    mark: Option<Mark>,
    /// The failure last reported, until the watcher is back.
    reported: Option<String>,
    /// When the current connection began to watch.
    watching_since: Option<Instant>,
    /// How often IDLE is renewed: shorter once this server's IDLE has missed a message.
    renew: Duration,
    /// The wait after the next refused login; back to the first after a login goes through.
    login_pace: Duration,
}

impl Watcher<'_> {
    /// One connection, from connect to its end.
    fn connection(&mut self) -> End {
        let mut session = match open(self.watch, self.config.timeout, &self.tls, self.stop) {
            Ok(s) => s,
            Err(end) => return end,
        };
        self.login_pace = FIRST_LOGIN_PACE;
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
            Err(r) if refusal::no_mailbox(r.code.as_deref(), r.bad, &r.said) => {
                return Err(End::Fatal(Error::NoMailbox {
                    url: url.to_string(),
                    said: r.said,
                }));
            }
            Err(r) => return Err(r.fault("EXAMINE").into()),
        };
        let uidvalidity = examined.uidvalidity.unwrap_or(0);
        let from_now = |s: &mut Session| -> Result<u32, End> {
            Ok(match examined.uidnext {
                Some(next) => next.saturating_sub(1),
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
        let idle = s.offers_idle();
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
            let renewed = match idle {
                true => {
                    let renewed = s.idle(self.clock.real(self.renew))? == Woken::Renew;
                    if renewed {
                        s.noop()?;
                    }
                    renewed
                }
                false => {
                    if signals::stopped_within(self.stop, self.clock.real(POLL_EVERY)) {
                        return Err(End::Stopped);
                    }
                    s.noop()?;
                    false
                }
            };
            let found = self.catch_up(s)?;
            if renewed && found > 0 && self.renew != IDLE_RENEW_UNTRUSTED {
                self.renew = IDLE_RENEW_UNTRUSTED;
                self.out.report(format_args!(
                    "{url}: IDLE did not announce new mail; renewing it every {} s from now on",
                    IDLE_RENEW_UNTRUSTED.as_secs()
                ));
            }
        }
    }

    /// Wakes the tokens for the messages above the mark, then moves the mark past them, until a
    /// fetch finds nothing new; says how many it found. One wakeup serves all the messages of
    /// one fetch: the phone fetches them all, so the first message that the rules let through
    /// is handed to `run::deliver` once the answer is in, and only its header block is kept (a
    /// relay that is down then costs one --timeout per fetch, not one per message).
    fn catch_up(&mut self, s: &mut Session) -> Result<u32, End> {
        let mut total = 0;
        loop {
            let Some(mark) = self.mark else {
                return Ok(total);
            };
            let (config, out) = (self.config, self.out);
            let mut wanted: Option<Vec<u8>> = None;
            let (found, ended) = s.fetch_after(mark.uid, &mut |uid, header| {
                out.info(format_args!("new message, UID {uid}"));
                // The same decision as a delivery, which also says why a message is skipped.
                if wanted.is_none() && run::wanted(config, Some(header), out) {
                    wanted = Some(header.to_vec());
                }
            });
            if let Err(Fault::Stopped) = ended {
                return Err(End::Stopped);
            }
            // An answer cut off (too slow for --timeout, or the connection lost) still counts
            // for what came whole, when it came in the mailbox's order: otherwise a catch-up
            // too long for one --timeout would start over at every reconnect and never end.
            let kept = ended.is_ok() || found.ascending;
            let last = match found.last {
                Some(last) if kept => last,
                _ => {
                    ended?;
                    return Ok(total);
                }
            };
            total += found.count;
            if let Some(header) = wanted {
                run::deliver(config, Some(&header), out).map_err(End::Fatal)?;
            }
            // After the wakeup, not before: a crash in between costs a second wakeup, never a
            // missed one.
            self.set_mark(Mark { uid: last, ..mark })?;
            ended?;
            if !s.changed {
                return Ok(total);
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
/// Connecting (with the TLS handshake of imaps://), the greeting, STARTTLS, its handshake and
/// the login each have `timeout`.
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
        if s.offers_starttls() {
            s.starttls()?.map_err(|r| r.fault("STARTTLS"))?;
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
        Auth::Password => s.login(&url.user, &secret),
        Auth::Xoauth2 => s.xoauth2(&url.user, &secret),
    };
    drop(secret);
    let reply = reply.map_err(|fault| match fault {
        // An answer to the login that is not IMAP (IMAP text is ASCII: a refusal in another
        // language is one) may be a refusal: no faster than a refused login.
        Fault::Garbled(_) => End::Lost {
            why: fault.why(),
            pace: Pace::Login,
            asked: None,
        },
        fault => fault.into(),
    })?;
    if let Err(r) = reply {
        let refused = format!("the server refused the login: {}", r.said);
        return Err(match refusal::login(r.code.as_deref(), r.bad, &r.said) {
            // The same file would give the same secret: only the user can help.
            Refusal::Credentials if matches!(watch.secret, Secret::File(_)) => {
                End::Fatal(Error::LoginRefused {
                    url: url.to_string(),
                    said: r.said,
                })
            }
            // The command may give another one next time.
            Refusal::Credentials => End::Lost {
                why: refused,
                pace: Pace::Login,
                asked: None,
            },
            Refusal::Later {
                pace: Pace::Backoff,
                asked,
            } => End::Lost {
                why: format!("login failed for now: {}", r.said),
                pace: Pace::Backoff,
                asked,
            },
            Refusal::Later {
                pace: Pace::Login,
                asked,
            } => End::Lost {
                why: refused,
                pace: Pace::Login,
                asked,
            },
        });
    }
    s.capability()?;
    Ok(s)
}
