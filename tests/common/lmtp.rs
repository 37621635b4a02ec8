//! The two clients of a mail server that the Dovecot tests play: the mail server's side of
//! LMTP (RFC 2033), which hands a message over for delivery, and the phone's side of IMAP,
//! which logs in and stores its device token.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// One line-based connection: what was said is kept for the panic messages.
struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    transcript: String,
}

impl Conn {
    fn open(port: u16) -> Conn {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        // Longer than any delivery may take (Dovecot kills the program after 10 s).
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        // A command's last bytes go out at once, not after the server's delayed ACK of the
        // ones before (40 ms, which the reply times would show).
        stream.set_nodelay(true).unwrap();
        Conn {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
            transcript: String::new(),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
        // Enough to see the command, too little to show a token it carries.
        let first = bytes.split(|&b| b == b'\r').next().unwrap_or_default();
        let shown: String = String::from_utf8_lossy(first).chars().take(50).collect();
        self.transcript.push_str(&format!("C: {shown}\n"));
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).unwrap_or_else(|e| {
            panic!("reading from the server: {e}; so far:\n{}", self.transcript)
        });
        assert!(
            n > 0,
            "the server closed the connection:\n{}",
            self.transcript
        );
        let line = line.trim_end_matches(['\r', '\n']).to_string();
        self.transcript.push_str(&format!("S: {line}\n"));
        line
    }

    /// One IMAP response line: where it ends in a literal (`{N}`), its N bytes and the rest of
    /// the line come with it, as `{N}\r\n` and the bytes.
    fn response(&mut self) -> String {
        let mut line = self.line();
        while let Some(len) = line
            .strip_suffix('}')
            .and_then(|l| l.rsplit_once('{'))
            .and_then(|(_, n)| n.parse::<usize>().ok())
        {
            let mut literal = vec![0; len];
            self.reader
                .read_exact(&mut literal)
                .unwrap_or_else(|e| panic!("reading a literal: {e}; so far:\n{}", self.transcript));
            self.transcript.push_str(&format!("S: ({len} bytes)\n"));
            line.push_str("\r\n");
            line.push_str(&String::from_utf8_lossy(&literal));
            line.push_str(&self.line());
        }
        line
    }
}

/// An LMTP session, as a mail server holds it towards Dovecot.
pub struct Lmtp {
    conn: Conn,
}

/// What became of one message handed over.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// When the end of the data went out: from here on, delivery is Dovecot's.
    pub sent: Instant,
    /// When the reply came.
    pub replied: Instant,
    /// The reply for the one recipient, e.g. `250 2.0.0 <...> Saved`.
    pub reply: String,
}

impl Delivery {
    pub fn took(&self) -> Duration {
        self.replied - self.sent
    }
}

impl Lmtp {
    pub fn connect(port: u16) -> Lmtp {
        let mut lmtp = Lmtp {
            conn: Conn::open(port),
        };
        lmtp.expect(220);
        lmtp.conn.send(b"LHLO localhost\r\n");
        lmtp.expect(250);
        lmtp
    }

    /// Reads one reply, all its lines, and checks its code.
    fn expect(&mut self, code: u16) -> String {
        let want = code.to_string();
        loop {
            let line = self.conn.line();
            assert!(
                line.starts_with(&want),
                "expected {code} from LMTP:\n{}",
                self.conn.transcript
            );
            if line.as_bytes().get(3) != Some(&b'-') {
                return line;
            }
        }
    }

    /// Hands over `message` (bare LF or CRLF) for one recipient and waits for its reply,
    /// which must be 250.
    pub fn deliver(&mut self, from: &str, to: &str, message: &[u8]) -> Delivery {
        self.deliver_to_all(from, &[to], message).remove(0)
    }

    /// Hands over `message` for every recipient of `to` in one transaction, as a mail server
    /// does for several local recipients, and waits for their replies (LMTP gives one each,
    /// in order), which must be 250.
    pub fn deliver_to_all(&mut self, from: &str, to: &[&str], message: &[u8]) -> Vec<Delivery> {
        self.conn.send(format!("MAIL FROM:<{from}>\r\n").as_bytes());
        self.expect(250);
        for to in to {
            self.conn.send(format!("RCPT TO:<{to}>\r\n").as_bytes());
            self.expect(250);
        }
        self.conn.send(b"DATA\r\n");
        self.expect(354);
        let mut data = Vec::with_capacity(message.len() + 64);
        for line in message.split_inclusive(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\n").unwrap_or(line);
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.first() == Some(&b'.') {
                data.push(b'.');
            }
            data.extend_from_slice(line);
            data.extend_from_slice(b"\r\n");
        }
        // The end of the data in the same write as the data.
        data.extend_from_slice(b".\r\n");
        self.conn.writer.write_all(&data).unwrap();
        let sent = Instant::now();
        let lines = message.split_inclusive(|&b| b == b'\n').count();
        self.conn
            .transcript
            .push_str(&format!("C: ({lines} lines of data)\nC: .\n"));
        to.iter()
            .map(|_| {
                let reply = self.expect(250);
                Delivery {
                    sent,
                    replied: Instant::now(),
                    reply,
                }
            })
            .collect()
    }
}

impl Drop for Lmtp {
    fn drop(&mut self) {
        let _ = self.conn.writer.write_all(b"QUIT\r\n");
    }
}

/// An IMAP session, logged in.
pub struct Imap {
    conn: Conn,
    tag: u32,
    /// The capabilities the server announced after login.
    pub capabilities: Vec<String>,
    logged_out: bool,
}

impl Imap {
    pub fn login(port: u16, user: &str, password: &str) -> Imap {
        let mut imap = Imap {
            conn: Conn::open(port),
            tag: 0,
            capabilities: Vec::new(),
            logged_out: false,
        };
        let greeting = imap.conn.line();
        assert!(greeting.starts_with("* OK"), "{greeting}");
        let lines = imap.command(&format!("LOGIN \"{user}\" \"{password}\""));
        let ok = lines.last().unwrap();
        let caps = ok
            .split_once("[CAPABILITY ")
            .and_then(|(_, rest)| rest.split_once(']'))
            .map(|(caps, _)| caps)
            .unwrap_or_else(|| panic!("no capabilities after login: {ok}"));
        imap.capabilities = caps.split(' ').map(str::to_string).collect();
        imap
    }

    /// Sends `command` (which may hold non-synchronizing literals, CRLF and all) with a tag of
    /// its own, and returns every line up to the tagged one, which must say OK.
    pub fn command(&mut self, command: &str) -> Vec<String> {
        self.tag += 1;
        let tag = format!("a{}", self.tag);
        self.conn.send(format!("{tag} {command}\r\n").as_bytes());
        let mut lines = Vec::new();
        loop {
            let line = self.conn.response();
            let done = line.starts_with(&format!("{tag} "));
            lines.push(line);
            if done {
                break;
            }
        }
        assert!(
            lines.last().unwrap().starts_with(&format!("{tag} OK")),
            "IMAP command failed:\n{}",
            self.conn.transcript
        );
        lines
    }

    /// Logs out and waits until the server has closed the connection: the session is over.
    pub fn logout(mut self) {
        self.command("LOGOUT");
        let mut rest = String::new();
        while self.conn.reader.read_line(&mut rest).is_ok_and(|n| n > 0) {}
        self.logged_out = true;
    }
}

impl Drop for Imap {
    fn drop(&mut self) {
        if self.logged_out {
            return;
        }
        let _ = self.conn.writer.write_all(b"z LOGOUT\r\n");
    }
}
