//! Any bytes pasted as Delta Chat's log, line by line as `--setup` reads them: the bounded
//! line reader's contract, then the findings. Any panic, hang or runaway allocation is a finding,
//! and so is a token, a host or a folder that could leave its place in a URL or a file.
#![no_main]

use libfuzzer_sys::fuzz_target;

// The modules themselves, not a library: deltapush-mda is a binary.
#[allow(dead_code)]
#[path = "../../src/applog.rs"]
mod applog;
#[allow(dead_code)]
#[path = "../../src/token.rs"]
mod token;

use applog::{Address, MAX_LINE, Reader};

fuzz_target!(|input: &[u8]| {
    let mut reader = Reader::new();
    // As setup.rs hands them over: without the line end, at most one byte past MAX_LINE.
    for line in input.split(|&b| b == b'\n') {
        if reader.line(&line[..line.len().min(MAX_LINE + 1)]).is_err() {
            return;
        }
    }
    let log = reader.finish();
    for t in &log.tokens {
        let bytes = t.as_bytes();
        assert!(!bytes.is_empty() && bytes.len() <= token::MAX_LEN);
        assert!(bytes.iter().all(u8::is_ascii_graphic));
    }
    let plain = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_alphanumeric() || matches!(c, '.' | '-' | '_'))
    };
    for transport in &log.transports {
        assert!(!transport.imap.is_empty());
        match &transport.address {
            Address::Domain(d) => assert!(plain(d)),
            Address::Whole(a) => assert!(plain(a.rsplit_once('@').unwrap().1)),
        }
        for c in &transport.imap {
            assert!(plain(&c.host) && c.port != 0, "{c:?}");
        }
    }
});
