//! The watcher's connection: TCP with keepalive, TLS through rustls (the ring provider and the
//! platform verifier, as for the relay), and reads that end at a deadline or at SIGTERM.
//!
//! Every read waits in poll(2) on the socket and on the stop pipe, so a blocked watcher notices
//! SIGTERM at once, and no read can outlive its deadline.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection};

/// How a read or write ended other than with data.
#[derive(Debug)]
pub enum Fault {
    /// Network, TLS or protocol trouble: worth a reconnect. Says what happened.
    Lost(String),
    /// The deadline passed before the server had said all it had to.
    TimedOut,
    /// The server's answer is not IMAP (imap-next's word for what is wrong with it).
    Garbled(String),
    /// The server refused a command that only needs to be tried again, and may have said when.
    Refused {
        why: String,
        asked: Option<Duration>,
    },
    /// SIGTERM (or SIGINT) arrived.
    Stopped,
}

impl Fault {
    /// What a line of ours says about it.
    pub fn why(self) -> String {
        match self {
            Fault::Lost(why) | Fault::Refused { why, .. } => why,
            Fault::TimedOut => "the server did not answer in time".into(),
            Fault::Garbled(what) => format!("the server's answer: {what}"),
            Fault::Stopped => "stopped".into(),
        }
    }
}

/// Bytes to and from the server, each call bounded by a deadline. A [`Transport`] over the
/// network; a script of reads in the tests and the fuzz target.
pub trait Wire {
    /// Reads what is there, waiting until `deadline` at most.
    fn read(&mut self, buf: &mut [u8], deadline: Instant) -> Result<usize, Fault>;
    fn write_all(&mut self, bytes: &[u8], deadline: Instant) -> Result<(), Fault>;
    /// Whether SIGTERM still ends a read (not for the LOGOUT after it).
    fn set_stoppable(&mut self, _stoppable: bool) {}
}

impl Fault {
    pub fn io(what: &str, e: &io::Error) -> Fault {
        let why = match e.kind() {
            io::ErrorKind::ConnectionRefused => "connection refused".to_string(),
            io::ErrorKind::ConnectionReset => "connection reset".to_string(),
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => return Fault::TimedOut,
            io::ErrorKind::UnexpectedEof => "the server closed the connection".to_string(),
            // rustls reports certificate and handshake failures through the stream.
            io::ErrorKind::InvalidData => e.to_string(),
            _ => e.to_string(),
        };
        Fault::Lost(format!("{what}: {why}"))
    }
}

/// The TLS settings of every connection: the system's CAs (or SSL_CERT_FILE), no way around them.
pub fn tls_config() -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls_platform_verifier::Verifier::new(provider.clone())
        .map_err(|e| format!("no certificate verifier: {e}"))?;
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up: {e}"))?
        .dangerous()
        // Not dangerous: this is the platform verifier, checking against the system's CAs.
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

pub struct Transport {
    sock: TcpStream,
    tls: Option<Box<ClientConnection>>,
    stop: RawFd,
    /// Cleared for the LOGOUT after SIGTERM, which must still be read.
    stoppable: bool,
}

/// Idle time before the first keepalive probe, the time between probes, and how many may go
/// unanswered: a dead peer is noticed within about two minutes even when IDLE says nothing.
const KEEPALIVE: (i32, i32, i32) = (60, 15, 4);

impl Transport {
    /// Connects to the first address of `host` that answers before `deadline`.
    pub fn connect(
        host: &str,
        port: u16,
        stop: RawFd,
        deadline: Instant,
    ) -> Result<Transport, Fault> {
        let addrs = (host, port)
            .to_socket_addrs()
            .map_err(|e| Fault::Lost(format!("{host}: host not found (DNS): {e}")))?;
        let mut last = Fault::Lost(format!("{host}: host not found (DNS)"));
        for addr in addrs {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match TcpStream::connect_timeout(&addr, left) {
                Ok(sock) => {
                    let _ = sock.set_nodelay(true);
                    keepalive(&sock);
                    return Ok(Transport {
                        sock,
                        tls: None,
                        stop,
                        stoppable: true,
                    });
                }
                Err(e) => last = Fault::io(&format!("connecting to {addr}"), &e),
            }
        }
        Err(last)
    }

    /// The TLS handshake, certificate checked against `host`.
    pub fn start_tls(
        &mut self,
        config: &Arc<ClientConfig>,
        host: &str,
        deadline: Instant,
    ) -> Result<(), Fault> {
        let name = ServerName::try_from(host.to_string())
            .map_err(|_| Fault::Lost(format!("TLS: {host} is not a valid server name")))?;
        let mut conn = ClientConnection::new(config.clone(), name)
            .map_err(|e| Fault::Lost(format!("TLS: {e}")))?;
        while conn.is_handshaking() {
            self.set_timeouts(deadline)?;
            conn.complete_io(&mut self.sock)
                .map_err(|e| Fault::io("TLS handshake", &e))?;
        }
        self.tls = Some(Box::new(conn));
        Ok(())
    }

    /// SO_RCVTIMEO and SO_SNDTIMEO for the blocking calls poll does not guard: the handshake and
    /// writes.
    fn set_timeouts(&self, deadline: Instant) -> Result<(), Fault> {
        set_timeouts(&self.sock, deadline)
    }

    fn wait_readable(&self, deadline: Instant) -> Result<(), Fault> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Fault::TimedOut);
            }
            let ms = i32::try_from(left.as_millis().max(1)).unwrap_or(i32::MAX);
            let mut fds = [
                libc::pollfd {
                    fd: self.sock.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.stop,
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            let watched = if self.stoppable { 2 } else { 1 };
            // SAFETY: fds is a valid array of `watched` pollfd structs.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), watched, ms) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(Fault::io("poll", &e));
            }
            if self.stoppable && fds[1].revents != 0 {
                return Err(Fault::Stopped);
            }
            if fds[0].revents != 0 {
                return Ok(());
            }
        }
    }
}

impl Wire for Transport {
    fn set_stoppable(&mut self, stoppable: bool) {
        self.stoppable = stoppable;
    }

    fn read(&mut self, buf: &mut [u8], deadline: Instant) -> Result<usize, Fault> {
        loop {
            if let Some(tls) = &mut self.tls {
                match tls.reader().read(buf) {
                    Ok(0) => return Err(Fault::Lost("the server closed the connection".into())),
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(Fault::io("reading", &e)),
                }
            }
            self.wait_readable(deadline)?;
            match &mut self.tls {
                None => {
                    return match self.sock.read(buf) {
                        Ok(0) => Err(Fault::Lost("the server closed the connection".into())),
                        Ok(n) => Ok(n),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => Err(Fault::io("reading", &e)),
                    };
                }
                Some(tls) => {
                    match tls.read_tls(&mut self.sock) {
                        Ok(0) => {
                            return Err(Fault::Lost("the server closed the connection".into()));
                        }
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(Fault::io("reading", &e)),
                    }
                    if let Err(e) = tls.process_new_packets() {
                        return Err(Fault::Lost(format!("TLS: {e}")));
                    }
                    // Alerts and key updates the record may call for.
                    set_timeouts(&self.sock, deadline)?;
                    flush_tls(tls, &mut self.sock).map_err(|e| Fault::io("writing", &e))?;
                }
            }
        }
    }

    fn write_all(&mut self, bytes: &[u8], deadline: Instant) -> Result<(), Fault> {
        self.set_timeouts(deadline)?;
        let result = match &mut self.tls {
            None => self.sock.write_all(bytes),
            Some(tls) => tls
                .writer()
                .write_all(bytes)
                .and_then(|()| flush_tls(tls, &mut self.sock)),
        };
        result.map_err(|e| Fault::io("writing", &e))
    }
}

fn set_timeouts(sock: &TcpStream, deadline: Instant) -> Result<(), Fault> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(Fault::TimedOut);
    }
    let left = Some(left.max(Duration::from_millis(1)));
    sock.set_read_timeout(left)
        .and_then(|()| sock.set_write_timeout(left))
        .map_err(|e| Fault::io("socket", &e))
}

fn flush_tls(tls: &mut ClientConnection, sock: &mut TcpStream) -> io::Result<()> {
    while tls.wants_write() {
        tls.write_tls(sock)?;
    }
    sock.flush()
}

fn keepalive(sock: &TcpStream) {
    let fd = sock.as_raw_fd();
    let set = |level, name, value: i32| {
        // SAFETY: a valid socket and an int-sized option value.
        unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                (&raw const value).cast(),
                size_of::<i32>() as libc::socklen_t,
            )
        };
    };
    // Best effort: without them the IDLE renewal still notices a dead peer, only later.
    set(libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, KEEPALIVE.0);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, KEEPALIVE.1);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPCNT, KEEPALIVE.2);
}

/// The server's side as a script: each read gets the next piece, as the network would hand it
/// over; after the last one the server has closed the connection. What is written is dropped.
#[cfg(any(test, fuzzing))]
pub struct Script(pub std::collections::VecDeque<Vec<u8>>);

#[cfg(any(test, fuzzing))]
impl Script {
    /// `data` in the pieces a network might hand over: `seed` picks their sizes (1 to 64 bytes,
    /// or 4 KiB at a time), and now and then an empty piece, a read that timed out.
    pub fn split(seed: u8, data: &[u8]) -> Script {
        let mut state = u32::from(seed) | 1;
        let mut pieces = std::collections::VecDeque::new();
        let mut rest = data;
        while !rest.is_empty() {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let pick = (state >> 16) as usize;
            if pick.is_multiple_of(17) {
                pieces.push_back(Vec::new());
                continue;
            }
            let size = match seed & 1 {
                0 => 1 + pick % 64,
                _ => 4096,
            };
            let (piece, after) = rest.split_at(size.min(rest.len()));
            pieces.push_back(piece.to_vec());
            rest = after;
        }
        Script(pieces)
    }
}

#[cfg(any(test, fuzzing))]
impl Wire for Script {
    fn read(&mut self, buf: &mut [u8], _deadline: Instant) -> Result<usize, Fault> {
        let Some(mut piece) = self.0.pop_front() else {
            return Err(Fault::Lost("the server closed the connection".into()));
        };
        let n = piece.len().min(buf.len());
        buf[..n].copy_from_slice(&piece[..n]);
        if n < piece.len() {
            self.0.push_front(piece.split_off(n));
        }
        // An empty piece is a read that timed out.
        if n == 0 {
            return Err(Fault::TimedOut);
        }
        Ok(n)
    }

    fn write_all(&mut self, _bytes: &[u8], _deadline: Instant) -> Result<(), Fault> {
        Ok(())
    }
}
