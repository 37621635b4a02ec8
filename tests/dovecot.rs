//! Instant push on your own Dovecot (issue 13): the two files of `examples/dovecot/` as shipped,
//! in a real Dovecot with LMTP, Pigeonhole and IMAP on 127.0.0.1. A phone's IMAP session stores
//! its device token exactly as Delta Chat does; a mail server's LMTP session delivers; the
//! stand-in relay sees what deltapush-mda, run by the Sieve script, posts. Only paths and the
//! relay URL are changed in the files.
//!
//! Each scenario has a Dovecot of its own (0.3 s to start), so its log holds its own lines only,
//! and runs twice: on the host's Dovecot 2.3 with `examples/dovecot/2.3/`, and on Debian 13's
//! 2.4 with `examples/dovecot/2.4/` (`v23::` and `v24::`; the Debian 13 root is `.ci/setup`'s).

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use common::dovecot::{MailServer, Version};
use common::examples::render;
use common::lmtp::{Delivery, Imap, Lmtp};
use common::mailhome::install_binary;
use common::realmail::{MailUser, Ran, wait_for};
use common::{Relay, Reply, backdate, bounce, kill_senders, sha256_hex};

/// The shipped relay, as the Sieve script names it.
const RELAY: &str = "https://notifications.delta.chat/notify";
/// Where the README installs the two files and the program's link.
const SCRIPT: &str = "/etc/dovecot/sieve/deltapush.sieve";
const EXEC_DIR: &str = "/usr/lib/dovecot/sieve-execute";

/// A device token shaped like Delta Chat's: `openpgp:` and base64, `len` characters.
fn phone_token(n: u32, len: usize) -> String {
    let mut t = format!("openpgp:wcFMA{n:04}QzPd+/");
    let fill = "hQIMA8Kx0Rq3c2vJARAAl9+/Zq";
    while t.len() < len - 1 {
        t.push_str(fill);
    }
    t.truncate(len - 1);
    t.push('=');
    t
}

/// What Delta Chat sends to store its token, up to core 2.57 (today's apps): a
/// non-synchronizing literal (RFC 7888).
fn setmetadata_literal(token: &str) -> String {
    format!(
        "SETMETADATA \"INBOX\" (/private/devicetoken {{{}+}}\r\n{token})",
        token.len()
    )
}

/// The same since core 2.58: a quoted string.
fn setmetadata_quoted(token: &str) -> String {
    format!("SETMETADATA \"INBOX\" (/private/devicetoken \"{token}\")")
}

/// A message from a person, CRLF as a mail server hands it over.
fn plain(n: u32) -> Vec<u8> {
    format!(
        "From: alice@example.net\r\nTo: someone@example.org\r\nSubject: message {n}\r\n\
         Message-ID: <{n}.{}@example.net>\r\nChat-Version: 1.0\r\n\r\nHello number {n}\r\n\
         .a line that starts with a dot\r\n",
        std::process::id()
    )
    .into_bytes()
}

/// A user's own Sieve script: files everything into Chats, flagged.
const OWN_SCRIPT: &str = "require [\"fileinto\", \"imap4flags\", \"mailbox\"];\naddflag \"\\\\Flagged\";\nfileinto :create \"Chats\";\n";

/// A Dovecot set up as the README says, for `users`, posting to `relay`.
struct Site {
    relay: Relay,
    server: MailServer,
    /// The program's link in the execute dir.
    link: PathBuf,
    // Last: the servers stop before their files go.
    dir: tempfile::TempDir,
}

/// A deferred wakeup that a failed test left waiting goes with its site.
impl Drop for Site {
    fn drop(&mut self) {
        kill_senders(self.dir.path());
    }
}

impl Site {
    fn new(v: Version, users: &[&str], relay: Relay) -> Site {
        let dir = v.tempdir("deltapush-dovecot-");
        // The mail user runs the program and reads the script from here.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let d = |name: &str| {
            let p = dir.path().join(name);
            fs::create_dir_all(&p).unwrap();
            p
        };
        // The program where the mail user can run it (the build dir may be closed to it), and
        // in the execute dir the link the README makes.
        let bin = d("bin").join("deltapush-mda");
        install_binary(&bin);
        let exec_dir = d("sieve-execute");
        let link = exec_dir.join("deltapush-mda");
        std::os::unix::fs::symlink(&bin, &link).unwrap();

        let script = d("sieve").join("deltapush.sieve");
        fs::write(
            &script,
            render("dovecot/deltapush.sieve", &[(RELAY, 1, &relay.url)]),
        )
        .unwrap();
        let conf = render(
            &format!("{}/90-deltapush.conf", v.examples()),
            &[
                // The install steps in the comment and the setting.
                (SCRIPT, 3, script.to_str().unwrap()),
                (EXEC_DIR, 3, exec_dir.to_str().unwrap()),
            ],
        );
        let server = MailServer::start(
            v,
            &d("dovecot"),
            MailUser::get(),
            users,
            &[("90-deltapush.conf", conf)],
        );
        // The README's compile step; without it Dovecot logs an error for every delivery.
        let ran = server.tool("sievec", &[script.to_str().unwrap()], None);
        assert_eq!((ran.code(), ran.stderr.as_str()), (Some(0), ""), "{ran:?}");
        Site {
            relay,
            server,
            link,
            dir,
        }
    }

    /// Logs in as `user` the way Delta Chat does and sends `command` to store a token.
    fn register(&self, user: &str, command: &str) {
        let mut imap = Imap::login(
            self.server.imap_port,
            &MailServer::address(user),
            &MailServer::password_of(user),
        );
        // What Delta Chat needs to see before it stores a token (and to send a literal).
        for cap in ["METADATA", "XDELTAPUSH", "LITERAL+"] {
            assert!(
                imap.capabilities.iter().any(|c| c == cap),
                "{cap} missing from {:?}",
                imap.capabilities
            );
        }
        imap.command(command);
    }

    /// The README's check: the token as doveadm shows it.
    fn stored_token(&self, user: &str) -> String {
        let ran = self.tool(
            "doveadm",
            &[
                "mailbox",
                "metadata",
                "get",
                "-u",
                &MailServer::address(user),
                "INBOX",
                "/private/devicetoken",
            ],
            None,
        );
        assert_eq!((ran.code(), ran.stderr.as_str()), (Some(0), ""), "{ran:?}");
        ran.stdout.trim_end().to_string()
    }

    fn tool(&self, program: &str, args: &[&str], input: Option<&[u8]>) -> Ran {
        self.server.tool(program, args, input)
    }

    /// Delivers one message to `user` through LMTP; the reply must be 250.
    fn deliver(&self, user: &str, message: &[u8]) -> Delivery {
        let mut lmtp = Lmtp::connect(self.server.lmtp_port);
        let d = lmtp.deliver("alice@example.net", &MailServer::address(user), message);
        assert!(d.reply.starts_with("250 2.0.0 "), "{d:?}");
        d
    }

    /// [`Site::deliver`], also timing the way to the relay: from the end of the data to the
    /// moment the relay had read the one POST it brought.
    fn deliver_timed(&self, user: &str, message: &[u8]) -> (Delivery, Duration) {
        let before = self.relay.requests().len();
        let d = self.deliver(user, message);
        let requests = self.relay.requests();
        assert_eq!(requests.len(), before + 1, "not one POST for {user}");
        let to_post = requests[before].at.saturating_duration_since(d.sent);
        (d, to_post)
    }

    /// Where the program keeps the state of `token` for `user` (default cache dir: HOME is
    /// all Dovecot gives it).
    fn cache_dir(&self, user: &str) -> PathBuf {
        self.server.home(user).join(".cache/deltapush-mda")
    }

    /// The lines of the Dovecot log that say something is wrong, or that come from the
    /// program (its standard error).
    fn complaints(&self) -> Vec<String> {
        let log = self.server.log();
        log.lines()
            .filter(|l| {
                ["Error:", "Warning:", "Fatal:", "Panic:", "deltapush-mda"]
                    .iter()
                    .any(|w| l.contains(w))
            })
            .map(str::to_string)
            .collect()
    }

    fn assert_quiet_log(&self) {
        let complaints = self.complaints();
        assert!(
            complaints.is_empty(),
            "the Dovecot log complains:\n{}",
            complaints.join("\n")
        );
    }
}

/// Asserts that the relay received exactly these bodies, in order, each a POST to /notify.
fn assert_posts(relay: &Relay, want: &[&str]) {
    for r in relay.requests() {
        assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/notify"));
    }
    relay.assert_bodies(want);
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn each_delivery_wakes_the_phone_that_registered_over_imap(v: Version) {
    let users = ["u1", "u2", "u3", "u4", "u5", "quoted"];
    let site = Site::new(v, &users, Relay::start());
    // Five phones, five mailboxes: each delivery is the first for its token, so the shipped
    // script runs unchanged and no rate limit is in play.
    let tokens: Vec<String> = (1..=5).map(|n| phone_token(n, 908)).collect();
    for (user, token) in users.iter().zip(&tokens) {
        site.register(user, &setmetadata_literal(token));
    }
    assert_eq!(site.stored_token("u1"), tokens[0]);

    let mut to_post = Vec::new();
    let mut replies = Vec::new();
    for (n, user) in users[..5].iter().enumerate() {
        let (d, t) = site.deliver_timed(user, &plain(n as u32));
        to_post.push(t);
        replies.push(d.took());
    }
    let shown = |v: &[Duration]| {
        v.iter()
            .map(|d| format!("{:.1}", ms(*d)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "Sieve path: delivery to POST {} ms (median {:.1} ms); LMTP reply after {} ms",
        shown(&to_post),
        ms(median(to_post.clone())),
        shown(&replies)
    );
    let want: Vec<&str> = tokens.iter().map(String::as_str).collect();
    assert_posts(&site.relay, &want);
    assert!(
        median(to_post.clone()) < Duration::from_millis(200),
        "median delivery to POST {:?}",
        median(to_post)
    );
    for user in &users[..5] {
        let inbox = site.server.folder(user, "INBOX");
        assert_eq!(inbox.len(), 1, "{user}: {inbox:?}");
        assert!(!inbox[0].seen);
    }

    // Newer apps send the token as a quoted string.
    let newer = phone_token(6, 920);
    site.register("quoted", &setmetadata_quoted(&newer));
    site.deliver("quoted", &plain(6));
    assert_posts(&site.relay, &[want.as_slice(), &[newer.as_str()]].concat());
    site.assert_quiet_log();
}

fn automatic_mail_and_users_without_a_token_run_nothing(v: Version) {
    let site = Site::new(v, &["ann", "ben", "cid"], Relay::start());
    let ann = phone_token(11, 908);
    site.register("ann", &setmetadata_literal(&ann));

    site.deliver("ann", &bounce());
    assert_posts(&site.relay, &[]);
    assert_eq!(site.server.folder("ann", "INBOX").len(), 1);
    // The token was in place all along, and the bounce left no rate limit behind.
    site.deliver("ann", &plain(1));
    assert_posts(&site.relay, &[&ann]);

    // No token: the script runs no program, which would have made its cache dir.
    site.deliver("ben", &plain(2));
    assert_posts(&site.relay, &[&ann]);
    assert_eq!(site.server.folder("ben", "INBOX").len(), 1);
    assert!(!site.cache_dir("ben").exists());
    assert!(!site.server.home("ben").join(".cache").exists());

    // dovecot-lda, as a mail server without LMTP runs it: the same script.
    let cid = phone_token(12, 920);
    site.register("cid", &setmetadata_literal(&cid));
    let ran = site.tool(
        "dovecot-lda",
        &["-d", &MailServer::address("cid"), "-f", "alice@example.net"],
        Some(&plain(3)),
    );
    assert_eq!(
        (ran.code(), ran.stdout.as_str(), ran.stderr.as_str()),
        (Some(0), "", ""),
        "{ran:?}"
    );
    assert_posts(&site.relay, &[&ann, &cid]);
    assert_eq!(site.server.folder("cid", "INBOX").len(), 1);
    site.assert_quiet_log();
}

fn nothing_about_the_token_stops_the_users_own_script(v: Version) {
    let users = ["dan", "eve", "fin", "gil"];
    let site = Site::new(v, &users, Relay::start());
    let dan = phone_token(21, 908);
    // Over Dovecot's 1024-byte limit for a program argument.
    let eve = phone_token(22, 1100);
    let fin = phone_token(23, 908);
    // Only the user's own client writes this value; whatever it is, it is a token.
    let gil = format!("--url={}", common::refused_url());
    for (user, token) in users.iter().zip([&dan, &eve, &fin, &gil]) {
        site.register(user, &setmetadata_literal(token));
        site.server.put(user, ".dovecot.sieve", OWN_SCRIPT);
    }
    assert_eq!(site.stored_token("eve"), eve);
    // A cache dir that cannot be made: the program fails (exit 78).
    site.server.put("fin", ".cache", "not a directory\n");

    for (n, user) in users.iter().enumerate() {
        site.deliver(user, &plain(n as u32));
    }
    assert_posts(&site.relay, &[&dan, &gil]);
    for user in users {
        assert_eq!(site.server.folder(user, "INBOX"), vec![], "{user}");
        let chats = site.server.folder(user, "Chats");
        assert_eq!(chats.len(), 1, "{user}: {chats:?}");
        assert_eq!(chats[0].flags(), "F", "{user}: {chats:?}");
    }
    // The oversized token is skipped quietly, nothing of it in the log; the failing program
    // says why, in one line (Dovecot adds its exit status at Info level).
    let complaints = site.complaints();
    let errors: Vec<&String> = complaints
        .iter()
        .filter(|l| !l.contains(": Info: "))
        .collect();
    assert_eq!(errors.len(), 1, "{complaints:#?}");
    let cache_dir = format!(
        "Error: deltapush-mda: cache dir {}: ",
        site.cache_dir("fin").display()
    );
    assert!(errors[0].contains(&cache_dir), "{complaints:#?}");
    assert!(!site.server.log().contains(&eve[8..40]));

    // Not even a program that cannot be run.
    fs::remove_file(&site.link).unwrap();
    site.deliver("dan", &plain(9));
    assert_posts(&site.relay, &[&dan, &gil]);
    assert_eq!(site.server.folder("dan", "INBOX"), vec![]);
    let chats = site.server.folder("dan", "Chats");
    assert_eq!(chats.len(), 2, "{chats:?}");
    assert!(chats.iter().all(|m| m.flags() == "F"), "{chats:?}");
}

fn a_second_device_is_woken_too(v: Version) {
    let site = Site::new(v, &["fay"], Relay::start());
    let a = phone_token(31, 908);
    let b = phone_token(32, 920);
    site.register("fay", &setmetadata_literal(&a));
    site.deliver("fay", &plain(1));
    assert_posts(&site.relay, &[&a]);

    // Device B logs in: the metadata holds one value, the last device's.
    site.register("fay", &setmetadata_literal(&b));
    assert_eq!(site.stored_token("fay"), b);
    // A was woken a moment ago: its interval is made to be over.
    backdate(
        &site.cache_dir("fay").join(sha256_hex(a.as_bytes())),
        "notified",
        Duration::from_secs(60),
    );
    site.deliver("fay", &plain(2));
    // The token given first, then the remembered one.
    assert_posts(&site.relay, &[&a, &b, &a]);
    assert_eq!(site.server.folder("fay", "INBOX").len(), 2);
    site.assert_quiet_log();
}

fn a_message_inside_the_interval_is_not_held_for_its_wakeup(v: Version) {
    let site = Site::new(v, &["hal"], Relay::start());
    let token = phone_token(51, 908);
    site.register("hal", &setmetadata_literal(&token));
    site.deliver("hal", &plain(1));
    assert_posts(&site.relay, &[&token]);
    // 2 s of the 10 s interval left, for the wakeup the next message gets.
    let state = site.cache_dir("hal").join(sha256_hex(token.as_bytes()));
    backdate(&state, "notified", Duration::from_secs(8));

    // Dovecot answers once the program's output ends: the sender it leaves behind must not
    // hold that up.
    let d = site.deliver("hal", &plain(2));
    println!(
        "inside the interval: LMTP reply after {:.0} ms",
        ms(d.took())
    );
    assert!(d.took() < Duration::from_secs(1), "{d:?}");
    assert_posts(&site.relay, &[&token]);
    wait_for(Duration::from_secs(5), "the deferred wakeup", || {
        site.relay.requests().len() == 2
    });
    assert_posts(&site.relay, &[&token, &token]);
    assert_eq!(site.server.folder("hal", "INBOX").len(), 2);
    site.assert_quiet_log();
}

fn a_hung_relay_holds_delivery_for_less_than_8_s(v: Version) {
    let site = Site::new(v, &["gus"], Relay::scripted(Reply::Hang, []));
    let token = phone_token(41, 908);
    site.register("gus", &setmetadata_literal(&token));
    let d = site.deliver("gus", &plain(1));
    println!("hung relay: LMTP reply after {:.0} ms", ms(d.took()));
    assert!(d.took() < Duration::from_secs(8), "{d:?}");
    assert_eq!(site.relay.requests().len(), 1, "the relay was never asked");
    assert_eq!(site.server.folder("gus", "INBOX").len(), 1);
    // The program's own line, at Error level, naming the token without showing it; nothing
    // from Dovecot about the program (a kill after its 10 s would be).
    let complaints = site.complaints();
    assert_eq!(complaints.len(), 1, "{complaints:#?}");
    assert!(
        complaints[0].contains("Error: deltapush-mda: token ")
            && complaints[0].contains("not notified"),
        "{complaints:#?}"
    );
    assert!(!site.server.log().contains(&token[8..40]));
}

fn debian_conf_d_takes_the_fragment_as_shipped(v: Version) {
    // A copy of the stock /etc/dovecot of the installed package, with the file added as the
    // README says: the files that sort after it (90-sieve.conf, ...) must leave it in force.
    let etc = match v {
        Version::V23 => PathBuf::from("/etc/dovecot"),
        Version::V24 => common::dovecot::trixie_root().join("etc/dovecot"),
    };
    assert!(
        etc.join("conf.d").is_dir(),
        "no {}/conf.d: run `sudo .ci/setup`",
        etc.display()
    );
    let dir = v.tempdir("deltapush-conf-d-");
    let conf_d = dir.path().join("conf.d");
    fs::create_dir(&conf_d).unwrap();
    fs::copy(etc.join("dovecot.conf"), dir.path().join("dovecot.conf")).unwrap();
    for entry in fs::read_dir(etc.join("conf.d")).unwrap() {
        let path = entry.unwrap().path();
        fs::copy(&path, conf_d.join(path.file_name().unwrap())).unwrap();
    }
    fs::write(
        conf_d.join("90-deltapush.conf"),
        render(&format!("{}/90-deltapush.conf", v.examples()), &[]),
    )
    .unwrap();

    // doveconf's answer for `name` (seen through `filter`, if any); `-h`: the value alone.
    let doveconf = |filter: Option<&str>, args: &[&str]| {
        let mut cmd = v.command(&v.program("doveconf"));
        cmd.arg("-c").arg(dir.path().join("dovecot.conf"));
        if let Some(f) = filter {
            cmd.args(["-f", f]);
        }
        let out = cmd.args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.is_empty(),
            "{args:?}: {stderr}"
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    if v == Version::V24 {
        // 2.4 shows a setting as it is written; the lists hold what this file adds and no more
        // (the stock files set none of them).
        let want = [
            (None, "imap_metadata", "imap_metadata = yes"),
            (
                None,
                "mail_attribute",
                "mail_attribute {\n  dict file {\n    path = %{home}/dovecot-attributes\n  }\n}",
            ),
            (
                Some("protocol=imap"),
                "imap_capability",
                "imap_capability {\n  XDELTAPUSH = yes\n}",
            ),
            (
                Some("protocol=lmtp"),
                "mail_plugins",
                "mail_plugins {\n  sieve = yes\n}",
            ),
            (
                Some("protocol=lda"),
                "mail_plugins",
                "mail_plugins {\n  sieve = yes\n}",
            ),
            (
                None,
                "sieve_plugins",
                "sieve_plugins {\n  sieve_extprograms = yes\n}",
            ),
            (
                None,
                "sieve_global_extensions",
                "sieve_global_extensions {\n  vnd.dovecot.execute = yes\n  mboxmetadata = yes\n}",
            ),
            (
                Some("protocol=lmtp"),
                "sieve_script",
                &format!("sieve_script deltapush {{\n  path = {SCRIPT}\n  type = before\n}}"),
            ),
            (
                None,
                "sieve_execute_bin_dir",
                &format!("sieve_execute_bin_dir = {EXEC_DIR}"),
            ),
        ];
        for (filter, name, value) in want {
            assert_eq!(doveconf(filter, &[name]), value, "{name} ({filter:?})");
        }
        return;
    }
    let setting = |filter: Option<&str>, name: &str| doveconf(filter, &["-h", name]);
    let words = |s: String| -> Vec<String> { s.split_whitespace().map(str::to_string).collect() };
    for protocol in ["protocol=lmtp", "protocol=lda"] {
        assert!(
            words(setting(Some(protocol), "mail_plugins")).contains(&"sieve".to_string()),
            "{protocol}"
        );
    }
    assert_eq!(
        setting(Some("protocol=imap"), "imap_capability"),
        "+XDELTAPUSH"
    );
    let want = [
        ("imap_metadata", "yes"),
        ("mail_attribute_dict", "file:%h/dovecot-attributes"),
        ("plugin/sieve_plugins", "sieve_extprograms"),
        (
            "plugin/sieve_global_extensions",
            "+vnd.dovecot.execute +mboxmetadata",
        ),
        ("plugin/sieve_before", SCRIPT),
        ("plugin/sieve_execute_bin_dir", EXEC_DIR),
        // Debian's own setting for the users' scripts stays.
        ("plugin/sieve", "file:~/sieve;active=~/.dovecot.sieve"),
    ];
    for (name, value) in want {
        assert_eq!(setting(None, name), value, "{name}");
    }
}

/// Each case, on the host's Dovecot 2.3 and on Debian 13's 2.4: `v23::name` and `v24::name`.
macro_rules! on_both_versions {
    ($($name:ident),* $(,)?) => {
        mod v23 {
            $(#[test]
            fn $name() {
                super::$name(super::Version::V23)
            })*
        }
        mod v24 {
            $(#[test]
            fn $name() {
                super::$name(super::Version::V24)
            })*
        }
    };
}

on_both_versions!(
    each_delivery_wakes_the_phone_that_registered_over_imap,
    automatic_mail_and_users_without_a_token_run_nothing,
    nothing_about_the_token_stops_the_users_own_script,
    a_second_device_is_woken_too,
    a_message_inside_the_interval_is_not_held_for_its_wakeup,
    a_hung_relay_holds_delivery_for_less_than_8_s,
    debian_conf_d_takes_the_fragment_as_shipped,
);
