//! The way to the relay and every way it can fail: refused, silent, late, garbage, resets, 5xx
//! (retried with backoff within `--timeout`), 4xx (final, not retried), TLS spoken to a server
//! that does not, and HTTPS with a certificate only a configured CA vouches for. A failure is one
//! line, exit 0 (75 with `--tempfail`, silent with `-q`), leaves the token state alone, and the
//! next message notifies once the relay is healthy. What the relay says about a token is
//! remembered: a 410 keeps it from being posted for a day, a pause (429, or 503 with
//! Retry-After) holds every POST of it until the pause ends, an hour at most.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::ops::RangeInclusive;
use std::thread;
use std::time::Duration;

use common::{
    Https, PLAIN, Relay, Reply, Sandbox, assert_not_notified_line, not_notified, refused_url,
    run_cases, token, token_line,
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
const BUDGET: Duration = Duration::from_secs(1);

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

/// The cases that wait on the relay's time (the budget, a backoff, a pause), side by side.
#[test]
fn faults_retries_and_pauses() {
    run_cases(&[
        ("every relay fault", every_relay_fault),
        (
            "a 5xx is retried until it clears",
            a_5xx_is_retried_until_it_clears,
        ),
        (
            "a pause defers every POST until it ends",
            a_pause_defers_every_post_until_it_ends,
        ),
    ]);
}

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

/// The line of every run about a token the relay called gone: (before the time, after it).
fn gone_line(tok: &str) -> (String, String) {
    let line = token_line(
        tok,
        "gone since TIME (the relay answered 410); copy the current \
         token from Delta Chat: Settings → Advanced → View Log",
    );
    let (head, tail) = line.split_once("TIME").unwrap();
    (head.to_string(), tail.to_string())
}

fn assert_gone_line(stderr: &str, tok: &str) {
    let (head, tail) = gone_line(tok);
    assert!(
        stderr.starts_with(&head) && stderr.ends_with(&tail) && stderr.lines().count() == 1,
        "{stderr}"
    );
}

#[test]
fn a_gone_token_is_not_posted_again_for_a_day() {
    let sb = Sandbox::new();
    let (dead, alive) = (token(43), token(44));
    let relay = Relay::scripted(Reply::Status(200), [Reply::Status(410)]);
    // The first POST (the dead token's) is answered 410; three more messages follow, the last
    // with --tempfail: retrying the mail cannot bring a dead token back, so it exits 0 too.
    for run in 0..4 {
        let tempfail: &[&str] = if run == 3 { &["--tempfail"] } else { &[] };
        let args = [&["--interval", "0", &dead, &alive][..], tempfail].concat();
        let (code, stderr) = sb.deliver(&relay, PLAIN, &args);
        assert_eq!(code, 0, "run {run}: {stderr}");
        assert_gone_line(&stderr, &dead);
    }
    relay.assert_bodies(&[&dead, &alive, &alive, &alive, &alive]);

    // --check shows it as a failed token.
    let r = sb.run(
        &["--check", "--url", &relay.url, &dead],
        common::Input::Null,
    );
    assert_eq!(r.code, 64, "{}", r.stdout);
    let (head, _) = gone_line(&dead);
    assert!(
        r.stdout.contains(&format!(
            "FAIL  {}",
            head.trim_start_matches("deltapush-mda: ")
        )),
        "{}",
        r.stdout
    );

    // A day later it is tried again.
    common::backdate(&sb.state(&dead), "gone", Duration::from_secs(24 * 3600 + 5));
    assert_eq!(
        sb.deliver(&relay, PLAIN, &["--interval", "0", &dead]),
        (0, String::new())
    );
    relay.assert_bodies(&[&dead, &alive, &alive, &alive, &alive, "", &dead]);
}

/// A 429 with Retry-After: one POST, no retry within the run, and the message's wakeup is sent
/// when the pause ends; every message until then shares it.
fn a_pause_defers_every_post_until_it_ends() {
    let sb = Sandbox::new();
    let tok = token(45);
    let relay = Relay::scripted(
        Reply::Status(200),
        [Reply::With(429, vec![("Retry-After", "1")])],
    );
    let (code, stderr) = sb.deliver(&relay, PLAIN, &["-v", &tok]);
    assert_eq!((code, stderr), (0, token_line(&tok, "deferred by 1 s")));
    assert_eq!(sb.deliver(&relay, PLAIN, &[&tok]), (0, String::new()));
    assert_eq!(relay.requests().len(), 1, "a paused token was posted again");
    common::realmail::wait_for(Duration::from_secs(5), "the POST after the pause", || {
        relay.requests().len() == 2
    });
    let reqs = relay.requests();
    let waited = reqs[1].at - reqs[0].at;
    assert!(
        waited >= Duration::from_millis(990),
        "posted after {waited:?}"
    );
    relay.assert_bodies(&[&tok, &tok]);
}

/// Without an interval nothing is deferred: a paused token is reported, like a relay that
/// failed, and not posted before the pause ends. A pause longer than an hour is cut to one.
#[test]
fn a_pause_without_an_interval_is_reported() {
    let sb = Sandbox::new();
    let tok = token(46);
    let relay = Relay::always(Reply::With(503, vec![("Retry-After", "99999")]));
    let pause = |left: &str| {
        token_line(
            &tok,
            &format!(
                "not notified: the relay asked for a pause of {left} s more; the next message \
                 after it will try again"
            ),
        )
    };
    let args = ["--interval", "0", "--tempfail", &tok];
    assert_eq!(sb.deliver(&relay, PLAIN, &args), (75, pause("3600")));
    let (code, stderr) = sb.deliver(&relay, PLAIN, &args);
    assert!(
        code == 75 && (stderr == pause("3600") || stderr == pause("3599")),
        "{stderr}"
    );
    // One request in all: a 503 with Retry-After is not retried, and the pause held.
    assert_eq!(relay.requests().len(), 1);
    let r = sb.run(&["--check", "--url", &relay.url, &tok], common::Input::Null);
    assert!(
        r.stdout
            .contains("; the relay asked for a pause of 1h more\n"),
        "{}",
        r.stdout
    );
}
