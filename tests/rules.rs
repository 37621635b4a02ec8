//! Which mail rings the phone: automatic mail (`Auto-Submitted` other than `no`) never does, in
//! any form the header takes; mail from yourself (`--skip-from`), mail that is not a chat
//! message (`--only-chat`) and old mail (`--max-age`) only when asked; the decisions on a corpus
//! of real mail. A skip is silent without `-v`, names its rule with it, and touches no cache.

mod common;

use std::time::{Duration, SystemTime};

use common::{PLAIN, Relay, Sandbox, corpus, notified, skipped, token};

#[test]
fn automatic_mail_is_skipped_in_every_form() {
    let forms = [
        ("Auto-Submitted: auto-replied\n", "auto-replied"),
        ("Auto-Submitted: auto-generated\n", "auto-generated"),
        ("Auto-Submitted: auto-notified\n", "auto-notified"),
        ("Auto-Submitted: auto-something-new\n", "auto-something-new"),
        ("auto-SUBMITTED: Auto-Replied\n", "auto-replied"),
        ("Auto-Submitted:\n  auto-replied\n", "auto-replied"),
        (
            "Auto-Submitted: auto-replied; owner-email=\"x@example.org\"\n",
            "auto-replied",
        ),
        (
            "Auto-Submitted: (out of office) auto-replied\n",
            "auto-replied",
        ),
        (
            "Auto-Submitted: no\nAuto-Submitted: auto-generated\n",
            "auto-generated",
        ),
    ];
    let relay = Relay::start();
    for (header, value) in forms {
        let sb = Sandbox::new();
        let msg = format!("From: a@b\n{header}Subject: x\n\nbody\n");
        assert_eq!(
            sb.deliver(&relay, msg.as_str(), &["-v", &token(3)]),
            (0, skipped(&format!("auto-submitted ({value})"))),
            "{header:?}"
        );
        // Silent without -v.
        assert_eq!(
            sb.deliver(&relay, msg.as_str(), &[&token(3)]),
            (0, String::new())
        );
        assert!(!sb.cache_dir().exists(), "a skip must not touch the cache");
    }
    relay.assert_bodies(&[]);
}

#[test]
fn person_written_mail_notifies_whatever_else_says_auto() {
    let not_automatic = [
        "From: a@b\nAuto-Submitted: no\n\nbody\n",
        "From: a@b\nAuto-Submitted: No (a person wrote this)\n\nbody\n",
        "From: a@b\nX-Auto-Submitted: auto-replied\n\nbody\n",
        "From: a@b\nSubject: Auto-Submitted: auto-replied\n\nbody\n",
    ];
    let relay = Relay::start();
    for (i, msg) in not_automatic.iter().enumerate() {
        let sb = Sandbox::new();
        let t = token(100 + i as u32);
        assert_eq!(
            sb.deliver(&relay, *msg, &[&t]),
            (0, String::new()),
            "{msg:?}"
        );
    }
    assert_eq!(relay.bodies().len(), not_automatic.len());
}

#[test]
fn mbox_from_line_and_crlf() {
    let (sb, relay) = Sandbox::with_relay();
    let skip = "From MAILER-DAEMON Wed Nov 25 10:00:00 2026\r\n\
                Auto-Submitted: auto-replied\r\nSubject: bounce\r\n\r\nbody\r\n";
    assert_eq!(
        sb.deliver(&relay, skip, &["-v", &token(4)]),
        (0, skipped("auto-submitted (auto-replied)"))
    );
    let plain = "From alice@example.org Wed Nov 25 10:00:00 2026\r\nFrom: a@b\r\n\r\nhi\r\n";
    assert_eq!(sb.deliver(&relay, plain, &[&token(4)]), (0, String::new()));
    relay.assert_bodies(&[&token(4)]);
}

/// Runs each message of the real-mail corpus once with `args`, each in a sandbox of its own:
/// those in `skip` must be skipped for `reason` (said with -v), those in `notify` notified.
fn corpus_decisions(args: &[&str], reason: &str, skip: &[&str], notify: &[&str]) {
    let relay = Relay::start();
    for name in skip {
        let sb = Sandbox::new();
        assert_eq!(
            sb.deliver(&relay, corpus(name), &[args, &["-v", "tok"]].concat()),
            (0, skipped(reason)),
            "{name}"
        );
    }
    relay.assert_bodies(&[]);
    for (i, name) in notify.iter().enumerate() {
        let sb = Sandbox::new();
        let t = token(200 + i as u32);
        assert_eq!(
            sb.deliver(&relay, corpus(name), &[args, &[&t]].concat()),
            (0, String::new()),
            "{name}"
        );
    }
    assert_eq!(relay.bodies().len(), notify.len());
}

/// Bounces from real providers are skipped; real chat and person-written mail notifies.
#[test]
fn real_messages_from_the_corpus() {
    let bounces = [
        "dsn_relayed.eml",
        "gmail_ndn.eml",
        "gmx_ndn.eml",
        "posteo_ndn.eml",
        "testrun_ndn.eml",
        "ndn_with_attachment.eml",
    ];
    let people = [
        "text_from_alice_encrypted.eml",
        "mailinglist_chat_message.eml",
        "videochat_invitation.eml",
        "webxdc_good_extension.eml",
        "encrypted_with_received_headers.eml",
        "text_alt_plain.eml",
        "mail_attach_txt.eml",
        "thunderbird_with_autocrypt.eml",
        "mailparse-0.16.0-panic.eml",
    ];
    corpus_decisions(&[], "auto-submitted (auto-replied)", &bounces, &people);
}

/// Delta Chat messages carry Chat-Version in the outer, unencrypted headers.
#[test]
fn only_chat_messages_with_real_mail() {
    let ordinary = [
        "text_alt_plain.eml",
        "mail_attach_txt.eml",
        "thunderbird_with_autocrypt.eml",
        "thunderbird_encrypted_signed.eml",
        "messed_up_message_id.eml",
    ];
    let chats = [
        "text_from_alice_encrypted.eml",
        "mailinglist_chat_message.eml",
        "videochat_invitation.eml",
        "webxdc_good_extension.eml",
        "encrypted_with_received_headers.eml",
    ];
    corpus_decisions(&["--only-chat"], "not a chat message", &ordinary, &chats);
}

#[test]
fn mail_from_myself_does_not_ring() {
    let (sb, relay) = Sandbox::with_relay();
    let t = token(1);
    let mine = "From: Me <ME@Example.org>\nSubject: sent from my laptop\n\nhi\n";
    let theirs = "From: Alice <alice@example.org>\nSubject: hi\n\nhi\n";
    assert_eq!(
        sb.deliver(&relay, mine, &["-v", "--skip-from", "me@example.org", &t]),
        (0, skipped("from self"))
    );
    // Comma-separated in the environment, and still silent without -v.
    let mut cmd = sb.command();
    cmd.env("DELTAPUSH_SKIP_FROM", "other@example.net, me@example.org")
        .args(["--url", &relay.url, &t]);
    assert_eq!(common::exec(cmd, mine).said(), (0, ""));
    relay.assert_bodies(&[]);
    assert_eq!(
        sb.deliver(&relay, theirs, &["--skip-from", "me@example.org", &t]),
        (0, String::new())
    );
    relay.assert_bodies(&[&t]);
}

fn rfc2822(t: SystemTime) -> String {
    // humantime gives RFC 3339; turn it into the RFC 5322 form a mailer writes.
    let s = humantime::format_rfc3339_seconds(t).to_string();
    let out = std::process::Command::new("date")
        .args(["-u", "-R", "-d", &s])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn old_mail_does_not_ring() {
    let relay = Relay::start();
    let now = SystemTime::now();
    let old = rfc2822(now - Duration::from_secs(2 * 3600));
    let fresh = rfc2822(now - Duration::from_secs(60));
    let msg = |date: &str| format!("From: a@b\nDate: {date}\nSubject: x\n\nbody\n");

    let sb = Sandbox::new();
    assert_eq!(
        sb.deliver(
            &relay,
            msg(&old).as_str(),
            &["-v", "--max-age", "1h", &token(20)]
        ),
        (0, skipped(&format!("older than 1h (Date {old})")))
    );
    relay.assert_bodies(&[]);
    // Fresh, missing and unparseable dates all count as new.
    let cases = [
        msg(&fresh),
        "From: a@b\n\nno date\n".to_string(),
        msg("yesterday-ish"),
    ];
    for (i, m) in cases.iter().enumerate() {
        let sb = Sandbox::new();
        let t = token(21 + i as u32);
        assert_eq!(
            sb.deliver(&relay, m.as_str(), &["--max-age", "1h", &t]),
            (0, String::new()),
            "{m}"
        );
    }
    assert_eq!(relay.bodies().len(), 3);
}

/// A message every rule lets through is notified, and `-v` says so rather than naming a rule.
#[test]
fn a_message_every_rule_lets_through_notifies() {
    let (sb, relay) = Sandbox::with_relay();
    let t = token(33);
    let msg = "From: a@b\nChat-Version: 1.0\n\nhi\n";
    let args = [
        "-v",
        "--only-chat",
        "--skip-from",
        "me@x",
        "--max-age",
        "1h",
    ];
    assert_eq!(
        sb.deliver(&relay, msg, &[&args[..], &[&t]].concat()),
        (0, notified(&t))
    );
    // PLAIN has no Chat-Version: the same rules skip it.
    assert_eq!(
        sb.deliver(&relay, PLAIN, &[&args[..], &[&t]].concat()),
        (0, skipped("not a chat message"))
    );
    relay.assert_bodies(&[&t]);
}
