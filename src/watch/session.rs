//! One IMAP session over a [`Transport`]: imap-next keeps the protocol (tags, literals, IDLE,
//! SASL); this drives it with a deadline on every read and write.

use std::borrow::Cow;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

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

use super::transport::{Fault, Transport};

/// The largest response taken: far beyond any real one, with header blocks cut at
/// [`HEADER_PART`].
const MAX_RESPONSE: u32 = 8 * 1024 * 1024;
const HEADER_PART: NonZeroU32 = NonZeroU32::new(crate::message::HEADER_CAP as u32).unwrap();

/// What EXAMINE said about the mailbox.
#[derive(Debug, Default)]
pub struct Examined {
    pub uidvalidity: Option<u32>,
    pub uidnext: Option<u32>,
    pub exists: u32,
}

/// How a command ended, when it did not end the session.
pub enum Reply {
    Ok,
    /// NO or BAD, and what the server said.
    Refused {
        code: Option<String>,
        text: String,
    },
}

/// Why an IDLE ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Woken {
    /// The mailbox grew.
    Changed,
    /// Time to renew it.
    Renew,
}

pub struct Session {
    client: Client,
    transport: Transport,
    next_tag: u32,
    timeout: Duration,
    pub capabilities: Vec<Capability<'static>>,
    /// The greeting said PREAUTH: the transport authenticated the user already (an imapd behind
    /// ssh or socat), so there is no login.
    pub preauth: bool,
    /// Set by every EXISTS the server sends: new mail may be there.
    pub changed: bool,
    exists: u32,
    /// The codes of untagged OKs since the last command began (UIDVALIDITY, UIDNEXT).
    codes: Vec<Code<'static>>,
    fetched: Vec<(u32, Vec<u8>)>,
    /// The highest UID in any FETCH answer since it was last reset.
    max_uid: u32,
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

impl Session {
    /// Reads the greeting. `Ok(None)` for a server that greets with BYE (too many
    /// connections): the caller retries later.
    pub fn greet(transport: Transport, timeout: Duration) -> Result<Session, Fault> {
        let mut s = Session {
            client: Client::new(options(false)),
            transport,
            next_tag: 0,
            timeout,
            capabilities: Vec::new(),
            preauth: false,
            changed: false,
            exists: 0,
            codes: Vec::new(),
            fetched: Vec::new(),
            max_uid: 0,
            buf: vec![0; 16 * 1024],
        };
        loop {
            match s.event(None)? {
                Event::GreetingReceived { greeting } => {
                    if greeting.kind == GreetingKind::Bye {
                        return Err(Fault::Lost(format!(
                            "the server said BYE: {}",
                            greeting.text
                        )));
                    }
                    if let Some(Code::Capability(caps)) = greeting.code {
                        s.capabilities = caps.into_iter().collect();
                    }
                    s.preauth = greeting.kind == GreetingKind::PreAuth;
                    return Ok(s);
                }
                _ => continue,
            }
        }
    }

    pub fn has(&self, cap: &Capability) -> bool {
        self.capabilities.contains(cap)
    }

    pub fn transport_mut(&mut self) -> &mut Transport {
        &mut self.transport
    }

    /// After STARTTLS: a fresh protocol state on the now secured transport (RFC 3501: forget
    /// what was said in clear, capabilities too).
    pub fn restart_after_tls(&mut self) {
        self.client = Client::new(options(true));
        self.capabilities.clear();
    }

    fn tag(&mut self) -> Tag<'static> {
        self.next_tag += 1;
        Tag::try_from(format!("D{}", self.next_tag)).expect("letters and digits make a tag")
    }

    /// The next protocol event, doing the reads and writes it needs. Each read and write may
    /// take --timeout; inside IDLE (`idle_until`), where a server may rightly say nothing for
    /// minutes, a read waits until the renewal instead.
    fn event(&mut self, idle_until: Option<Instant>) -> Result<Event, Fault> {
        loop {
            match self.client.next() {
                Ok(event) => return Ok(event),
                Err(Interrupt::Io(Io::Output(bytes))) => {
                    self.transport
                        .write_all(&bytes, Instant::now() + self.timeout)?;
                }
                Err(Interrupt::Io(Io::NeedMoreInput)) => {
                    let deadline = idle_until.unwrap_or_else(|| Instant::now() + self.timeout);
                    let n = self.transport.read(&mut self.buf, deadline)?;
                    self.client.enqueue_input(&self.buf[..n]);
                }
                Err(Interrupt::Error(e)) => {
                    return Err(Fault::Lost(format!("the server's answer: {e}")));
                }
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
                Data::Capability(caps) => self.capabilities = caps.into_iter().collect(),
                Data::Fetch { items, .. } => {
                    let mut uid = None;
                    let mut header = None;
                    for item in items.into_iter() {
                        match item {
                            MessageDataItem::Uid(u) => uid = Some(u.get()),
                            MessageDataItem::BodyExt {
                                section: Some(Section::Header(None)),
                                data,
                                ..
                            } => header = data.0.map(|s| s.as_ref().to_vec()),
                            _ => {}
                        }
                    }
                    if let Some(uid) = uid {
                        self.max_uid = self.max_uid.max(uid);
                    }
                    if let (Some(uid), Some(header)) = (uid, header) {
                        self.fetched.push((uid, header));
                    }
                }
                _ => {}
            },
            Event::StatusReceived { status } => match status {
                Status::Bye(bye) => {
                    return Err(Fault::Lost(format!("the server said BYE: {}", bye.text)));
                }
                Status::Untagged(StatusBody {
                    code: Some(code), ..
                }) => self.codes.push(code),
                _ => {}
            },
            _ => {}
        }
        Ok(())
    }

    /// Sends one command and reads up to its tagged answer.
    fn command(&mut self, body: CommandBody<'static>) -> Result<Reply, Fault> {
        let tag = self.tag();
        self.codes.clear();
        let command = Command {
            tag: tag.clone(),
            body,
        };
        self.client.enqueue_command(command);
        loop {
            let event = self.event(None)?;
            match event {
                Event::StatusReceived {
                    status: Status::Tagged(tagged),
                } if tagged.tag == tag => return Ok(reply(tagged.body)),
                Event::CommandRejected { status, .. } => match status {
                    Status::Tagged(tagged) => return Ok(reply(tagged.body)),
                    _ => return Err(Fault::Lost("the server rejected a command".into())),
                },
                Event::AuthenticateStatusReceived { status, .. } => match status {
                    Status::Tagged(tagged) => return Ok(reply(tagged.body)),
                    Status::Bye(bye) => {
                        return Err(Fault::Lost(format!("the server said BYE: {}", bye.text)));
                    }
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
                other => self.note(other)?,
            }
        }
    }

    /// Asks for the capabilities, unless the last answer brought them.
    pub fn capability(&mut self) -> Result<(), Fault> {
        self.take_capability_code();
        if self.capabilities.is_empty() {
            match self.command(CommandBody::Capability)? {
                Reply::Ok => {}
                Reply::Refused { text, .. } => {
                    return Err(Fault::Lost(format!("CAPABILITY refused: {text}")));
                }
            }
        }
        Ok(())
    }

    fn take_capability_code(&mut self) {
        for code in self.codes.drain(..) {
            if let Code::Capability(caps) = code {
                self.capabilities = caps.into_iter().collect();
            }
        }
    }

    pub fn starttls(&mut self) -> Result<Reply, Fault> {
        self.command(CommandBody::StartTLS)
    }

    pub fn login(&mut self, user: &str, password: &str) -> Result<Reply, Fault> {
        let body = CommandBody::login(user.to_string(), password.to_string())
            .map_err(|_| Fault::Lost("the user or password cannot be sent in IMAP".into()))?;
        self.capabilities.clear();
        let reply = self.command(body)?;
        // A login's OK often carries the capabilities after it.
        self.take_capability_code();
        Ok(reply)
    }

    /// SASL XOAUTH2 with the initial response (RFC 4959), as Gmail and Outlook take it.
    pub fn xoauth2(&mut self, user: &str, token: &str) -> Result<Reply, Fault> {
        let ir = format!("user={user}\x01auth=Bearer {token}\x01\x01").into_bytes();
        let body = CommandBody::authenticate_with_ir(AuthMechanism::XOAuth2, ir);
        self.capabilities.clear();
        let reply = self.command(body)?;
        // A login's OK often carries the capabilities after it.
        self.take_capability_code();
        Ok(reply)
    }

    /// EXAMINE: read-only, so nothing the watcher does can change a flag.
    /// `Ok(Err(text))`: the server refused it, saying `text`.
    pub fn examine(&mut self, mailbox: &str) -> Result<Result<Examined, String>, Fault> {
        let body = CommandBody::examine(mailbox.to_string())
            .map_err(|_| Fault::Lost("the mailbox name cannot be sent in IMAP".into()))?;
        self.exists = 0;
        if let Reply::Refused { text, .. } = self.command(body)? {
            return Ok(Err(text));
        }
        let mut examined = Examined {
            exists: self.exists,
            ..Examined::default()
        };
        for code in &self.codes {
            match code {
                Code::UidValidity(v) => examined.uidvalidity = Some(v.get()),
                Code::UidNext(n) => examined.uidnext = Some(n.get()),
                _ => {}
            }
        }
        // What EXAMINE reported is known; only later growth is news.
        self.changed = false;
        Ok(Ok(examined))
    }

    /// The UID of the last message, for a server that gave no UIDNEXT.
    pub fn last_uid(&mut self) -> Result<u32, Fault> {
        if self.exists == 0 {
            return Ok(0);
        }
        let body = CommandBody::fetch("*", vec![MessageDataItemName::Uid], false)
            .map_err(|_| Fault::Lost("FETCH * cannot be sent".into()))?;
        self.max_uid = 0;
        match self.command(body)? {
            Reply::Ok => Ok(self.max_uid),
            Reply::Refused { text, .. } => Err(Fault::Lost(format!("FETCH refused: {text}"))),
        }
    }

    /// The header block of every message with a UID above `after`, lowest UID first, without
    /// setting \Seen (BODY.PEEK; the mailbox is EXAMINEd, too).
    pub fn fetch_after(&mut self, after: u32) -> Result<Vec<(u32, Vec<u8>)>, Fault> {
        self.changed = false;
        let first = after.saturating_add(1);
        let set = format!("{first}:*");
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
        let body = CommandBody::fetch(set.as_str(), items, true)
            .map_err(|_| Fault::Lost("a UID out of range".into()))?;
        self.fetched.clear();
        match self.command(body)? {
            Reply::Ok => {}
            Reply::Refused { text, .. } => {
                return Err(Fault::Lost(format!("UID FETCH refused: {text}")));
            }
        }
        let mut found = std::mem::take(&mut self.fetched);
        // `N:*` includes the last message even when its UID is below N (RFC 3501 6.4.8).
        found.retain(|(uid, _)| *uid > after);
        found.sort_by_key(|(uid, _)| *uid);
        found.dedup_by_key(|(uid, _)| *uid);
        Ok(found)
    }

    pub fn noop(&mut self) -> Result<(), Fault> {
        match self.command(CommandBody::Noop)? {
            Reply::Ok => Ok(()),
            Reply::Refused { text, .. } => Err(Fault::Lost(format!("NOOP refused: {text}"))),
        }
    }

    /// IDLE until the mailbox grows or `renew` passes, then DONE.
    pub fn idle(&mut self, renew: Duration) -> Result<Woken, Fault> {
        let tag = self.tag();
        self.client.enqueue_command(Command {
            tag: tag.clone(),
            body: CommandBody::Idle,
        });
        loop {
            match self.event(None)? {
                Event::IdleAccepted { .. } => break,
                Event::IdleRejected { status, .. } => {
                    return Err(Fault::Lost(format!(
                        "IDLE refused: {}",
                        status_text(&status)
                    )));
                }
                other => self.note(other)?,
            }
        }
        let until = Instant::now() + renew;
        let woken = loop {
            if self.changed {
                break Woken::Changed;
            }
            if Instant::now() >= until {
                break Woken::Renew;
            }
            match self.event(Some(until)) {
                Ok(event) => self.note(event)?,
                // The renewal is due: the read's deadline was IDLE's own.
                Err(Fault::Lost(_)) if Instant::now() >= until => break Woken::Renew,
                Err(e) => return Err(e),
            }
        };
        self.client.set_idle_done();
        loop {
            match self.event(None)? {
                Event::StatusReceived {
                    status: Status::Tagged(tagged),
                } if tagged.tag == tag => match tagged.body.kind {
                    StatusKind::Ok => return Ok(woken),
                    _ => return Err(Fault::Lost(format!("IDLE ended: {}", tagged.body.text))),
                },
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
        let _ = self.command(CommandBody::Logout);
    }
}

fn reply(body: StatusBody<'static>) -> Reply {
    match body.kind {
        StatusKind::Ok => Reply::Ok,
        StatusKind::No | StatusKind::Bad => Reply::Refused {
            code: body.code.as_ref().map(code_name),
            text: body.text.to_string(),
        },
    }
}

fn status_text(status: &Status) -> String {
    match status {
        Status::Untagged(body) => body.text.to_string(),
        Status::Tagged(t) => t.body.text.to_string(),
        Status::Bye(b) => b.text.to_string(),
    }
}

/// A response code's name, e.g. `AUTHENTICATIONFAILED` (RFC 5530).
fn code_name(code: &Code) -> String {
    match code {
        Code::Other(other) => {
            let raw = String::from_utf8_lossy(other.inner()).into_owned();
            raw.split_whitespace()
                .next()
                .unwrap_or("")
                .to_ascii_uppercase()
        }
        Code::Alert => "ALERT".into(),
        other => format!("{other:?}").to_ascii_uppercase(),
    }
}
