//! The bytes of a whole message on stdin, as the MDA sees them: the bounded header read, then
//! the Auto-Submitted decision. Any panic, hang or runaway allocation is a finding.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;

// The module itself, not a library: deltapush-mda is a binary.
#[allow(dead_code)]
#[path = "../../src/message.rs"]
mod message;

use message::{HEADER_CAP, Rules, oracle, read_header, summarize};

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
        matches!(skip, Some(message::Skip::AutoSubmitted(_)))
    );
    let _ = Rules {
        max_age: Some(Duration::ZERO),
        ..rules
    }
    .skip(&summary, i64::MAX);
});
