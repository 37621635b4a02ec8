//! One IMAP session over a [`Wire`]: imap-next keeps the protocol (tags, literals, IDLE, SASL);
//! this drives it, bounded whatever the server sends.
//!
//! - **Time**: each exchange (the greeting, a command and its whole answer, IDLE's start and
//!   end) has one deadline, `--timeout` from its start, however the bytes are spread out. Inside
//!   IDLE the server may say nothing until the renewal, but a response it has begun must end
//!   within `--timeout`.
//! - **Memory**: of what a server says between commands only the latest UIDVALIDITY, UIDNEXT and
//!   two capabilities are kept, and a fetched header block is handed on as it arrives. A literal
//!   beyond the header block asked for, or a response beyond it and some framing, is refused
//!   when announced ([`Frames`]), before it is read.
//! - **Text**: what the server says reaches our lines only through [`printable`].

use std::borrow::Cow;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use imap_codec::fragmentizer::{FragmentInfo, Fragmentizer};
use imap_next::client::{Client, Event, Options};
use imap_next::imap_types::auth::{AuthMechanism, AuthenticateData};
use imap_next::imap_types::command::{Command, CommandBody};
use imap_next::imap_types::core::Tag;
use imap_next::imap_types::fetch::{MessageDataItem, MessageDataItemName, Section};
use imap_next::imap_types::response::{
    Capability, Code, Data, GreetingKind, Status, StatusBody, StatusKind,
};
use imap_next::imap_types::secret::Secret;
use imap_next::{Interrupt, Io, State};

use super::refusal;
use super::transport::{Fault, Transport, Wire};
use crate::text::printable;

/// The largest literal taken: the header block the watcher asks for, no more.
pub const MAX_LITERAL: u32 = crate::message::HEADER_CAP as u32;
/// The largest response taken: that literal and the framing of a FETCH answer around it.
const MAX_RESPONSE: u32 = MAX_LITERAL + 16 * 1024;
const HEADER_PART: NonZeroU32 = NonZeroU32::new(MAX_LITERAL).unwrap();

/// What EXAMINE said about the mailbox.
#[derive(Debug, Default)]
pub struct Examined {
    pub uidvalidity: Option<u32>,
    pub uidnext: Option<u32>,
    pub exists: u32,
}

/// A NO or BAD, and what the server said, made printable.
#[derive(Debug)]
pub struct Refused {
    /// The response code's name, e.g. `AUTHENTICATIONFAILED` (RFC 5530).
    pub code: Option<String>,
    pub bad: bool,
    pub said: String,
}

impl Refused {
    /// The refusal of a command that the watcher only retries: later, and no sooner than the
    /// server asked.
    pub fn fault(self, command: &str) -> Fault {
        Fault::Refused {
            asked: refusal::asked_wait(&self.said),
            why: format!("{command} refused: {}", self.said),
        }
    }
}

/// Why an IDLE ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Woken {
    /// The server announced new mail.
    Changed,
    /// Time to renew it.
    Renew,
}

/// The header blocks one fetch found above a UID.
#[derive(Debug, Default)]
pub struct Found {
    /// How many messages, and the highest UID among them.
    pub count: u32,
    pub last: Option<u32>,
    /// Each came with a higher UID than the one before, as servers answer (in the order of
    /// the mailbox, which is the order of UIDs): then no message below `last` is still to come.
    pub ascending: bool,
}

/// Where a FETCH answer goes: its UID, and its header block if it has one.
type OnFetch<'a> = &'a mut dyn FnMut(u32, Option<&[u8]>);

/// How long a read may wait.
#[derive(Clone, Copy)]
enum Until {
    /// The exchange's deadline.
    Answer(Instant),
    /// IDLE: silence until the renewal, then a begun response gets `--timeout`.
    Idle(Instant),
}

/// The framing of what the server sends, followed before imap-next sees a byte of it
/// (imap-codec's fragmentizer, keeping no bytes): where each response ends, what a line
/// announces as a literal, and since when a response is under way.
struct Frames {
    fragments: Fragmentizer,
    /// Bytes taken in all, and where the current response began.
    fed: u64,
    start: u64,
    since: Option<Instant>,
}

impl Frames {
    fn new() -> Frames {
        Frames {
            // Size 0: the fragmentizer only frames; imap-next keeps the bytes.
            fragments: Fragmentizer::new(0),
            fed: 0,
            start: 0,
            since: None,
        }
    }

    fn take(&mut self, bytes: &[u8], now: Instant) -> Result<(), Fault> {
        self.fragments.enqueue_bytes(bytes);
        self.fed += bytes.len() as u64;
        while let Some(fragment) = self.fragments.progress() {
            if let FragmentInfo::Line {
                announcement: Some(literal),
                ..
            } = fragment
                && literal.length > MAX_LITERAL
            {
                return Err(Fault::Lost(format!(
                    "the server announced a literal of {} bytes, more than the {MAX_LITERAL} asked for",
                    literal.length
                )));
            }
            if self.fragments.is_message_complete() {
                self.start += fragment.range().end as u64;
                self.since = None;
            }
        }
        let pending = self.fed - self.start;
        if pending > u64::from(MAX_RESPONSE) {
            return Err(Fault::Lost(format!(
                "the server sent a response of more than {MAX_RESPONSE} bytes"
            )));
        }
        if pending > 0 && self.since.is_none() {
            self.since = Some(now);
        }
        Ok(())
    }
}

pub struct Session<W: Wire = Transport> {
    client: Client,
    transport: W,
    frames: Frames,
    next_tag: u32,
    timeout: Duration,
    /// The two capabilities the watcher cares about, from the last list the server sent; a
    /// server's list is read, never kept.
    idle: bool,
    starttls: bool,
    listed: bool,
    /// The greeting said PREAUTH: the transport authenticated the user already (an imapd behind
    /// ssh or socat), so there is no login.
    pub preauth: bool,
    /// Set by every EXISTS the server sends: new mail may be there.
    pub changed: bool,
    exists: u32,
    /// The latest of each code that EXAMINE answers with.
    uidvalidity: Option<u32>,
    uidnext: Option<u32>,
    buf: Vec<u8>,
}

fn options(discard_greeting: bool) -> Options {
    let mut options = Options::default();
    options.max_response_size = MAX_RESPONSE;
    options.discard_greeting = discard_greeting;
    // Some servers end lines with a bare LF; the line is still clear.
    options.crlf_relaxed = true;
    options
}

impl<W: Wire> Session<W> {
    /// Reads the greeting, within `timeout` as a whole. A server that greets with BYE (too many
    /// connections) is a fault: the caller retries later.
    pub fn greet(transport: W, timeout: Duration) -> Result<Session<W>, Fault> {
        let mut s = Session {
            client: Client::new(options(false)),
            transport,
            frames: Frames::new(),
            next_tag: 0,
            timeout,
            idle: false,
            starttls: false,
            listed: false,
            preauth: false,
            changed: false,
            exists: 0,
            uidvalidity: None,
            uidnext: None,
            buf: vec![0; 16 * 1024],
        };
        let deadline = Instant::now() + timeout;
        loop {
            if let Event::GreetingReceived { greeting } = s.event(Until::Answer(deadline))? {
                if greeting.kind == GreetingKind::Bye {
                    return Err(bye(greeting.text.as_ref()));
                }
                if let Some(Code::Capability(caps)) = greeting.code {
                    s.listed(caps.as_ref());
                }
                s.preauth = greeting.kind == GreetingKind::PreAuth;
                return Ok(s);
            }
        }
    }

    /// The server offers IDLE (RFC 2177).
    pub fn offers_idle(&self) -> bool {
        self.idle
    }

    pub fn offers_starttls(&self) -> bool {
        self.starttls
    }

    fn listed(&mut self, caps: &[Capability]) {
        self.idle = caps.contains(&Capability::Idle);
        self.starttls = caps.contains(&Capability::StartTls);
        self.listed = true;
    }

    fn forget_capabilities(&mut self) {
        self.idle = false;
        self.starttls = false;
        self.listed = false;
    }

    pub fn transport_mut(&mut self) -> &mut W {
        &mut self.transport
    }

    /// After STARTTLS: a fresh protocol state on the now secured transport (RFC 3501: forget
    /// what was said in clear, capabilities too).
    pub fn restart_after_tls(&mut self) {
        self.client = Client::new(options(true));
        self.frames = Frames::new();
        self.forget_capabilities();
    }

    fn tag(&mut self) -> Tag<'static> {
        self.next_tag += 1;
        Tag::try_from(format!("D{}", self.next_tag)).expect("letters and digits make a tag")
    }

    /// The next protocol event, doing the reads and writes it needs.
    fn event(&mut self, until: Until) -> Result<Event, Fault> {
        loop {
            match self.client.next() {
                Ok(event) => return Ok(event),
                Err(Interrupt::Io(Io::Output(bytes))) => {
                    let deadline = match until {
                        Until::Answer(deadline) => deadline,
                        Until::Idle(_) => Instant::now() + self.timeout,
                    };
                    self.transport.write_all(&bytes, deadline)?;
                }
                Err(Interrupt::Io(Io::NeedMoreInput)) => {
                    let deadline = match (until, self.frames.since) {
                        (Until::Answer(deadline), _) => deadline,
                        (Until::Idle(_), Some(begun)) => begun + self.timeout,
                        (Until::Idle(renewal), None) => renewal,
                    };
                    let n = self.transport.read(&mut self.buf, deadline)?;
                    self.frames.take(&self.buf[..n], Instant::now())?;
                    self.client.enqueue_input(&self.buf[..n]);
                }
                Err(Interrupt::Error(e)) => return Err(Fault::Garbled(printable(e.to_string()))),
            }
        }
    }

    /// What every response outside a command's own end means for the watcher.
    fn note(&mut self, event: Event) -> Result<(), Fault> {
        match event {
            Event::DataReceived { data } => match data {
                // Any EXISTS, not only a larger one: an expunge and a new message may leave the
                // count as it was, and a fetch too many costs one round trip.
                Data::Exists(n) => {
                    self.changed = true;
                    self.exists = n;
                }
                Data::Expunge(_) => self.exists = self.exists.saturating_sub(1),
                Data::Capability(caps) => self.listed(caps.as_ref()),
                _ => {}
            },
            Event::StatusReceived { status } => match status {
                Status::Bye(body) => return Err(bye(body.text.as_ref())),
                Status::Untagged(StatusBody {
                    code: Some(code), ..
                }) => match code {
                    Code::UidValidity(v) => self.uidvalidity = Some(v.get()),
                    Code::UidNext(n) => self.uidnext = Some(n.get()),
                    Code::Capability(caps) => self.listed(caps.as_ref()),
                    // Keepalives, alerts, anything else: read and let go.
                    _ => {}
                },
                _ => {}
            },
            _ => {}
        }
        Ok(())
    }

    /// Sends one command and reads up to its tagged answer, within `--timeout` as a whole.
    /// Each FETCH answer goes to `fetched` as it arrives, with its UID and header block.
    fn command(
        &mut self,
        body: CommandBody<'static>,
        mut fetched: Option<OnFetch>,
    ) -> Result<Result<(), Refused>, Fault> {
        let tag = self.tag();
        let deadline = Instant::now() + self.timeout;
        self.client.enqueue_command(Command {
            tag: tag.clone(),
            body,
        });
        loop {
            match self.event(Until::Answer(deadline))? {
                Event::StatusReceived {
                    status: Status::Tagged(tagged),
                } if tagged.tag == tag => return Ok(reply(tagged.body)),
                Event::CommandRejected { status, .. } => match status {
                    Status::Tagged(tagged) => return Ok(reply(tagged.body)),
                    _ => return Err(Fault::Lost("the server rejected a command".into())),
                },
                Event::AuthenticateStatusReceived { status, .. } => match status {
                    Status::Tagged(tagged) => return Ok(reply(tagged.body)),
                    Status::Bye(body) => return Err(bye(body.text.as_ref())),
                    Status::Untagged(_) => {
                        return Err(Fault::Lost("an untagged answer to AUTHENTICATE".into()));
                    }
                },
                // Only when stopped while IDLE was on its way: end it, so the command can go.
                Event::IdleAccepted { .. } => {
                    self.client.set_idle_done();
                }
                Event::AuthenticateContinuationRequestReceived { .. } => {
                    // The initial response went with the command; a challenge after it is the
                    // error report of XOAUTH2, answered with an empty line to get the NO.
                    let _ = self
                        .client
                        .set_authenticate_data(AuthenticateData::Continue(Secret::new(
                            Cow::Borrowed(&[][..]),
                        )));
                }
                Event::DataReceived {
                    data: Data::Fetch { items, .. },
                } => {
                    let Some(fetched) = fetched.as_mut() else {
                        continue;
                    };
                    let mut uid = None;
                    let mut header = None;
                    for item in items.as_ref() {
                        match item {
                            MessageDataItem::Uid(u) => uid = Some(u.get()),
                            MessageDataItem::BodyExt {
                                section: Some(Section::Header(None)),
                                data,
                                ..
                            } => header = data.0.as_ref().map(|s| s.as_ref()),
                            _ => {}
                        }
                    }
                    if let Some(uid) = uid {
                        fetched(uid, header);
                    }
                }
                other => self.note(other)?,
            }
        }
    }

    /// Asks for the capabilities, unless the last answer brought them.
    pub fn capability(&mut self) -> Result<(), Fault> {
        if !self.listed {
            self.command(CommandBody::Capability, None)?
                .map_err(|r| r.fault("CAPABILITY"))?;
        }
        Ok(())
    }

    pub fn starttls(&mut self) -> Result<Result<(), Refused>, Fault> {
        self.command(CommandBody::StartTLS, None)
    }

    pub fn login(&mut self, user: &str, password: &str) -> Result<Result<(), Refused>, Fault> {
        let body = CommandBody::login(user.to_string(), password.to_string())
            .map_err(|_| Fault::Lost("the user or password cannot be sent in IMAP".into()))?;
        // A login's OK often carries the capabilities after it.
        self.forget_capabilities();
        self.command(body, None)
    }

    /// SASL XOAUTH2 with the initial response (RFC 4959), as Gmail and Outlook take it.
    pub fn xoauth2(&mut self, user: &str, token: &str) -> Result<Result<(), Refused>, Fault> {
        let ir = format!("user={user}\x01auth=Bearer {token}\x01\x01").into_bytes();
        let body = CommandBody::authenticate_with_ir(AuthMechanism::XOAuth2, ir);
        self.forget_capabilities();
        self.command(body, None)
    }

    /// EXAMINE: read-only, so nothing the watcher does can change a flag.
    pub fn examine(&mut self, mailbox: &str) -> Result<Result<Examined, Refused>, Fault> {
        let body = CommandBody::examine(mailbox.to_string())
            .map_err(|_| Fault::Lost("the mailbox name cannot be sent in IMAP".into()))?;
        self.exists = 0;
        self.uidvalidity = None;
        self.uidnext = None;
        if let Err(refused) = self.command(body, None)? {
            return Ok(Err(refused));
        }
        // What EXAMINE reported is known; only later growth is news.
        self.changed = false;
        Ok(Ok(Examined {
            exists: self.exists,
            uidvalidity: self.uidvalidity,
            uidnext: self.uidnext,
        }))
    }

    /// The UID of the last message, for a server that gave no UIDNEXT.
    pub fn last_uid(&mut self) -> Result<u32, Fault> {
        if self.exists == 0 {
            return Ok(0);
        }
        let body = CommandBody::fetch("*", vec![MessageDataItemName::Uid], false)
            .map_err(|_| Fault::Lost("FETCH * cannot be sent".into()))?;
        let mut last = 0;
        self.command(body, Some(&mut |uid, _| last = last.max(uid)))?
            .map_err(|r| r.fault("FETCH"))?;
        Ok(last)
    }

    /// Hands `each` the UID and header block of every message with a UID above `after`, as the
    /// answer arrives, without setting \Seen (BODY.PEEK; the mailbox is EXAMINEd, too). What was
    /// found comes back also when the answer was cut off, so that a slow answer to a long
    /// catch-up still makes progress.
    pub fn fetch_after(
        &mut self,
        after: u32,
        each: &mut dyn FnMut(u32, &[u8]),
    ) -> (Found, Result<(), Fault>) {
        self.changed = false;
        let set = format!("{}:*", after.saturating_add(1));
        let items = vec![
            MessageDataItemName::Uid,
            // No more than a delivery reads of a header block: a message with a header of many
            // megabytes cannot stall the watcher, and the rest would not change the decision.
            MessageDataItemName::BodyExt {
                section: Some(Section::Header(None)),
                partial: Some((0, HEADER_PART)),
                peek: true,
            },
        ];
        let mut found = Found {
            ascending: true,
            ..Found::default()
        };
        let Ok(body) = CommandBody::fetch(set.as_str(), items, true) else {
            return (found, Err(Fault::Lost("a UID out of range".into())));
        };
        let mut take = |uid: u32, header: Option<&[u8]>| {
            // `N:*` includes the last message even when its UID is below N (RFC 3501 6.4.8); a
            // FETCH without the header is a flag change.
            if let Some(header) = header
                && uid > after
            {
                found.count += 1;
                found.ascending &= found.last.is_none_or(|last| uid > last);
                found.last = found.last.max(Some(uid));
                each(uid, header);
            }
        };
        let ended = match self.command(body, Some(&mut take)) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(refused)) => Err(refused.fault("UID FETCH")),
            Err(fault) => Err(fault),
        };
        (found, ended)
    }

    pub fn noop(&mut self) -> Result<(), Fault> {
        self.command(CommandBody::Noop, None)?
            .map_err(|r| r.fault("NOOP"))
    }

    /// IDLE until the server announces new mail or `renew` passes, then DONE.
    pub fn idle(&mut self, renew: Duration) -> Result<Woken, Fault> {
        let tag = self.tag();
        let deadline = Instant::now() + self.timeout;
        self.client.enqueue_command(Command {
            tag: tag.clone(),
            body: CommandBody::Idle,
        });
        loop {
            match self.event(Until::Answer(deadline))? {
                Event::IdleAccepted { .. } => break,
                Event::IdleRejected { status, .. } => {
                    let refused = match status {
                        Status::Tagged(tagged) => match reply(tagged.body) {
                            Err(refused) => refused,
                            Ok(()) => return Err(Fault::Lost("IDLE ended at once".into())),
                        },
                        Status::Bye(body) => return Err(bye(body.text.as_ref())),
                        Status::Untagged(body) => Refused {
                            code: None,
                            bad: false,
                            said: printable(body.text.to_string()),
                        },
                    };
                    return Err(refused.fault("IDLE"));
                }
                other => self.note(other)?,
            }
        }
        let until = Instant::now() + renew;
        let woken = loop {
            if self.changed {
                break Woken::Changed;
            }
            match self.event(Until::Idle(until)) {
                Ok(event) => self.note(event)?,
                // Silence until the renewal: nothing had begun.
                Err(Fault::TimedOut) if self.frames.since.is_none() => break Woken::Renew,
                Err(e) => return Err(e),
            }
        };
        self.client.set_idle_done();
        let deadline = Instant::now() + self.timeout;
        loop {
            match self.event(Until::Answer(deadline))? {
                Event::StatusReceived {
                    status: Status::Tagged(tagged),
                } if tagged.tag == tag => {
                    return match reply(tagged.body) {
                        Ok(()) => Ok(woken),
                        Err(refused) => Err(refused.fault("IDLE")),
                    };
                }
                other => self.note(other)?,
            }
        }
    }

    /// LOGOUT, best effort and brief: the watcher is stopping anyway.
    pub fn logout(mut self) {
        self.transport.set_stoppable(false);
        self.timeout = self.timeout.min(Duration::from_secs(2));
        // Stopped inside IDLE: DONE first, or the LOGOUT would wait behind it.
        self.client.set_idle_done();
        let _ = self.command(CommandBody::Logout, None);
    }
}

fn bye(text: &str) -> Fault {
    Fault::Lost(format!("the server said BYE: {}", printable(text)))
}

fn reply(body: StatusBody<'static>) -> Result<(), Refused> {
    match body.kind {
        StatusKind::Ok => Ok(()),
        StatusKind::No | StatusKind::Bad => Err(Refused {
            code: body.code.as_ref().map(code_name),
            bad: body.kind == StatusKind::Bad,
            said: printable(body.text.to_string()),
        }),
    }
}

/// A response code's name, e.g. `AUTHENTICATIONFAILED` (RFC 5530).
fn code_name(code: &Code) -> String {
    let name = match code {
        Code::Other(other) => String::from_utf8_lossy(other.inner()).into_owned(),
        Code::Alert => "ALERT".into(),
        other => format!("{other:?}"),
    };
    let name: String = name
        .split(|c: char| !c.is_ascii_alphanumeric() && c != '-')
        .next()
        .unwrap_or("")
        .chars()
        .take(40)
        .collect();
    name.to_ascii_uppercase()
}

/// Drives a session over `data` as the watcher would: greeting, login, EXAMINE, the last UID, a
/// fetch, IDLE, NOOP and LOGOUT; the first byte picks how the rest is split into reads. For the
/// fuzz target, and for `cargo test`, which replays what it found. A panic, a hang or a runaway
/// allocation is a finding, and so is a line of ours with a control character in it, or a header
/// block beyond what was asked for.
#[cfg(any(test, fuzzing))]
pub fn exercise(data: &[u8]) {
    use super::transport::Script;

    fn clean(line: &str) {
        assert!(!line.chars().any(char::is_control), "{line:?}");
    }
    fn drive(s: &mut Session<Script>) -> Result<(), Fault> {
        s.capability()?;
        if let Err(refused) = s.login("me@example.org", "secret")? {
            clean(&refused.said);
        }
        if let Err(refused) = s.examine("INBOX")? {
            clean(&refused.said);
        }
        s.last_uid()?;
        s.fetch_after(3, &mut |uid, header| {
            assert!(uid > 3);
            assert!(header.len() <= MAX_LITERAL as usize);
        })
        .1?;
        s.idle(Duration::ZERO)?;
        s.noop()
    }

    let Some((&seed, rest)) = data.split_first() else {
        return;
    };
    let ended = match Session::greet(Script::split(seed, rest), Duration::from_secs(1)) {
        Ok(mut s) => {
            let ended = drive(&mut s);
            s.logout();
            ended
        }
        Err(fault) => Err(fault),
    };
    if let Err(Fault::Lost(why) | Fault::Refused { why, .. } | Fault::Garbled(why)) = ended {
        clean(&why);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::super::transport::Script;
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(3);

    fn session(pieces: &[&[u8]]) -> Result<Session<Script>, Fault> {
        let script = Script(pieces.iter().map(|p| p.to_vec()).collect::<VecDeque<_>>());
        Session::greet(script, TIMEOUT)
    }

    fn fetch(s: &mut Session<Script>) -> Result<Vec<(u32, Vec<u8>)>, Fault> {
        let mut seen = Vec::new();
        s.fetch_after(4, &mut |uid, header| seen.push((uid, header.to_vec())))
            .1?;
        Ok(seen)
    }

    /// The fuzz target's findings (fuzz/fuzz_targets/session.rs), and the seeds it starts from.
    #[test]
    fn fuzz_findings_replay() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fuzz-session");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            exercise(&std::fs::read(entry.unwrap().path()).unwrap());
            n += 1;
        }
        assert!(n > 0);
    }

    #[test]
    fn a_literal_beyond_the_header_block_is_refused_when_announced() {
        let mut s = session(&[
            b"* OK [CAPABILITY IMAP4rev1 IDLE] hi\r\n",
            b"* 1 FETCH (UID 5 BODY[HEADER]<0> {2147483648}\r\n",
            b"never read",
        ])
        .unwrap();
        let Err(Fault::Lost(why)) = fetch(&mut s) else {
            panic!("taken")
        };
        assert_eq!(
            why,
            "the server announced a literal of 2147483648 bytes, more than the 262144 asked for"
        );
        assert_eq!(s.transport.0, [b"never read".to_vec()]);
    }

    #[test]
    fn a_response_beyond_the_bound_is_refused_before_its_end() {
        let line = vec![b'x'; 64 * 1024];
        let mut pieces: Vec<&[u8]> = vec![b"* OK hi\r\n", b"* OK "];
        pieces.extend(std::iter::repeat_n(&line[..], 8));
        let mut s = session(&pieces).unwrap();
        let Err(Fault::Lost(why)) = s.noop() else {
            panic!("taken")
        };
        assert_eq!(why, "the server sent a response of more than 278528 bytes");
        assert_eq!(s.transport.0.len(), 4);
    }

    #[test]
    fn header_blocks_are_handed_on_and_untagged_codes_are_not_kept() {
        let flood = b"* OK [UIDNEXT 9] still here\r\n* OK [ALERT] look\r\n".repeat(10_000);
        let mut s = session(&[
            b"* OK [CAPABILITY IMAP4rev1 IDLE] hi\r\n",
            &flood,
            b"* 1 FETCH (UID 4 BODY[HEADER]<0> {5}\r\nA: 1\n)\r\n",
            b"* 2 FETCH (UID 5 BODY[HEADER]<0> {5}\r\nB: 2\n)\r\n* 2 FETCH (UID 5 FLAGS (\\Seen))\r\n",
            b"* 3 FETCH (BODY[HEADER]<0> {5}\r\nC: 3\n UID 7)\r\nD1 OK done\r\n",
        ])
        .unwrap();
        assert!(s.offers_idle());
        // UID 4 is the mark itself, which `5:*` may include.
        assert_eq!(
            fetch(&mut s).unwrap(),
            [(5, b"B: 2\n".to_vec()), (7, b"C: 3\n".to_vec())]
        );
        assert_eq!(s.uidnext, Some(9));
    }

    #[test]
    fn server_text_reaches_lines_clean() {
        let Err(Fault::Lost(why)) =
            session(&[b"* BYE \x1b[2J\x1b[1;31mgone\x07\x1b]0;t\x07 away\r\n"])
        else {
            panic!("taken")
        };
        assert_eq!(why, "the server said BYE: gone away");
        // IMAP text is 7-bit without NUL and CR (RFC 3501 TEXT-CHAR): imap-codec refuses the rest, so
        // it never reaches a line at all.
        for bad in [
            &b"* BYE \xe2\x80\xaeaway\r\n"[..],
            b"* BYE caf\xe9\r\n",
            b"* BYE a\0b\r\n",
            b"* BYE a\rb\r\n",
        ] {
            let Err(Fault::Garbled(what)) = session(&[bad]) else {
                panic!("taken")
            };
            assert_eq!(what, "Received malformed message");
        }
        let mut s = session(&[
            b"* OK hi\r\n",
            b"D1 BAD [ALERT] Request is throttled.\x1b[0m Suggested Backoff Time: 5000 milliseconds\r\n",
        ])
        .unwrap();
        let Err(Fault::Refused { why, asked }) = s.noop() else {
            panic!("taken")
        };
        assert_eq!(
            why,
            "NOOP refused: Request is throttled. Suggested Backoff Time: 5000 milliseconds"
        );
        assert_eq!(asked, Some(Duration::from_secs(5)));
    }

    #[test]
    fn idle_renews_on_silence_but_not_inside_a_begun_response() {
        let mut s = session(&[
            b"* OK [CAPABILITY IMAP4rev1 IDLE] hi\r\n",
            b"+ idling\r\n",
            b"",
            b"D1 OK done\r\n",
        ])
        .unwrap();
        assert_eq!(s.idle(Duration::ZERO).unwrap(), Woken::Renew);
        let mut s = session(&[b"* OK hi\r\n", b"+ idling\r\n", b"* OK St", b""]).unwrap();
        assert!(matches!(s.idle(Duration::ZERO), Err(Fault::TimedOut)));
        let mut s = session(&[
            b"* OK hi\r\n",
            b"+ idling\r\n",
            b"* OK Still here\r\n* 3 EXISTS\r\n",
            b"D1 OK done\r\n",
        ])
        .unwrap();
        assert_eq!(s.idle(Duration::from_secs(60)).unwrap(), Woken::Changed);
    }
}
