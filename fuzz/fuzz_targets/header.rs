//! The bytes of a whole message on stdin, as the MDA sees them: the bounded header read, then
//! the Auto-Submitted decision. Any panic, hang or runaway allocation is a finding.
#![no_main]

use std::time::Duration;

use deltapush_mda::message::{HEADER_CAP, Rules, Summary, first_word, read_header, summarize};
use libfuzzer_sys::fuzz_target;
use mail_parser::{HeaderName, MessageParser};

/// Hands the input over in reads of varying size, as a pipe does, so that a blank line or a
/// `From ` line split between two reads is explored too. The first byte picks the read size.
struct Pipe<'a> {
    data: &'a [u8],
    step: usize,
}

impl std::io::Read for Pipe<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.step.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&first, data)) = input.split_first() else {
        return;
    };
    let step = match first {
        0 => usize::MAX,
        n => n as usize,
    };
    let header = read_header(&mut Pipe { data, step }).expect("reading from memory cannot fail");
    assert!(header.len() <= HEADER_CAP);
    // The read must not depend on how the bytes were split.
    let whole = read_header(&mut &data[..]).expect("reading from memory cannot fail");
    assert_eq!(header, whole);
    let summary = summarize(&header);
    // The streaming summarize must decide exactly as a whole-block mail-parser parse does.
    assert_eq!(summary, oracle(&header));
    if let Some(word) = &summary.auto_submitted {
        assert!(!word.is_empty() && !word.eq_ignore_ascii_case("no"));
    }
    // Every rule on, with extreme clocks: date arithmetic must not overflow.
    let rules = Rules {
        skip_from: vec!["a@b".to_string(), String::new()],
        only_chat: true,
        max_age: Some(Duration::from_secs(u64::MAX)),
    };
    let skip = rules.skip(&summary, i64::MIN);
    assert_eq!(
        summary.auto_submitted.is_some(),
        matches!(skip, Some(deltapush_mda::message::Skip::AutoSubmitted(_)))
    );
    let _ = Rules {
        max_age: Some(Duration::ZERO),
        ..rules
    }
    .skip(&summary, i64::MAX);
});

/// `summarize` before it streamed: mail-parser parses the whole block and keeps every header.
fn oracle(header: &[u8]) -> Summary {
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
