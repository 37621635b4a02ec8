//! The way to the relay and every way it can fail: refused, silent, late, garbage, resets, 5xx
//! (retried with backoff within `--timeout`), 4xx and 410 (final, not retried), TLS spoken to a
//! server that does not, and HTTPS with a certificate only a configured CA vouches for. A
//! failure is one line, exit 0 (75 with `--tempfail`, silent with `-q`), leaves the token state
//! alone, and the next message notifies once the relay is healthy.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::ops::RangeInclusive;
use std::thread;
use std::time::Duration;

use common::{
    Https, PLAIN, Relay, Reply, Sandbox, assert_not_notified_line, not_notified, refused_url,
    token, token_line,
};

/// A relay broken in one way.
struct Fault {
    name: &'static str,
    /// Where the runs post.
    url: String,
    /// The relay behind `url`, whose requests are counted; none for a refused port.
    relay: Option<Relay>,
    /// Requests the relay gets per run: more than one when the fault is retried.
    hits: RangeInclusive<usize>,
    /// The whole error line, or `None` where its cause is worded by a library (only our prefix,
    /// suffix and the one line are checked then).
    line: Option<String>,
}

/// --timeout of every run against a broken relay: room for three attempts with backoff.
const BUDGET: Duration = Duration::from_secs(2);

impl Fault {
    fn scripted(name: &'static str, reply: Reply, hits: RangeInclusive<usize>) -> Fault {
        let relay = Relay::always(reply);
        Fault {
            name,
            url: relay.url.clone(),
            relay: Some(relay),
            hits,
            line: None,
        }
    }

    fn says(self, line: String) -> Fault {
        Fault {
            line: Some(line),
            ..self
        }
    }

    /// Runs it plainly, with --tempfail and with -q --tempfail, each with a cache dir of its
    /// own, then heals it.
    fn check(&self, tok: &str) {
        let name = self.name;
        let budget = format!("{}s", BUDGET.as_secs());
        let variants: [(&[&str], i32, bool); 3] = [
            (&[], 0, true),
            (&["--tempfail"], 75, true),
            (&["-q", "--tempfail"], 75, false),
        ];
        let sandboxes: Vec<Sandbox> = variants.iter().map(|_| Sandbox::new()).collect();
        thread::scope(|s| {
            for ((extra, code, says), sb) in variants.into_iter().zip(&sandboxes) {
                let budget = &budget;
                s.spawn(move || {
                    let args = [&["--url", &self.url, "--timeout", budget], extra, &[tok]];
                    let r = sb.run(&args.concat(), PLAIN);
                    assert_eq!(r.code, code, "{name} {extra:?}: {}", r.stderr);
                    if !says {
                        assert_eq!(r.stderr, "", "{name} {extra:?}");
                    } else if let Some(want) = &self.line {
                        // A retried run's line names what its last attempt met; on a loaded
                        // machine that attempt may get too little of the budget to see the
                        // relay's answer. Both lines are right, nothing else is.
                        let late = not_notified(tok, "the relay did not answer in time");
                        let retried = *self.hits.end() > 1;
                        assert!(
                            r.stderr == *want || (retried && r.stderr == late),
                            "{name}: got {:?}, want {want:?}",
                            r.stderr
                        );
                    } else {
                        assert_not_notified_line(&r.stderr, tok);
                    }
                    assert!(
                        r.elapsed <= BUDGET + Duration::from_secs(1),
                        "{name}: took {:?}",
                        r.elapsed
                    );
                    assert!(
                        !sb.state(tok).exists(),
                        "{name}: a failure wrote token state"
                    );
                });
            }
        });
        if let Some(relay) = &self.relay {
            let reqs = relay.requests();
            let runs = variants.len();
            let per_run = (*self.hits.start() * runs)..=(*self.hits.end() * runs);
            assert!(
                per_run.contains(&reqs.len()),
                "{name}: the relay got {} requests in {runs} runs",
                reqs.len()
            );
            for r in reqs.iter().filter(|r| r.method == "POST") {
                assert_eq!(r.body, tok.as_bytes(), "{name}: wrong body");
            }
        }
        // Healthy again: the next message notifies.
        let healthy = Relay::start();
        let sb = &sandboxes[0];
        assert_eq!(
            sb.deliver(&healthy, PLAIN, &[tok]),
            (0, String::new()),
            "{name} healed"
        );
        healthy.assert_bodies(&[tok]);
        assert!(
            sb.state(tok).is_file(),
            "{name}: success wrote no token state"
        );
    }
}

#[test]
fn every_relay_fault() {
    let tok = token(40);
    let unavailable = |detail: &str| not_notified(&tok, detail);
    let in_time = unavailable("the relay did not answer in time");
    let plain_http = Relay::always(Reply::Status(400));
    let faults = [
        Fault::scripted("never answers", Reply::Hang, 1..=1).says(in_time.clone()),
        Fault::scripted(
            "answers after the budget",
            Reply::Delay(BUDGET + Duration::from_secs(2), 200),
            1..=1,
        )
        .says(in_time),
        Fault::scripted("keeps failing with 500", Reply::Status(500), 2..=10)
            .says(unavailable("the relay answered HTTP 500")),
        // Not HTTP, or cut off in the status line: retried with backoff.
        Fault::scripted("answers garbage", Reply::Garbage, 2..=10),
        Fault::scripted("resets mid-status", Reply::ResetInStatus, 2..=10),
        // Final answers: one request per run.
        Fault::scripted("says gone", Reply::Status(410), 1..=1).says(token_line(
            &tok,
            "the relay says it is no longer valid (410 Gone); \
             copy the current notify token from Delta Chat",
        )),
        Fault::scripted("refuses with 404", Reply::Status(404), 1..=1).says(token_line(
            &tok,
            "the relay refused it with HTTP 404; check --url",
        )),
        Fault {
            name: "port refused",
            url: refused_url(),
            relay: None,
            hits: 0..=10,
            line: Some(unavailable("the relay refused the connection")),
        },
        // A TLS handshake answered in plain HTTP: a TLS failure, not retried.
        Fault {
            name: "TLS to a plain-HTTP server",
            url: plain_http.url.replace("http://", "https://"),
            relay: Some(plain_http),
            hits: 1..=1,
            line: None,
        },
    ];
    thread::scope(|s| {
        for fault in &faults {
            let tok = &tok;
            s.spawn(move || fault.check(tok));
        }
    });
}

#[test]
fn a_5xx_is_retried_until_it_clears() {
    let sb = Sandbox::new();
    let tok = token(41);
    let relay = Relay::scripted(Reply::Status(200), [Reply::Status(500), Reply::Status(500)]);
    let r = sb.run(
        &["--url", &relay.url, "--timeout", "5s", "--tempfail", &tok],
        PLAIN,
    );
    assert_eq!(r.said(), (0, ""));
    relay.assert_bodies(&[&tok, &tok, &tok]);
    assert!(sb.state(&tok).is_file());
    // Backoff 250 ms + 500 ms, well inside the budget.
    assert!(r.elapsed < Duration::from_secs(5), "{:?}", r.elapsed);
}

/// A connection that breaks after the status line: the relay has accepted the token (the
/// status is final), so this counts as notified.
#[test]
fn a_status_line_then_a_broken_body_counts_as_notified() {
    let sb = Sandbox::new();
    let tok = token(42);
    let relay = Relay::always(Reply::CloseInBody);
    let r = sb.run(&["--url", &relay.url, "--timeout", "2s", &tok], PLAIN);
    assert_eq!(r.said(), (0, ""));
    relay.assert_bodies(&[&tok]);
    assert!(sb.state(&tok).is_file());
}

/// HTTPS to a relay whose certificate comes from a CA the system does not know: the token never
/// reaches the relay, and the run does not retry (a certificate does not become trusted within
/// the budget). With SSL_CERT_FILE naming that CA, it notifies.
#[test]
fn https_trusts_only_the_configured_ca() {
    let relay = Relay::start();
    let https = Https::before(&relay);
    let sb = Sandbox::new();
    let (t1, t2) = (token(71), token(72));
    for (extra, code) in [(None, 0), (Some("--tempfail"), 75)] {
        let mut args = vec!["--url", &https.url, "--timeout", "10s", &t2];
        args.extend(extra);
        let r = sb.run(&args, PLAIN);
        assert_eq!(r.code, code, "{}", r.stderr);
        assert_not_notified_line(&r.stderr, &t2);
        assert!(
            r.elapsed < Duration::from_secs(3),
            "an unknown CA took {:?}",
            r.elapsed
        );
        assert!(!sb.state(&t2).exists());
    }
    relay.assert_bodies(&[]);

    let mut cmd = sb.command();
    cmd.env("SSL_CERT_FILE", &https.ca)
        .args(["--url", &https.url, &t1]);
    assert_eq!(common::exec(cmd, PLAIN).said(), (0, ""));
    relay.assert_bodies(&[&t1]);
    assert!(sb.state(&t1).is_file());
}

/// The stand-in relay itself: a reply may carry header fields (Retry-After and the like).
#[test]
fn stand_in_relay_answers_with_extra_headers() {
    let relay = Relay::always(Reply::With(429, vec![("Retry-After", "30")]));
    let mut conn = TcpStream::connect(("127.0.0.1", relay.port)).unwrap();
    conn.write_all(b"POST /notify HTTP/1.1\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc")
        .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 256];
    while !answer.ends_with(b"\r\n\r\nok") {
        let n = conn.read(&mut buf).unwrap();
        assert!(n > 0, "closed after {answer:?}");
        answer.extend_from_slice(&buf[..n]);
    }
    let answer = String::from_utf8(answer).unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 429 ") && answer.contains("\r\nRetry-After: 30\r\n"),
        "{answer:?}"
    );
    relay.assert_bodies(&["abc"]);
}
