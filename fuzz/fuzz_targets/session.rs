//! Whatever an IMAP server sends, in reads of whatever size, through the watcher's session as the
//! watcher drives it (`session::exercise`, which `cargo test` also runs on what this found).
#![no_main]

use libfuzzer_sys::fuzz_target;

// The modules themselves, not a library: deltapush-mda is a binary.
#[allow(dead_code)]
#[path = "../../src/message.rs"]
mod message;
#[allow(dead_code)]
#[path = "../../src/text.rs"]
mod text;
// At the root, beside each other, as they are beside each other in src/watch/: their `super::`
// is then this crate's root.
#[allow(dead_code)]
#[path = "../../src/watch/refusal.rs"]
mod refusal;
#[allow(dead_code)]
#[path = "../../src/watch/session.rs"]
mod session;
#[allow(dead_code)]
#[path = "../../src/watch/transport.rs"]
mod transport;

fuzz_target!(|data: &[u8]| session::exercise(data));
