//! Standard input, whatever it is: a terminal (no message), a regular file, a pipe, closed
//! altogether; big and hostile messages (huge lines, NULs, bare CRs, endless header blocks,
//! writers that stop mid-message), the committed hostile corpus, and the fuzzer's findings.
//! Every message is read to the end (the writer never sees EPIPE), gets a defined decision, and
//! costs bounded memory.
//!
//! Memory is measured with `/usr/bin/time -f %M` around the binary: the child's own peak RSS,
//! not that of this test process. The 8 MiB bound is for the binary users run, so it is asserted
//! when the tests run with `--release`; the debug build's code alone takes about 7 MiB, so there
//! the bound is on what a message adds to the cost of a plain one.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::sync::OnceLock;

use common::{Input, PLAIN, Run, Sandbox, data, exec, notified, token};

/// The header read's bound, as in src/message.rs.
const HEADER_CAP: usize = 256 * 1024;
/// The bound on the peak resident memory of one run, in KiB (release build).
const MAX_RSS_KIB: u64 = 8 * 1024;
/// What a hostile message may add to the peak RSS of a plain one: the 256 KiB header buffer,
/// the 64 KiB drain buffer, and the parse of the one `From` header whose address is used (a
/// 256 KiB address list takes about 3.4 MiB). Buffering the message, or every header, is more.
const MAX_GROWTH_KIB: u64 = 4096;
const MIB: usize = 1024 * 1024;

#[test]
fn terminal_stdin_means_no_message() {
    let (sb, relay) = Sandbox::with_relay();
    let t = token(7);
    // script(1) gives the child a pty as stdin; without one the binary would wait for a mail.
    let inner = format!("{} --url {} -v '{t}'", common::bin().display(), relay.url,);
    let mut cmd = sb.command_for("script");
    cmd.args(["-qec", &inner, "/dev/null"]);
    let r = exec(cmd, Input::Null);
    assert_eq!(r.said(), (0, ""));
    // The pty turns \n into \r\n.
    assert_eq!(r.stdout.replace("\r\n", "\n"), notified(&t));
    relay.assert_bodies(&[&t]);
}

/// Standard input closed altogether (fd 0 not open): no message, notify.
#[test]
fn stdin_closed() {
    let (sb, relay) = Sandbox::with_relay();
    let tok = token(61);
    let mut cmd = sb.command();
    cmd.args(["--url", &relay.url, &tok]);
    // Runs after the redirections: the pipe goes in as fd 0 and is closed again, so the
    // automatic message written to it is never seen and cannot cause a skip.
    // SAFETY: close(2) is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::close(0);
            Ok(())
        });
    }
    let r = exec(cmd, "Auto-Submitted: auto-replied\n\nbody\n");
    assert_eq!(r.said(), (0, ""));
    relay.assert_bodies(&[&tok]);
}

// ---------------------------------------------------------------------------------------------
// Big and hostile messages

/// xorshift64*: random bytes without a dependency, the same every run.
fn random_bytes(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        out.extend_from_slice(&seed.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Streams `head`, then `len` bytes made of `unit` repeated, then `tail`, holding only 64 KiB.
fn stream(head: &[u8], unit: &'static [u8], len: usize, tail: &[u8]) -> Input {
    let (head, tail) = (head.to_vec(), tail.to_vec());
    Input::Stream(Box::new(move |w| {
        w.write_all(&head)?;
        let chunk: Vec<u8> = unit.iter().copied().cycle().take(64 * 1024).collect();
        let mut left = len;
        while left > 0 {
            let n = left.min(chunk.len());
            w.write_all(&chunk[..n])?;
            left -= n;
        }
        w.write_all(&tail)
    }))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    Notify,
    Skip,
}
use Decision::{Notify, Skip};

/// Runs the binary under `/usr/bin/time`: the run and its peak RSS in KiB.
fn run_measured(sb: &Sandbox, args: &[&str], input: Input) -> (Run, u64) {
    let report = tempfile::NamedTempFile::new().unwrap();
    let mut cmd = sb.command_for("/usr/bin/time");
    cmd.arg("-f")
        .arg("%M")
        .arg("-o")
        .arg(report.path())
        .arg(common::bin())
        .args(args);
    let r = exec(cmd, input);
    let text = fs::read_to_string(report.path()).unwrap();
    // GNU time writes "Command exited with non-zero status N" before the format.
    let rss = text.lines().last().unwrap().trim().parse().unwrap();
    (r, rss)
}

/// Runs one message and checks: the decision (via the relay), stderr empty, the writer saw no
/// EPIPE, peak RSS within the bound. Returns the peak RSS in KiB.
fn assert_message(name: &str, input: Input, want: Decision) -> u64 {
    let (sb, relay) = Sandbox::with_relay();
    let tok = token(60);
    let (r, rss) = run_measured(&sb, &["--url", &relay.url, &tok], input);
    assert_eq!(r.said(), (0, ""), "{name}");
    if let Err(e) = &r.written {
        panic!("{name}: the writer got {e}: the message was not drained");
    }
    match want {
        Notify => relay.assert_bodies(&[&tok]),
        Skip => relay.assert_bodies(&[]),
    }
    // Shown with --nocapture, for the figures in the README.
    eprintln!("{name}: peak RSS {rss} KiB");
    let base = baseline_rss();
    assert!(
        rss <= base + MAX_GROWTH_KIB,
        "{name}: peak RSS {rss} KiB, {base} KiB for a plain message"
    );
    if !cfg!(debug_assertions) {
        assert!(rss <= MAX_RSS_KIB, "{name}: peak RSS {rss} KiB");
    }
    rss
}

/// Peak RSS in KiB of a plain message notified, by the same binary.
fn baseline_rss() -> u64 {
    static BASELINE: OnceLock<u64> = OnceLock::new();
    *BASELINE.get_or_init(|| {
        let (sb, relay) = Sandbox::with_relay();
        let (r, rss) = run_measured(&sb, &["--url", &relay.url, &token(62)], PLAIN.into());
        assert_eq!(r.said(), (0, ""));
        rss
    })
}

/// Runs each message with [`assert_message`].
fn assert_messages(cases: Vec<(&str, Input, Decision)>) {
    for (name, input, want) in cases {
        assert_message(name, input, want);
    }
}

#[test]
fn big_random_and_nul_messages() {
    // A header-looking line deep in the body does not count.
    let filler = b"Auto-Submitted: auto-replied and other filler text to make it long.....\n";
    assert_messages(vec![
        ("stdin /dev/null", Input::Null, Notify),
        (
            "10 MB random",
            random_bytes(10_000_000, 0x9e37_79b9_7f4a_7c15).into(),
            Notify,
        ),
        ("5 MB of NUL", stream(b"", b"\0", 5 * MIB, b""), Notify),
        (
            "20 MB body of Auto-Submitted lines",
            stream(PLAIN.as_bytes(), filler, 20 * MIB, b""),
            Notify,
        ),
    ]);
}

/// A 50 MB header line without a newline; the cap cuts the value, not the decision.
#[test]
fn single_50mb_header_line() {
    let auto = b"Auto-Submitted: auto-replied ";
    assert_messages(vec![
        (
            "50 MB header line",
            stream(b"X-Long: ", b"a", 50_000_000, b""),
            Notify,
        ),
        (
            "50 MB Auto-Submitted line",
            stream(auto, b"(x)", 50_000_000, b""),
            Skip,
        ),
    ]);
}

/// A bare CR does not end a line: all of it is the value of one header.
#[test]
fn bare_cr_and_nul_headers() {
    let auto = b"Auto-Submitted: auto-replied\r\r";
    assert_messages(vec![
        (
            "bare CR line ends",
            stream(b"From: a@b\r", b"X-A: b\r", 2 * MIB, auto),
            Notify,
        ),
        (
            "NUL in every header",
            stream(b"From: a\0@b\n", b"X-\0: \0\n", MIB, b"\nbody"),
            Notify,
        ),
    ]);
}

#[test]
fn a_hundred_thousand_headers() {
    let mut headers = Vec::with_capacity(100_000 * 24);
    for i in 0..100_000 {
        writeln!(headers, "X-Header-{i}: value {i}").unwrap();
    }
    assert!(headers.len() > 2 * HEADER_CAP);
    let auto = b"Auto-Submitted: auto-generated\n";
    let first = [auto, &headers[..], b"\nbody\n"].concat();
    let last = [&headers[..], auto, b"\nbody\n"].concat();
    assert_messages(vec![
        ("100000 headers, Auto-Submitted first", first.into(), Skip),
        (
            "100000 headers, Auto-Submitted last, beyond the cap",
            last.into(),
            Notify,
        ),
    ]);
}

#[test]
fn auto_submitted_at_the_cap() {
    let header = b"Auto-Submitted: auto-replied\n";
    // Padding so that the header ends exactly at the cap: it is read, and counts.
    let mut inside = b"X-Pad: ".to_vec();
    inside.resize(HEADER_CAP - header.len() - 1, b'p');
    inside.push(b'\n');
    inside.extend_from_slice(header);
    assert_eq!(inside.len(), HEADER_CAP);
    // One byte more of padding and the header starts inside but its value is cut short at
    // `auto-replie`: still an automatic value.
    let mut cut = inside.clone();
    cut.insert(10, b'p');
    // Entirely beyond the cap: not looked at.
    let mut beyond = b"X-Pad: ".to_vec();
    beyond.resize(HEADER_CAP, b'p');
    beyond.extend_from_slice(b"\n");
    beyond.extend_from_slice(header);
    let body = |header: Vec<u8>| Input::from([header, b"\nbody\n".to_vec()].concat());
    assert_messages(vec![
        ("Auto-Submitted ending at the cap", body(inside), Skip),
        ("Auto-Submitted cut by the cap", body(cut), Skip),
        ("Auto-Submitted beyond the cap", body(beyond), Notify),
    ]);
}

/// 30 MB of header lines and no blank line before EOF.
#[test]
fn header_block_that_never_ends() {
    let auto = b"Auto-Submitted: auto-notified\n";
    assert_messages(vec![
        (
            "endless header block",
            stream(b"From: a@b\n", b"X-A: b\n", 30 * MIB, b""),
            Notify,
        ),
        (
            "endless header block after Auto-Submitted",
            stream(auto, b"X-A: b\n", 30 * MIB, b""),
            Skip,
        ),
    ]);
}

/// The writer closes the pipe in a header name, in an Auto-Submitted value, or mid-body.
#[test]
fn writer_closes_mid_message() {
    let head = b"From: a@b\nSubject: x\n\n";
    assert_messages(vec![
        (
            "closed inside a header name",
            "From: a@b\nAuto-Sub".into(),
            Notify,
        ),
        (
            "closed inside an Auto-Submitted value",
            "From: a@b\nAuto-Submitted: auto-rep".into(),
            Skip,
        ),
        (
            "closed mid-body",
            stream(head, b"body ", 3 * MIB, b""),
            Notify,
        ),
    ]);
}

/// The committed corpus: a file named `skip-*` must be skipped, `notify-*` notified; each is
/// run both as a regular file (getmail) and through a pipe (procmail, fetchmail).
#[test]
fn hostile_corpus() {
    let dir = data("hostile");
    let mut names: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    assert!(names.len() >= 25, "corpus missing");
    let mut peak = 0;
    for path in names {
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let want = if name.starts_with("skip-") {
            Skip
        } else if name.starts_with("notify-") {
            Notify
        } else {
            panic!("{name}: name it skip-* or notify-*");
        };
        peak = peak.max(assert_message(&name, Input::File(path.clone()), want));
        let bytes = fs::read(&path).unwrap();
        peak = peak.max(assert_message(&name, Input::Bytes(bytes), want));
    }
    eprintln!("hostile corpus: peak RSS {peak} KiB");
}

/// mail-parser keeps every header it parses: 256 KiB of tiny headers cost a whole-block parse
/// up to 10 MiB. `summarize` streams them; these keep it that way.
#[test]
fn memory_does_not_grow_with_the_number_of_headers() {
    let lines = |line: &str, n: usize| line.repeat(n).into_bytes();
    // The one header whose value is parsed, as big as the cap allows.
    let from = [b"From: ".to_vec(), lines("a@b, ", 60_000)].concat();
    // Every Auto-Submitted still counts, however many say `no` first.
    let no = [
        lines("Auto-Submitted: no\n", 12_000),
        b"Auto-Submitted: auto-replied\n\n".to_vec(),
    ]
    .concat();
    assert!(no.len() < HEADER_CAP);
    assert_messages(vec![
        ("60000 tiny headers", lines("X: b\n", 60_000).into(), Notify),
        (
            "30000 From headers",
            lines("From: a@b\n", 30_000).into(),
            Notify,
        ),
        (
            "40000 To headers",
            lines("To: a@b\n", 40_000).into(),
            Notify,
        ),
        ("From with 60000 addresses", from.into(), Notify),
        ("12000 Auto-Submitted: no, then one not", no.into(), Skip),
    ]);
}
