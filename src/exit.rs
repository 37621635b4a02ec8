//! The exit statuses (sysexits.h), as data: `main` maps outcomes and errors to these codes, and
//! `--help`, the man page and the README print this one table.

/// EX_USAGE: the command line or a token is wrong.
pub const USAGE: u8 = 64;
/// EX_UNAVAILABLE: `--check` could not reach the relay, or found a failed deferred wakeup.
pub const UNAVAILABLE: u8 = 69;
/// EX_IOERR: standard input could not be read.
pub const IOERR: u8 = 74;
/// EX_NOPERM: started with a way back to another user (a real or saved uid or gid other than the
/// effective one) that could not be given up; or the IMAP server refused the watcher's login.
pub const NOPERM: u8 = 77;
/// EX_TEMPFAIL: a token could not be notified and `--tempfail` asks the caller to retry.
pub const TEMPFAIL: u8 = 75;
/// EX_CONFIG: the setup (cache dir, URL, token file) is wrong.
pub const CONFIG: u8 = 78;

/// One exit status and what it means, in the words every generated document uses.
pub struct Status {
    pub code: u8,
    pub meaning: &'static str,
}

pub const STATUSES: &[Status] = &[
    Status {
        code: 0,
        meaning: "notified, deferred, skipped, or the relay failed (an error line says so); \
                  --setup: set up, or nothing to set up (a chatmail account)",
    },
    Status {
        code: USAGE,
        meaning: "usage: no token, a malformed token, a phone without a push token, a bad option; \
                  for --check also a token the relay called gone; --setup: a log it cannot use, \
                  a question without a terminal (the line names the option to give)",
    },
    Status {
        code: UNAVAILABLE,
        meaning: "--check could not reach the relay, or found a deferred wakeup that was not sent; \
                  --watch: an imap:// server without STARTTLS, another watcher on the same mailbox, or no \
                  TLS set-up; --setup: no server of the log answered, or systemctl failed",
    },
    Status {
        code: IOERR,
        meaning: "standard input could not be read; --setup: also the terminal it asked on",
    },
    Status {
        code: TEMPFAIL,
        meaning: "a token could not be notified and --tempfail was given: the caller should retry",
    },
    Status {
        code: NOPERM,
        meaning: "started with a real or saved uid or gid other than the effective one, and could \
                  not give it up: nothing was read or sent; --watch: the IMAP server said that the password \
                  from --password-file is wrong; --setup: the server refused the login, or you said no to it",
    },
    Status {
        code: CONFIG,
        meaning: "configuration: cache dir not usable, insecure --url, unreadable --token-file; \
                  --watch: a bad URL, an unusable --password-file, a mailbox that cannot be opened; \
                  --setup: also an unreadable --log, a file it could not write",
    },
];

/// The table as `--help` shows it.
pub fn help_table() -> String {
    let mut text = String::from("Exit status (sysexits.h):\n");
    for s in STATUSES {
        text.push_str(&format!("  {:<3} {}\n", s.code, s.meaning));
    }
    text
}
