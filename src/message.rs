//! The message on standard input: a bounded read of the header block, a drain of the rest, and
//! what the headers say about whether the phone should wake up.

use std::fmt;
use std::fs::File;
use std::io::{self, ErrorKind, IsTerminal, Read};
use std::os::fd::AsFd;
use std::time::Duration;

use mail_parser::parsers::MessageStream;
use mail_parser::{HeaderName, HeaderValue};

/// Headers beyond this are not looked at: a real header block is a few KiB, and the bound keeps
/// memory flat whatever arrives.
pub const HEADER_CAP: usize = 256 * 1024;
/// A pipe hands over at most 64 KiB per read on Linux.
const CHUNK: usize = 64 * 1024;
/// The first read of the header is smaller: a buffer is zero-filled before each read, and every
/// 4 KiB page touched costs a page fault at start-up, while most header blocks fit in 16 KiB.
const FIRST_READ: usize = 16 * 1024;

/// Reads the message on standard input, if there is one: `None` when standard input is a
/// terminal (a manual run) or closed. Returns the header block; the rest is read and thrown
/// away so that a writer on a pipe never sees EPIPE.
pub fn read_stdin() -> io::Result<Option<Vec<u8>>> {
    let stdin = io::stdin();
    if stdin.is_terminal() {
        return Ok(None);
    }
    let mut input = match stdin.as_fd().try_clone_to_owned() {
        Ok(fd) => File::from(fd),
        Err(e) if e.raw_os_error() == Some(libc::EBADF) => return Ok(None),
        Err(e) => return Err(e),
    };
    let header = read_header(&mut input)?;
    // getmail hands over a regular file: nobody is waiting for the rest, so don't read it.
    if !input.metadata().is_ok_and(|m| m.is_file()) {
        drain(&mut input)?;
    }
    Ok(Some(header))
}

/// Reads up to and including the first empty line (LF or CRLF), at most [`HEADER_CAP`] bytes,
/// dropping a leading mbox `From ` line. What follows the header block may have been consumed.
pub fn read_header(input: &mut impl Read) -> io::Result<Vec<u8>> {
    // `buf[..filled]` holds the bytes; the rest is zeroed space kept for the next reads, so a
    // writer handing over one byte at a time does not cost a zero-fill per byte.
    let mut buf: Vec<u8> = Vec::new();
    let mut filled = 0;
    // Some(true) while inside a `From ` line being skipped; None until the first bytes are seen.
    let mut in_from_line: Option<bool> = None;
    let mut scanned = 0;
    loop {
        // Grows with what has come: 16 KiB, 16 KiB, 32 KiB, then 64 KiB per read.
        let want = filled.clamp(FIRST_READ, CHUNK).min(HEADER_CAP - filled);
        if want == 0 {
            break;
        }
        if buf.len() < filled + want {
            buf.resize(filled + want, 0);
        }
        let n = read_some(input, &mut buf[filled..filled + want])?;
        filled += n;
        let eof = n == 0;

        if in_from_line.is_none() {
            if filled < 5 && !eof && b"From ".starts_with(&buf[..filled]) {
                continue;
            }
            in_from_line = Some(buf[..filled].starts_with(b"From "));
        }
        if in_from_line == Some(true) {
            match buf[..filled].iter().position(|&b| b == b'\n') {
                Some(nl) => {
                    buf.copy_within(nl + 1..filled, 0);
                    filled -= nl + 1;
                    in_from_line = Some(false);
                }
                None => filled = 0,
            }
        }
        if let Some(end) = header_end(&buf[..filled], scanned) {
            filled = end;
            break;
        }
        // The blank line may straddle two reads: rescan the last two bytes.
        scanned = filled.saturating_sub(2);
        if eof {
            break;
        }
    }
    buf.truncate(filled);
    Ok(buf)
}

/// The length of the header block including its terminating empty line, if `buf` holds it all.
fn header_end(buf: &[u8], from: usize) -> Option<usize> {
    if buf.starts_with(b"\n") {
        return Some(1);
    }
    if buf.starts_with(b"\r\n") {
        return Some(2);
    }
    let mut i = from;
    while let Some(off) = buf[i..].iter().position(|&b| b == b'\n') {
        let nl = i + off;
        match buf.get(nl + 1..) {
            Some([b'\n', ..]) => return Some(nl + 2),
            Some([b'\r', b'\n', ..]) => return Some(nl + 3),
            _ => i = nl + 1,
        }
    }
    None
}

/// Reads and discards everything left, in a fixed buffer.
pub fn drain(input: &mut impl Read) -> io::Result<u64> {
    // The header read usually got the whole message: see EOF before zeroing a big buffer.
    let mut probe = [0u8; 512];
    let mut total = match read_some(input, &mut probe)? {
        0 => return Ok(0),
        n => n as u64,
    };
    let mut buf = [0u8; CHUNK];
    loop {
        match read_some(input, &mut buf)? {
            0 => return Ok(total),
            n => total += n as u64,
        }
    }
}

fn read_some(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match input.read(buf) {
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// What the headers say, as far as the decision to notify is concerned.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// The first `Auto-Submitted` value that is not `no`, lower-cased, e.g. `auto-replied`.
    pub auto_submitted: Option<String>,
    /// The first address of `From`.
    pub from: Option<String>,
    /// Whether a `Chat-Version` header is present: Delta Chat sets it on every chat message.
    pub chat: bool,
    /// `Date` as Unix time, with the header's text; `None` when missing or unparseable.
    pub date: Option<(i64, String)>,
}

/// Looks at the header block; garbage in gives a summary that says "not automatic".
///
/// The headers go through mail-parser's own header loop one at a time, each value dropped once
/// looked at: `MessageParser::parse_headers` would keep every header of the block, and 256 KiB
/// of tiny headers cost it more than 8 MiB. [`oracle`] is that whole-block parse: the tests
/// (over the fuzz corpus and real mail) and the fuzz target check that both decide alike.
pub fn summarize(header: &[u8]) -> Summary {
    let mut summary = Summary::default();
    let raw = |start: usize, end: usize| header.get(start..end).unwrap_or_default();
    // Like `Message::from()` and `Message::date()`: the last of each header counts.
    let mut from = None;
    let mut date = None;
    let mut stream = MessageStream::new(header);
    'headers: loop {
        // The start of a header, as in mail-parser's `MessageStream::parse_headers`.
        loop {
            match stream.peek() {
                Some(b'\n') | None => break 'headers,
                Some(ch) if !ch.is_ascii_whitespace() => break,
                _ => {
                    stream.next();
                }
            }
        }
        let Some(name) = stream.parse_header_name() else {
            if stream.is_eof() {
                break;
            }
            continue;
        };
        let start = stream.offset();
        // Only the values used are parsed; every header parser of mail-parser ends a value
        // where this one does, at a line break not followed by white space.
        let value = match name {
            HeaderName::From => stream.parse_address(),
            HeaderName::Date => stream.parse_date(),
            _ => {
                stream.parse_and_ignore();
                HeaderValue::Empty
            }
        };
        let end = stream.offset();
        match &name {
            HeaderName::AutoSubmitted if summary.auto_submitted.is_none() => {
                let word = first_word(raw(start, end));
                // An empty value says nothing; RFC 3834 treats a missing header as `no`.
                if !word.is_empty() && !word.eq_ignore_ascii_case(b"no") {
                    summary.auto_submitted =
                        Some(String::from_utf8_lossy(word).to_ascii_lowercase());
                }
            }
            HeaderName::Other(name) if name.eq_ignore_ascii_case("chat-version") => {
                summary.chat = true;
            }
            HeaderName::From => {
                from = value
                    .as_address()
                    .and_then(|a| a.first())
                    .and_then(|a| a.address())
                    .map(str::to_string);
            }
            HeaderName::Date => {
                date = value
                    .as_datetime()
                    .filter(|d| d.is_valid())
                    .zip(std::str::from_utf8(raw(start, end)).ok())
                    .map(|(d, text)| (d.to_timestamp(), text.trim().to_string()));
            }
            _ => {}
        }
    }
    summary.from = from;
    summary.date = date;
    summary
}

/// `summarize` on a whole-block parse by mail-parser, which keeps every header: the reference
/// the streaming walk above must agree with.
#[cfg(any(test, fuzzing))]
pub fn oracle(header: &[u8]) -> Summary {
    use mail_parser::MessageParser;
    let mut summary = Summary::default();
    let Some(message) = MessageParser::new().parse_headers(header) else {
        return summary;
    };
    let raw = |h: &mail_parser::Header| {
        header
            .get(h.offset_start as usize..h.offset_end as usize)
            .unwrap_or_default()
    };
    for h in message.headers() {
        match &h.name {
            HeaderName::AutoSubmitted if summary.auto_submitted.is_none() => {
                let word = first_word(raw(h));
                if !word.is_empty() && !word.eq_ignore_ascii_case(b"no") {
                    summary.auto_submitted =
                        Some(String::from_utf8_lossy(word).to_ascii_lowercase());
                }
            }
            HeaderName::Other(name) if name.eq_ignore_ascii_case("chat-version") => {
                summary.chat = true;
            }
            _ => {}
        }
    }
    summary.from = message
        .from()
        .and_then(|a| a.first())
        .and_then(|a| a.address())
        .map(str::to_string);
    summary.date = message
        .date()
        .filter(|d| d.is_valid())
        .zip(message.header_raw(HeaderName::Date))
        .map(|(d, text)| (d.to_timestamp(), text.trim().to_string()));
    summary
}

/// Why a message does not wake the phone.
#[derive(Debug, PartialEq, Eq)]
pub enum Skip {
    AutoSubmitted(String),
    FromSelf,
    NotChat,
    TooOld { max_age: Duration, date: String },
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Skip::AutoSubmitted(value) => write!(f, "auto-submitted ({value})"),
            Skip::FromSelf => f.write_str("from self"),
            Skip::NotChat => f.write_str("not a chat message"),
            Skip::TooOld { max_age, date } => write!(
                f,
                "older than {} (Date {date})",
                humantime::format_duration(*max_age)
            ),
        }
    }
}

/// The user's rules on top of RFC 3834.
#[derive(Debug, Default, Clone)]
pub struct Rules {
    /// Addresses whose mail does not notify, compared without case.
    pub skip_from: Vec<String>,
    pub only_chat: bool,
    pub max_age: Option<Duration>,
}

impl Rules {
    /// The first rule that says to skip, if any; `now` is Unix time.
    pub fn skip(&self, summary: &Summary, now: i64) -> Option<Skip> {
        if let Some(value) = &summary.auto_submitted {
            return Some(Skip::AutoSubmitted(value.clone()));
        }
        if let Some(from) = &summary.from
            && self
                .skip_from
                .iter()
                .any(|a| a.trim().eq_ignore_ascii_case(from))
        {
            return Some(Skip::FromSelf);
        }
        if self.only_chat && !summary.chat {
            return Some(Skip::NotChat);
        }
        if let (Some(max_age), Some((date, text))) = (self.max_age, &summary.date)
            && now.saturating_sub(*date) > i64::try_from(max_age.as_secs()).unwrap_or(i64::MAX)
        {
            return Some(Skip::TooOld {
                max_age,
                date: text.clone(),
            });
        }
        None
    }
}

/// The first token of a structured header value: folding white space and (nested) comments
/// skipped, ending at white space, `;` or a comment.
pub fn first_word(value: &[u8]) -> &[u8] {
    let mut i = 0;
    let mut depth = 0usize;
    while i < value.len() {
        match value[i] {
            b'\\' if depth > 0 => i += 1,
            b'(' => depth += 1,
            b')' if depth > 0 => depth -= 1,
            b' ' | b'\t' | b'\r' | b'\n' => {}
            _ if depth > 0 => {}
            _ => break,
        }
        i += 1;
    }
    let start = i.min(value.len());
    let len = value[start..]
        .iter()
        .position(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n' | b';' | b'('))
        .unwrap_or(value.len() - start);
    &value[start..start + len]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_of(input: &[u8]) -> Vec<u8> {
        read_header(&mut &input[..]).unwrap()
    }

    /// Hands out at most `n` bytes per read, like a slow pipe.
    struct Trickle<'a>(&'a [u8], usize);
    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.1.min(buf.len()).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn stops_at_the_blank_line() {
        assert_eq!(header_of(b"A: 1\nB: 2\n\nbody\n\nmore"), b"A: 1\nB: 2\n\n");
        assert_eq!(
            header_of(b"A: 1\r\nB: 2\r\n\r\nbody"),
            b"A: 1\r\nB: 2\r\n\r\n"
        );
        assert_eq!(header_of(b"\nbody"), b"\n");
        assert_eq!(header_of(b"\r\nbody"), b"\r\n");
        assert_eq!(header_of(b""), b"");
        assert_eq!(header_of(b"A: 1\nno blank line"), b"A: 1\nno blank line");
    }

    #[test]
    fn blank_line_split_across_reads() {
        let msg = b"From a@b Thu Jan  1 00:00:00 1970\r\nA: 1\r\n\r\nbody";
        for step in 1..8 {
            let got = read_header(&mut Trickle(msg, step)).unwrap();
            assert_eq!(got, b"A: 1\r\n\r\n", "step {step}");
        }
    }

    #[test]
    fn skips_from_line_only_at_the_start() {
        let cases: [(&[u8], &[u8]); 4] = [
            (b"From x@y Mon\nA: 1\n\nb", b"A: 1\n\n"),
            (b"A: 1\nFrom x@y\n\nb", b"A: 1\nFrom x@y\n\n"),
            (b"Fro", b"Fro"),
            (b"From: a@b\n\n", b"From: a@b\n\n"),
        ];
        for (input, header) in cases {
            assert_eq!(header_of(input), header, "{input:?}");
        }
    }

    #[test]
    fn header_is_capped() {
        let mut msg = b"X: ".to_vec();
        msg.resize(HEADER_CAP * 3, b'a');
        let got = header_of(&msg);
        assert_eq!(got.len(), HEADER_CAP);
    }

    #[test]
    fn endless_from_line_is_swallowed() {
        let mut msg = b"From ".to_vec();
        msg.resize(HEADER_CAP * 2, b'x');
        msg.extend_from_slice(b"\nA: 1\n\n");
        assert_eq!(header_of(&msg), b"A: 1\n\n");
    }

    /// Records the size of each read it is asked for.
    struct Sizes<'a>(&'a [u8], Vec<usize>);
    impl Read for Sizes<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.1.push(buf.len());
            self.0.read(buf)
        }
    }

    #[test]
    fn small_messages_touch_little_memory() {
        let mut input = Sizes(b"A: 1\n\nbody", Vec::new());
        read_header(&mut input).unwrap();
        drain(&mut input).unwrap();
        assert_eq!(input.1, [FIRST_READ, 512]);

        let big = vec![b'x'; HEADER_CAP];
        let mut input = Sizes(&big, Vec::new());
        read_header(&mut input).unwrap();
        assert_eq!(
            input.1[..4],
            [FIRST_READ, FIRST_READ, 2 * FIRST_READ, CHUNK]
        );
    }

    #[test]
    fn drain_reads_everything() {
        let data = vec![7u8; CHUNK * 3 + 5];
        assert_eq!(drain(&mut Trickle(&data, 1000)).unwrap(), data.len() as u64);
    }

    fn auto(header: &str) -> Option<String> {
        summarize(header.as_bytes()).auto_submitted
    }

    #[test]
    fn auto_submitted_forms() {
        let yes = |h: &str, v: &str| assert_eq!(auto(h).as_deref(), Some(v), "{h:?}");
        yes("Auto-Submitted: auto-replied\n\n", "auto-replied");
        yes("auto-submitted: Auto-Generated\n\n", "auto-generated");
        yes(
            "AUTO-SUBMITTED: auto-notified; owner-email=\"a@b\"\n\n",
            "auto-notified",
        );
        yes("Auto-Submitted:\n\tauto-replied\n\n", "auto-replied");
        yes(
            "Auto-Submitted: (vacation (nested) \\) ) auto-replied\n\n",
            "auto-replied",
        );
        yes("Auto-Submitted:auto-replied(why)\n\n", "auto-replied");
        yes("Auto-Submitted: auto-future-value\n\n", "auto-future-value");
        yes(
            "Auto-Submitted: no\nAuto-Submitted: auto-replied\n\n",
            "auto-replied",
        );
        yes(
            "Auto-Submitted: auto-replied\r\nSubject: x\r\n\r\n",
            "auto-replied",
        );
        yes("Auto-Submitted: =?utf-8?q?no?=\n\n", "=?utf-8?q?no?=");
    }

    #[test]
    fn not_automatic() {
        let no = |h: &str| assert_eq!(auto(h), None, "{h:?}");
        no("Auto-Submitted: no\n\n");
        no("Auto-Submitted: NO (a person wrote this)\n\n");
        no("Auto-Submitted: (comment) no; x=y\n\n");
        no("Auto-Submitted: no\nauto-submitted: No\n\n");
        no("Auto-Submitted:\n\n");
        no("X-Auto-Submitted: auto-replied\n\n");
        no("Subject: Auto-Submitted: auto-replied\n\n");
        no("Subject: hi\n\nAuto-Submitted: auto-replied\n");
        no("");
        no("\u{0}\u{1}garbage\u{ff}");
    }

    #[test]
    fn body_after_the_cap_is_not_a_header() {
        let mut msg = b"X: ".to_vec();
        msg.resize(HEADER_CAP, b'a');
        msg.extend_from_slice(b"\nAuto-Submitted: auto-replied\n\n");
        let header = header_of(&msg);
        assert_eq!(summarize(&header).auto_submitted, None);
    }

    #[test]
    fn from_chat_and_date() {
        let s = summarize(
            b"From: \"Alice\" <Alice@Example.org>\nChat-Version: 1.0\n\
              Date: Wed, 25 Nov 2026 10:00:00 +0100\n\n",
        );
        assert_eq!(s.from.as_deref(), Some("Alice@Example.org"));
        assert!(s.chat);
        assert_eq!(
            s.date,
            Some((1795597200, "Wed, 25 Nov 2026 10:00:00 +0100".to_string()))
        );
        let s = summarize(b"Date: the day after tomorrow\nX-Chat-Version: 1\n\n");
        assert_eq!((s.from, s.chat, s.date), (None, false, None));
    }

    #[test]
    fn rules_in_order() {
        let now = 1795597200;
        let summary = |h: &str| summarize(h.as_bytes());
        let rules = Rules {
            skip_from: vec!["me@example.org".into()],
            only_chat: true,
            max_age: Some(Duration::from_secs(3600)),
        };
        let old = "Date: Wed, 25 Nov 2026 07:59:59 +0000";
        let fresh = "Date: Wed, 25 Nov 2026 08:30:00 +0000";
        let check = |h: String| rules.skip(&summary(&h), now).map(|s| s.to_string());
        assert_eq!(
            check(format!(
                "From: ME@example.org\nAuto-Submitted: auto-replied\n{old}\n\n"
            )),
            Some("auto-submitted (auto-replied)".into())
        );
        assert_eq!(
            check("From: <me@EXAMPLE.org>\nChat-Version: 1.0\n\n".into()),
            Some("from self".into())
        );
        assert_eq!(
            check(format!("From: a@b\n{fresh}\n\n")),
            Some("not a chat message".into())
        );
        assert_eq!(
            check(format!("From: a@b\nChat-Version: 1.0\n{old}\n\n")),
            Some(format!("older than 1h (Date {})", &old[6..]))
        );
        assert_eq!(
            check(format!("From: a@b\nChat-Version: 1.0\n{fresh}\n\n")),
            None
        );
        assert_eq!(
            check("From: a@b\nChat-Version: 1.0\nDate: garbage\n\n".into()),
            None
        );
        assert_eq!(Rules::default().skip(&summary("From: a@b\n\n"), now), None);
    }

    #[test]
    fn first_word_edges() {
        let values: [&[u8]; 5] = [b"", b"   ", b"(unclosed", b" a b", b"x;y"];
        let words: Vec<&[u8]> = values.into_iter().map(first_word).collect();
        assert_eq!(words, [&b""[..], b"", b"", b"a", b"x"]);
    }

    /// Every input the fuzzer kept, the hostile corpus and real mail: the header read does not
    /// depend on how the bytes are split, and the streaming walk decides as mail-parser's
    /// whole-block parse does. What the fuzz target checks, without nightly flags.
    #[test]
    fn fuzz_findings_and_real_mail_replay() {
        let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
        let mut seen = 0;
        for dir in ["fuzz", "corpus", "hostile"] {
            let Ok(entries) = std::fs::read_dir(data.join(dir)) else {
                continue;
            };
            for entry in entries.flatten() {
                let input = std::fs::read(entry.path()).unwrap();
                let header = header_of(&input);
                // Each read zero-fills a 64 KiB buffer in a debug build: byte-sized reads are
                // the fuzz target's job, a few sizes do here.
                for step in [13, 4096] {
                    let got = read_header(&mut Trickle(&input, step)).unwrap();
                    assert_eq!(got, header, "{:?} in reads of {step}", entry.path());
                }
                assert_eq!(summarize(&header), oracle(&header), "{:?}", entry.path());
                seen += 1;
            }
        }
        assert!(
            seen > 500,
            "only {seen} inputs: tests/data/fuzz went missing"
        );
    }
}
