//! A scriptable IMAP4rev1 server on 127.0.0.1, plain (the watcher allows `imap://` without
//! STARTTLS to a loopback host only), to play the servers the watcher meets on the internet:
//! broken, slow, hostile, or a big provider saying what it says.
//!
//! By default it is a well-behaved server with one mailbox (header blocks added by
//! [`ImapServer::deliver`]): CAPABILITY, LOGIN, AUTHENTICATE XOAUTH2 with an initial response,
//! EXAMINE, `UID FETCH n:* (… BODY.PEEK[HEADER]<0.262144>)`, NOOP, IDLE (announcing each
//! delivery), DONE, LOGOUT. A script ([`ImapServer::script`]) replaces the greeting, the answer
//! to a command, or adds to an IDLE, for as many times as it says: bytes as they are, trickled,
//! a flood of lines, a literal without end, silence, BYE, a hang-up. It records what it
//! received, per connection: the command lines (tags stripped), the logins with the secret as
//! sent, the bytes it sent, when the client came and went. It stops on drop, also when a test
//! fails.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// What a well-behaved server's capabilities are here, unless [`ImapServer::capabilities`]
/// says otherwise.
pub const CAPABILITIES: &str = "IMAP4rev1 IDLE AUTH=XOAUTH2";
/// How much of a header block the watcher asks for (`BODY.PEEK[HEADER]<0.262144>`).
pub const HEADER_PART: usize = 262_144;
/// How often a connection looks for news (a delivery, a keepalive due) while it waits.
const TICK: Duration = Duration::from_millis(5);

/// When a script step runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum On {
    /// Instead of the greeting of a new connection.
    Greeting,
    /// Instead of the answer to this command (`"LOGIN"`, `"AUTHENTICATE"`, `"EXAMINE"`,
    /// `"UID FETCH"`, `"NOOP"`, `"IDLE"`…).
    Command(&'static str),
    /// Inside an IDLE, right after `+ idling`; the IDLE goes on afterwards unless it hung up.
    Idling,
}

/// One thing the server does. In bytes that it sends, `{tag}` is the tag of the command
/// answered.
#[derive(Clone, Debug)]
pub enum Act {
    /// These bytes, as they are.
    Send(Vec<u8>),
    /// These bytes one at a time, this far apart.
    Trickle(Vec<u8>, Duration),
    /// These lines (CRLF added), round and round, as fast as the client takes them, until at
    /// least this many bytes are sent; the last round is sent whole. A count rather than a time,
    /// so that a busy machine makes it last longer, not say less.
    Flood(Vec<Vec<u8>>, u64),
    /// `head`, then `len` bytes of `a` without a line break (a literal that `head` announces,
    /// or a line without end) until the client hangs up, through a small send buffer: what the
    /// client read of them before it refused them is about [`Connection::sent`].
    Stream(Vec<u8>, u64),
    /// Waits for the client's next line (recorded with the commands), e.g. its answer to a
    /// SASL challenge.
    Expect,
    /// Says nothing for this long.
    Pause(Duration),
    /// What a well-behaved server does here.
    Normal,
    /// Hangs up.
    Close,
}

impl Act {
    /// A line (CRLF added), e.g. `* BYE Session invalidated`.
    pub fn line(text: impl AsRef<[u8]>) -> Act {
        let mut bytes = text.as_ref().to_vec();
        bytes.extend_from_slice(b"\r\n");
        Act::Send(bytes)
    }

    /// The tagged end of the command (CRLF added), e.g. `NO [UNAVAILABLE] Try later`.
    pub fn tagged(text: impl AsRef<[u8]>) -> Act {
        let mut bytes = b"{tag} ".to_vec();
        bytes.extend_from_slice(text.as_ref());
        bytes.extend_from_slice(b"\r\n");
        Act::Send(bytes)
    }
}

/// A login as the server received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Login {
    /// Which connection, from 0.
    pub connection: usize,
    /// `LOGIN` or `XOAUTH2`.
    pub how: &'static str,
    pub user: String,
    /// The password, or the XOAUTH2 bearer token.
    pub secret: String,
}

/// One connection as the server saw it.
#[derive(Clone, Debug)]
pub struct Connection {
    pub opened: Instant,
    /// When the client hung up (or the server did).
    pub closed: Option<Instant>,
    /// Each command line without its tag, and each `DONE`, in order.
    pub lines: Vec<String>,
    /// When each of them came.
    pub at: Vec<Instant>,
    /// Bytes the server wrote into the connection.
    pub sent: u64,
}

impl Connection {
    /// The command names, e.g. `["LOGIN", "EXAMINE", "UID FETCH", "IDLE", "DONE"]`.
    pub fn verbs(&self) -> Vec<String> {
        self.lines.iter().map(|l| verb(l)).collect()
    }
}

struct Rule {
    on: On,
    left: usize,
    acts: Vec<Act>,
}

struct Mailbox {
    uidvalidity: u32,
    next_uid: u32,
    /// UID and header block of each message, in order.
    messages: Vec<(u32, Vec<u8>)>,
}

impl Mailbox {
    /// Adds a message's header block; its UID.
    fn add(&mut self, message: &[u8]) -> u32 {
        let end = [&b"\r\n\r\n"[..], b"\n\n"]
            .iter()
            .filter_map(|blank| {
                let at = message.windows(blank.len()).position(|w| w == *blank)?;
                Some(at + blank.len())
            })
            .min()
            .unwrap_or(message.len());
        let uid = self.next_uid;
        self.next_uid += 1;
        self.messages.push((uid, message[..end].to_vec()));
        uid
    }
}

struct State {
    capabilities: String,
    mailbox: Mailbox,
    rules: Vec<Rule>,
    /// IDLE never tells of new mail (NOOP still does).
    silent_idle: bool,
    /// A line sent this often inside IDLE.
    keepalive: Option<(Vec<u8>, Duration)>,
    connections: Vec<Connection>,
    logins: Vec<Login>,
    /// A handle of every socket, to shut them all down on drop.
    sockets: Vec<TcpStream>,
    threads: Vec<JoinHandle<()>>,
}

struct Shared {
    state: Mutex<State>,
    stop: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A test that failed while holding it leaves the record as good as it was.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The server; stopped (every connection closed, every thread joined) on drop.
pub struct ImapServer {
    pub port: u16,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl ImapServer {
    /// A well-behaved server with an empty mailbox of UIDVALIDITY 1; messages get UIDs from 1.
    pub fn start() -> ImapServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                capabilities: CAPABILITIES.to_string(),
                mailbox: Mailbox {
                    uidvalidity: 1,
                    next_uid: 1,
                    messages: Vec::new(),
                },
                rules: Vec::new(),
                silent_idle: false,
                keepalive: None,
                connections: Vec::new(),
                logins: Vec::new(),
                sockets: Vec::new(),
                threads: Vec::new(),
            }),
            stop: AtomicBool::new(false),
        });
        let accepting = Arc::clone(&shared);
        let accept = thread::spawn(move || {
            for stream in listener.incoming() {
                if accepting.stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let shared = Arc::clone(&accepting);
                let mut state = accepting.lock();
                let n = state.connections.len();
                state.connections.push(Connection {
                    opened: Instant::now(),
                    closed: None,
                    lines: Vec::new(),
                    at: Vec::new(),
                    sent: 0,
                });
                state.sockets.push(stream.try_clone().unwrap());
                state
                    .threads
                    .push(thread::spawn(move || serve(stream, n, &shared)));
            }
        });
        ImapServer {
            port,
            shared,
            accept: Some(accept),
        }
    }

    /// `imap://USER@127.0.0.1:PORT`, the user's `@` encoded.
    pub fn url(&self, user: &str) -> String {
        format!(
            "imap://{}@127.0.0.1:{}",
            user.replace('@', "%40"),
            self.port
        )
    }

    /// The next `times` times `on` comes, the server does `acts` instead.
    pub fn script(&self, on: On, times: usize, acts: Vec<Act>) {
        self.shared.lock().rules.push(Rule {
            on,
            left: times,
            acts,
        });
    }

    /// What the server says it can do, e.g. `IMAP4rev1` for a server without IDLE.
    pub fn capabilities(&self, capabilities: &str) {
        self.shared.lock().capabilities = capabilities.to_string();
    }

    /// IDLE never announces new mail, as some servers' IDLE stops doing after a while.
    pub fn silent_idle(&self) {
        self.shared.lock().silent_idle = true;
    }

    /// Sends `line` (CRLF added) every `every` inside IDLE, as Dovecot's `* OK Still here`.
    pub fn keepalive(&self, line: &str, every: Duration) {
        self.shared.lock().keepalive = Some((format!("{line}\r\n").into_bytes(), every));
    }

    /// Adds a message to the mailbox (its header block is all a client can fetch); its UID.
    pub fn deliver(&self, message: &[u8]) -> u32 {
        self.shared.lock().mailbox.add(message)
    }

    /// Adds the messages at once: one announcement for them all.
    pub fn deliver_all(&self, messages: &[Vec<u8>]) {
        let mut state = self.shared.lock();
        for m in messages {
            state.mailbox.add(m);
        }
    }

    pub fn connections(&self) -> Vec<Connection> {
        self.shared.lock().connections.clone()
    }

    /// The command names of each connection, in order.
    pub fn verbs(&self) -> Vec<Vec<String>> {
        self.connections().iter().map(Connection::verbs).collect()
    }

    pub fn logins(&self) -> Vec<Login> {
        self.shared.lock().logins.clone()
    }
}

impl Drop for ImapServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop, which then sees the stop.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        let (sockets, threads) = {
            let mut state = self.shared.lock();
            (
                std::mem::take(&mut state.sockets),
                std::mem::take(&mut state.threads),
            )
        };
        for socket in sockets {
            let _ = socket.shutdown(Shutdown::Both);
        }
        for t in threads {
            let _ = t.join();
        }
    }
}

/// The command name of a line without its tag: its first word, or two for `UID …`.
pub fn verb(line: &str) -> String {
    let mut words = line.split(' ');
    let first = words.next().unwrap_or("").to_ascii_uppercase();
    match first.as_str() {
        "UID" => format!("UID {}", words.next().unwrap_or("").to_ascii_uppercase()),
        _ => first,
    }
}

// ---------------------------------------------------------------------------------------------
// One connection

/// The server's side of one connection: lines in from a reader thread, answers out.
struct Peer<'a> {
    n: usize,
    out: TcpStream,
    lines: Receiver<Vec<u8>>,
    /// Set by the reader thread when the client has hung up.
    gone: Arc<AtomicBool>,
    shared: &'a Shared,
    /// The message count this connection has told the client.
    told: usize,
}

/// Why a connection ends: the client left, the script hung up, or the server stops.
struct Ended;

type Served = Result<(), Ended>;

impl From<io::Error> for Ended {
    fn from(_: io::Error) -> Ended {
        Ended
    }
}

fn serve(stream: TcpStream, n: usize, shared: &Shared) {
    let gone = Arc::new(AtomicBool::new(false));
    let (tx, lines) = mpsc::channel();
    let reader = {
        let stream = stream.try_clone().unwrap();
        let gone = Arc::clone(&gone);
        thread::spawn(move || read_lines(stream, &tx, &gone))
    };
    // Short, so that a blocked write notices a stop or a client gone.
    stream
        .set_write_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut peer = Peer {
        n,
        out: stream,
        lines,
        gone,
        shared,
        told: 0,
    };
    let _ = peer.session();
    let _ = peer.out.shutdown(Shutdown::Both);
    let _ = reader.join();
    let mut state = shared.lock();
    let c = &mut state.connections[n];
    c.closed.get_or_insert_with(Instant::now);
}

/// Sends each line the client writes (CR LF gone) until it hangs up.
fn read_lines(stream: TcpStream, tx: &mpsc::Sender<Vec<u8>>, gone: &AtomicBool) {
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = Vec::new();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    line.pop();
                }
                if tx.send(line).is_err() {
                    break;
                }
            }
        }
    }
    gone.store(true, Ordering::SeqCst);
}

impl Peer<'_> {
    fn session(&mut self) -> Served {
        let greeting = format!("* OK [CAPABILITY {}] ready\r\n", self.capabilities());
        if let Some(acts) = self.scripted(|on| on == On::Greeting) {
            self.run(&acts, "*", |p| p.send(greeting.as_bytes()))?;
        } else {
            self.send(greeting.as_bytes())?;
        }
        loop {
            let line = self.next_line()?;
            let text = String::from_utf8_lossy(&line).into_owned();
            let (tag, rest) = text.split_once(' ').unwrap_or((text.as_str(), ""));
            if tag.eq_ignore_ascii_case("DONE") && rest.is_empty() {
                self.record("DONE".into());
                continue;
            }
            let tag = tag.to_string();
            let mut command = rest.to_string();
            // A literal (`{n}`, e.g. a password with a space in it): go ahead, then its bytes
            // and the rest of the command come; recorded as a quoted string.
            while let Some(n) = literal_announced(&command) {
                self.send(b"+ go ahead\r\n")?;
                let more = String::from_utf8_lossy(&self.next_line()?).into_owned();
                let (literal, after) = more.split_at(n.min(more.len()));
                command.truncate(command.rfind('{').unwrap());
                command.push_str(&format!("\"{literal}\"{after}"));
            }
            self.command(&tag, &command)?;
        }
    }

    fn command(&mut self, tag: &str, command: &str) -> Served {
        self.record(command.to_string());
        let verb = verb(command);
        let args: Vec<&str> = command.split(' ').skip(verb.split(' ').count()).collect();
        let arg = |i: usize| args.get(i).copied().unwrap_or("").trim_matches('"');
        match verb.as_str() {
            "LOGIN" => self.login("LOGIN", arg(0), arg(1)),
            "AUTHENTICATE" => {
                let (user, token) = xoauth2(arg(1));
                self.login("XOAUTH2", &user, &token);
            }
            _ => {}
        }
        let normal = |p: &mut Peer| p.normal(tag, &verb, &args);
        match self.scripted(|on| matches!(on, On::Command(v) if v == verb)) {
            Some(acts) => self.run(&acts, tag, normal),
            None => normal(self),
        }
    }

    /// The answer of a well-behaved server.
    fn normal(&mut self, tag: &str, verb: &str, args: &[&str]) -> Served {
        let ok = |what: &str| format!("{tag} OK {what}\r\n");
        let capabilities = self.capabilities();
        let answer = match verb {
            "CAPABILITY" => format!("* CAPABILITY {capabilities}\r\n{}", ok("done")),
            "LOGIN" | "AUTHENTICATE" => ok(&format!("[CAPABILITY {capabilities}] logged in")),
            "EXAMINE" | "SELECT" => {
                let state = self.shared.lock();
                let m = &state.mailbox;
                let (exists, validity, next) = (m.messages.len(), m.uidvalidity, m.next_uid);
                drop(state);
                self.told = exists;
                format!(
                    "* {exists} EXISTS\r\n* 0 RECENT\r\n* FLAGS (\\Seen \\Answered)\r\n\
                     * OK [UIDVALIDITY {validity}] UIDs valid\r\n* OK [UIDNEXT {next}] next\r\n\
                     {}",
                    ok("[READ-ONLY] examined")
                )
            }
            "UID FETCH" => {
                let from = args
                    .first()
                    .and_then(|set| set.split(':').next())
                    .and_then(|n| n.parse::<u32>().ok())
                    .unwrap_or(u32::MAX);
                let mut bytes = self.news();
                bytes.extend(self.fetch(from));
                bytes.extend(ok("fetched").into_bytes());
                return self.send(&bytes);
            }
            "NOOP" => {
                let mut bytes = self.news();
                bytes.extend(ok("nothing").into_bytes());
                return self.send(&bytes);
            }
            "IDLE" => return self.idle(tag),
            "LOGOUT" => {
                self.send(format!("* BYE logging out\r\n{}", ok("bye")).as_bytes())?;
                return Err(Ended);
            }
            _ => format!("{tag} BAD not here\r\n"),
        };
        self.send(answer.as_bytes())
    }

    fn capabilities(&self) -> String {
        self.shared.lock().capabilities.clone()
    }

    /// `* N EXISTS` when the mailbox grew since the client was last told.
    fn news(&mut self) -> Vec<u8> {
        let exists = self.shared.lock().mailbox.messages.len();
        if exists == self.told {
            return Vec::new();
        }
        self.told = exists;
        format!("* {exists} EXISTS\r\n").into_bytes()
    }

    /// The FETCH responses for every message with a UID of `from` or above, or for the last
    /// message when there is none (RFC 3501: `n:*` always holds the last one).
    fn fetch(&self, from: u32) -> Vec<u8> {
        let state = self.shared.lock();
        let messages = &state.mailbox.messages;
        let mut wanted: Vec<usize> = (0..messages.len())
            .filter(|&i| messages[i].0 >= from)
            .collect();
        if wanted.is_empty() && !messages.is_empty() {
            wanted.push(messages.len() - 1);
        }
        let mut bytes = Vec::new();
        for i in wanted {
            let (uid, header) = &messages[i];
            let part = &header[..header.len().min(HEADER_PART)];
            bytes.extend(
                format!(
                    "* {} FETCH (UID {uid} BODY[HEADER]<0> {{{}}}\r\n",
                    i + 1,
                    part.len()
                )
                .into_bytes(),
            );
            bytes.extend_from_slice(part);
            bytes.extend_from_slice(b")\r\n");
        }
        bytes
    }

    fn idle(&mut self, tag: &str) -> Served {
        self.send(b"+ idling\r\n")?;
        if let Some(acts) = self.scripted(|on| on == On::Idling) {
            self.run(&acts, tag, |_| Ok(()))?;
        }
        let (silent, keepalive) = {
            let state = self.shared.lock();
            (state.silent_idle, state.keepalive.clone())
        };
        let mut next_keepalive = keepalive.as_ref().map(|(_, every)| Instant::now() + *every);
        loop {
            if !silent {
                let news = self.news();
                if !news.is_empty() {
                    self.send(&news)?;
                }
            }
            if let (Some((line, every)), Some(at)) = (&keepalive, next_keepalive)
                && Instant::now() >= at
            {
                self.send(line)?;
                next_keepalive = Some(at + *every);
            }
            let Some(line) = self.line_within(TICK)? else {
                continue;
            };
            let text = String::from_utf8_lossy(&line).into_owned();
            self.record(text.clone());
            if text.eq_ignore_ascii_case("DONE") {
                return self.send(format!("{tag} OK idle done\r\n").as_bytes());
            }
            // Anything else inside IDLE is a client error.
            self.send(b"* BAD expected DONE\r\n")?;
        }
    }

    /// Runs a script's acts; `normal` is what [`Act::Normal`] does.
    fn run(&mut self, acts: &[Act], tag: &str, normal: impl Fn(&mut Peer) -> Served) -> Served {
        let tagged = |bytes: &[u8]| replace(bytes, b"{tag}", tag.as_bytes());
        for act in acts {
            match act {
                Act::Send(bytes) => self.send(&tagged(bytes))?,
                Act::Trickle(bytes, every) => {
                    for b in tagged(bytes) {
                        self.send(&[b])?;
                        self.pause(*every)?;
                    }
                }
                Act::Flood(lines, bytes) => {
                    let mut round = Vec::new();
                    while round.len() < 64 * 1024 {
                        for l in lines {
                            round.extend_from_slice(&tagged(l));
                            round.extend_from_slice(b"\r\n");
                        }
                    }
                    let mut sent = 0;
                    while sent < *bytes {
                        self.send(&round)?;
                        sent += round.len() as u64;
                    }
                }
                Act::Expect => {
                    let line = self.next_line()?;
                    self.record(String::from_utf8_lossy(&line).into_owned());
                }
                Act::Stream(head, len) => {
                    self.small_send_buffer();
                    self.send(&tagged(head))?;
                    let chunk = vec![b'a'; 16 * 1024];
                    let mut left = *len;
                    while left > 0 {
                        let n = left.min(chunk.len() as u64) as usize;
                        self.send(&chunk[..n])?;
                        left -= n as u64;
                    }
                }
                Act::Pause(wait) => self.pause(*wait)?,
                Act::Normal => normal(self)?,
                Act::Close => return Err(Ended),
            }
        }
        Ok(())
    }

    /// The acts of the first rule for this moment that has times left, using one.
    fn scripted(&self, now: impl Fn(On) -> bool) -> Option<Vec<Act>> {
        let mut state = self.shared.lock();
        let rule = state.rules.iter_mut().find(|r| now(r.on) && r.left > 0)?;
        rule.left -= 1;
        Some(rule.acts.clone())
    }

    fn record(&self, line: String) {
        let mut state = self.shared.lock();
        let c = &mut state.connections[self.n];
        c.lines.push(line);
        c.at.push(Instant::now());
    }

    fn login(&self, how: &'static str, user: &str, secret: &str) {
        let login = Login {
            connection: self.n,
            how,
            user: user.to_string(),
            secret: secret.to_string(),
        };
        self.shared.lock().logins.push(login);
    }

    /// The next line from the client, however long it takes.
    fn next_line(&self) -> Result<Vec<u8>, Ended> {
        loop {
            if let Some(line) = self.line_within(TICK)? {
                return Ok(line);
            }
        }
    }

    /// The next line from the client, or `None` when none came within `wait`.
    fn line_within(&self, wait: Duration) -> Result<Option<Vec<u8>>, Ended> {
        self.check()?;
        match self.lines.recv_timeout(wait) {
            Ok(line) => Ok(Some(line)),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(Ended),
        }
    }

    /// Writes all of `bytes`, counting what the client's side took, until a stop or hang-up.
    fn send(&mut self, bytes: &[u8]) -> Served {
        let mut off = 0;
        while off < bytes.len() {
            self.check()?;
            match self.out.write(&bytes[off..]) {
                Ok(0) => return Err(Ended),
                Ok(n) => {
                    off += n;
                    self.shared.lock().connections[self.n].sent += n as u64;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    fn pause(&self, wait: Duration) -> Served {
        let until = Instant::now() + wait;
        while Instant::now() < until {
            self.check()?;
            thread::sleep(TICK.min(until.saturating_duration_since(Instant::now())));
        }
        Ok(())
    }

    fn check(&self) -> Served {
        match self.shared.stop.load(Ordering::SeqCst) || self.gone.load(Ordering::SeqCst) {
            true => Err(Ended),
            false => Ok(()),
        }
    }

    /// A send buffer of a few KiB: what the client did not read stays on its side, so the count
    /// of bytes sent tells how much of a literal it took.
    fn small_send_buffer(&self) {
        use std::os::fd::AsRawFd;
        let size: libc::c_int = 4096;
        // SAFETY: a valid socket and an int-sized option value.
        unsafe {
            libc::setsockopt(
                self.out.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                (&raw const size).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
    }
}

/// The length of the literal that ends `command` (`{n}`), if one does.
fn literal_announced(command: &str) -> Option<usize> {
    command.strip_suffix('}')?.rsplit_once('{')?.1.parse().ok()
}

/// The user and bearer token of an XOAUTH2 initial response (base64 of
/// `user=U^Aauth=Bearer T^A^A`); empty where it holds none.
fn xoauth2(response: &str) -> (String, String) {
    let decoded = String::from_utf8_lossy(&base64(response)).into_owned();
    let mut user = String::new();
    let mut token = String::new();
    for field in decoded.split('\x01') {
        if let Some(u) = field.strip_prefix("user=") {
            user = u.to_string();
        } else if let Some(t) = field.strip_prefix("auth=Bearer ") {
            token = t.to_string();
        }
    }
    (user, token)
}

/// Standard base64, padding optional; what is not base64 is skipped.
fn base64(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut bits, mut n) = (0u32, 0);
    for c in text.bytes() {
        let Some(v) = ALPHABET.iter().position(|&a| a == c) else {
            continue;
        };
        bits = (bits << 6) | v as u32;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
        }
    }
    out
}

/// `bytes` with every `from` replaced by `to`.
fn replace(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}
