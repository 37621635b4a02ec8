//! `deltapush-mda --setup NAME` (issue 21): from the app's log (tests/data/applog/, written
//! from the apps' and the core's sources) to a watcher, against real Dovecots on 127.0.0.1.
//! Every run here has no controlling terminal unless it is given a pty, and no user systemd
//! (no XDG_RUNTIME_DIR), unless a stand-in systemctl is on its PATH.
//!
//! The cases run side by side (`run_cases`), each with servers of its own.

mod common;

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::dovecot::{Dovecot, MailServer, USER, Variant, Version};
use common::lmtp::Lmtp;
use common::realmail::{Ca, Daemon, MailUser, TlsFront, free_port, poll};
use common::{Input, Relay, Run, Sandbox, TOKEN_BODY, chat, exec, line, mode, run_cases, shown};

/// The tokens of the logs in tests/data/applog/.
const ANDROID: &str =
    "fcm-chat.delta:dGhpcyBpcyBub3QgYSByZWFsIHRva2Vu:APA91bHxq3k-Ex4mpleT0ken_forTests0nly";
const IOS: &str = "3f1d9a7c0b2e4f6a8c1d3e5f7a9b0c2d4e6f8a1b3c5d7e9f0a2b4c6d8e0f1a2b";

fn log(name: &str) -> String {
    fs::read_to_string(common::data(&format!("applog/{name}.txt"))).unwrap()
}

fn config(sandbox: &Sandbox) -> PathBuf {
    sandbox.home.path().join("config")
}

fn watch_dir(sandbox: &Sandbox) -> PathBuf {
    config(sandbox).join("deltapush-mda/watch")
}

/// `--setup work ARGS` in the sandbox, its config there, in a session of its own: no terminal.
fn setup(sandbox: &Sandbox, args: &[&str]) -> Command {
    let mut cmd = sandbox.command();
    cmd.env("XDG_CONFIG_HOME", config(sandbox))
        .args(["--setup", "work"])
        .args(args);
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| match libc::setsid() {
            -1 => Err(io::Error::last_os_error()),
            _ => Ok(()),
        })
    };
    cmd
}

fn private_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, text).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    path
}

const ENV_HEAD: &str = "# deltapush-watch@work: written by deltapush-mda --setup work; run it \
                        again to change it. Other lines are kept.\n";
const TOKENS_HEAD: &str = "# The push tokens woken for deltapush-watch@work, one a line \
                           (deltapush-mda --setup work adds them).\n";

fn no_systemd_line(stdout: &str) -> &str {
    stdout
        .lines()
        .find(|l| l.starts_with("No user systemd answers here (systemctl --user: "))
        .unwrap_or_else(|| panic!("no word of the missing systemd:\n{stdout}"))
}

/// The command the set-up printed for want of a user systemd: its last line.
fn printed_command(stdout: &str) -> String {
    let last = stdout.lines().last().unwrap();
    last.strip_prefix("  ")
        .unwrap_or_else(|| panic!("no command last:\n{stdout}"))
        .to_string()
}

// ---------------------------------------------------------------------------------------------

/// Each form of the settings line (cores 1.136 to 2.59, Android and iOS) becomes the right
/// mailbox, checked on a real server before anything is written; run again, the set-up adds a
/// phone, keeps the password and the lines it does not own, and never writes a token twice.
fn every_form_of_the_log_sets_up_its_account() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(&dir.path().join("ca"));
    let tls = Dovecot::start(&dir.path().join("tls"), &ca, MailUser::get());
    let starttls = Dovecot::start_variant(
        &dir.path().join("starttls"),
        &ca,
        MailUser::get(),
        Variant {
            starttls: true,
            ..Variant::default()
        },
    );
    // The folder that the 2.53 log names.
    for sub in ["cur", "new", "tmp"] {
        fs::create_dir_all(dir.path().join("tls/mail/Maildir/.DeltaChat").join(sub)).unwrap();
    }
    MailUser::get().own(&dir.path().join("tls/mail"));
    // Where the apps found the servers, the servers of this test: one over TLS, one with
    // STARTTLS, both known to the certificate as localhost, not in example.org.
    let here = |text: String| {
        text.replace("imap.example.org:993", &format!("localhost:{}", tls.port))
            .replace(
                "imap.example.org:143",
                &format!("localhost:{}", starttls.port),
            )
    };
    let user = USER.replace('@', "%40");
    let imaps = format!("imaps://{user}@localhost:{}", tls.port);
    let imap = format!("imap://{user}@localhost:{}", starttls.port);
    for (name, url, token, dc) in [
        ("android-2.59", imaps.clone(), ANDROID, &tls),
        ("ios-2.59", imaps.clone(), IOS, &tls),
        ("android-2.53", format!("{imaps}/DeltaChat"), ANDROID, &tls),
        ("ios-2.40", imaps.clone(), IOS, &tls),
        ("android-2.20", imaps.clone(), ANDROID, &tls),
        ("android-1.142", imaps.clone(), ANDROID, &tls),
        ("ios-1.136", imap.clone(), IOS, &starttls),
    ] {
        let sandbox = Sandbox::new();
        let password = private_file(sandbox.home.path(), "pw", &format!("{}\n", dc.password));
        let text = here(log(name));
        // One of them with a password manager's command instead of a file.
        let by_command = format!("cat {}", password.display());
        let (secret_option, secret, secret_env) = match name {
            "ios-2.40" => (
                "--password-command",
                by_command.as_str(),
                "DELTAPUSH_PASSWORD_COMMAND",
            ),
            _ => (
                "--password-file",
                password.to_str().unwrap(),
                "DELTAPUSH_PASSWORD_FILE",
            ),
        };
        let mut args = vec!["--trust-server", "localhost", secret_option, secret];
        // Only where the log hides the address.
        if text.contains("***@") {
            args.extend(["--address", USER]);
        }
        let mut cmd = setup(&sandbox, &args);
        cmd.env("SSL_CERT_FILE", &ca.cert);
        let run = exec(cmd, text.as_str());
        assert_eq!((run.code, run.stderr.as_str()), (0, ""), "{name}: {run:?}");
        let lines: Vec<&str> = run.stdout.lines().collect();
        assert_eq!(lines[0], format!("{url}: logging in as {USER}"), "{name}");
        assert!(
            lines[1].starts_with(&format!("{url}: logged in")),
            "{name}: {run:?}"
        );
        let watch = watch_dir(&sandbox);
        let tokens = watch.join("work.tokens");
        assert!(
            lines.contains(&format!("Token {}: added.", shown(token)).as_str()),
            "{name}: {run:?}"
        );
        assert_eq!(
            fs::read_to_string(watch.join("work.env")).unwrap(),
            format!(
                "{ENV_HEAD}DELTAPUSH_WATCH={url}\n{secret_env}={secret}\n\
                 DELTAPUSH_TOKEN_FILE={}\n",
                tokens.display()
            ),
            "{name}"
        );
        assert_eq!(
            fs::read_to_string(&tokens).unwrap(),
            format!("{TOKENS_HEAD}{token}\n"),
            "{name}"
        );
        no_systemd_line(&run.stdout);
        assert_eq!(
            printed_command(&run.stdout),
            format!(
                "{} --watch {url} {secret_option} {} --token-file {}",
                common::bin().display(),
                match name {
                    "ios-2.40" => format!("'{secret}'"),
                    _ => secret.to_string(),
                },
                tokens.display()
            ),
            "{name}"
        );
        if name != "android-2.59" {
            continue;
        }
        run_again(&sandbox, &here, &ca);
    }
    // A log with no server settings, and the mailbox given instead.
    let sandbox = Sandbox::new();
    let password = private_file(sandbox.home.path(), "pw", &format!("{}\n", tls.password));
    let mut cmd = setup(
        &sandbox,
        &[
            "--watch",
            &imaps,
            "--password-file",
            password.to_str().unwrap(),
        ],
    );
    cmd.env("SSL_CERT_FILE", &ca.cert);
    let run = exec(cmd, log("ios-partial").as_str());
    assert_eq!((run.code, run.stderr.as_str()), (0, ""), "{run:?}");
    assert!(
        fs::read_to_string(watch_dir(&sandbox).join("work.env"))
            .unwrap()
            .contains(&format!("\nDELTAPUSH_WATCH={imaps}\n"))
    );
    // A server whose certificate the app takes unchecked (here: not signed by a CA this machine
    // trusts): the watcher checks it, and the line says why the app did not mind.
    let sandbox = Sandbox::new();
    let password = private_file(sandbox.home.path(), "pw", &format!("{}\n", tls.password));
    let cmd = setup(
        &sandbox,
        &[
            "--address",
            USER,
            "--trust-server",
            "localhost",
            "--password-file",
            password.to_str().unwrap(),
        ],
    );
    let lax =
        here(log("android-2.59")).replace("] cert_automatic", "] cert_accept_invalid_certificates");
    let run = exec(cmd, lax.as_str());
    assert_eq!(run.code, 69, "{run:?}");
    assert!(
        run.stderr.starts_with(&format!(
            "deltapush-mda: none of the 2 servers in the log answered, the last: {imap}: "
        )) && run.stderr.ends_with(
            " (the app takes any certificate of this server, cert_accept_invalid_certificates; \
             the watcher checks it); nothing written\n"
        ) && run.stderr.lines().count() == 1,
        "{run:?}"
    );
    assert!(!config(&sandbox).exists());
    // A wrong password: refused by the server, so nothing is written. Last: Dovecot slows the
    // logins from an address after a failed one.
    let sandbox = Sandbox::new();
    let wrong = private_file(sandbox.home.path(), "pw", "wrong\n");
    let mut cmd = setup(
        &sandbox,
        &[
            "--address",
            USER,
            "--trust-server",
            "localhost",
            "--password-file",
            wrong.to_str().unwrap(),
        ],
    );
    cmd.env("SSL_CERT_FILE", &ca.cert);
    let run = exec(cmd, here(log("android-2.59")).as_str());
    assert_eq!(run.code, 77, "{run:?}");
    assert!(
        run.stderr.starts_with(&format!("deltapush-mda: {imaps}: "))
            && run.stderr.ends_with("; nothing written\n")
            && run.stderr.lines().count() == 1,
        "{run:?}"
    );
    assert!(!config(&sandbox).exists());
}

/// The second phone's log, the same log again, and systemd: all on the account set up above.
fn run_again(sandbox: &Sandbox, here: &dyn Fn(String) -> String, ca: &Ca) {
    let watch = watch_dir(sandbox);
    let env = watch.join("work.env");
    let tokens = watch.join("work.tokens");
    let mut text = fs::read_to_string(&env).unwrap();
    text.push_str("DELTAPUSH_INTERVAL=1m\n");
    fs::write(&env, &text).unwrap();
    // No password, no --trust-server, no terminal: what it had is kept.
    let again = |args: &[&str], log_name: &str, path: Option<&Path>| -> Run {
        let mut cmd = setup(sandbox, args);
        cmd.env("SSL_CERT_FILE", &ca.cert);
        if let Some(path) = path {
            cmd.env("PATH", path);
        }
        exec(cmd, here(log(log_name)).as_str())
    };
    let run = again(&["--address", USER], "ios-2.59", None);
    assert_eq!((run.code, run.stderr.as_str()), (0, ""), "{run:?}");
    assert!(
        run.stdout
            .contains(&format!("Token {}: added.\n", shown(IOS)))
    );
    assert_eq!(fs::read_to_string(&env).unwrap(), text);
    assert_eq!(
        fs::read_to_string(&tokens).unwrap(),
        format!("{TOKENS_HEAD}{ANDROID}\n{IOS}\n")
    );
    let written = fs::metadata(&tokens).unwrap().modified().unwrap();
    let run = again(&["--address", USER], "android-2.59", None);
    assert_eq!((run.code, run.stderr.as_str()), (0, ""), "{run:?}");
    assert!(
        run.stdout
            .contains(&format!("Token {}: already there.\n", shown(ANDROID)))
    );
    assert_eq!(fs::metadata(&tokens).unwrap().modified().unwrap(), written);
    assert_eq!(fs::read_to_string(&env).unwrap(), text);

    // A user systemd, as systemctl and loginctl stand-ins that note what they are asked.
    let bin = sandbox.home.path().join("bin");
    fs::create_dir(&bin).unwrap();
    let calls = sandbox.home.path().join("calls");
    let script = |name: &str, body: &str| {
        let path = bin.join(name);
        fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    };
    script(
        "systemctl",
        &format!("echo \"systemctl $*\" >> {}", calls.display()),
    );
    script(
        "loginctl",
        &format!("echo \"loginctl $*\" >> {}; echo no", calls.display()),
    );
    let path = format!("{}:/usr/bin:/bin", bin.display());
    let run = again(&["--address", USER], "android-2.59", Some(Path::new(&path)));
    assert_eq!((run.code, run.stderr.as_str()), (0, ""), "{run:?}");
    let uid = unsafe { libc::getuid() };
    assert_eq!(
        fs::read_to_string(&calls).unwrap(),
        format!(
            "systemctl --user daemon-reload\nsystemctl --user enable deltapush-watch@work.service\n\
             systemctl --user restart deltapush-watch@work.service\n\
             loginctl show-user {uid} --property=Linger --value\n"
        )
    );
    assert!(run.stdout.ends_with(
        "Started deltapush-watch@work.service; `journalctl --user -u \
         deltapush-watch@work.service` shows what it says.\n\
         Lingering is off for you: the watcher stops when you log out, and starts again only \
         when you log in. `loginctl enable-linger` keeps it running from boot on.\n"
    ));
    // A unit systemd will not enable: its word, and the status of a service that is not there.
    script(
        "systemctl",
        "case \"$2\" in enable) echo 'Failed to enable unit: Unit file is masked.' >&2; exit 1;; esac",
    );
    let run = again(&["--address", USER], "android-2.59", Some(Path::new(&path)));
    assert_eq!(
        run.said(),
        (
            69,
            line(
                "systemctl --user enable deltapush-watch@work.service: Failed to enable unit: \
                 Unit file is masked."
            )
            .as_str()
        )
    );
}

/// The interactive path on a real terminal: the log pasted, the address and the trust asked,
/// the password typed and never echoed; then the printed command watches the mailbox (a
/// Dovecot behind TLS) and wakes the log's token for a message handed over through LMTP.
fn from_the_log_on_a_terminal_to_a_woken_phone() {
    let dir = Version::V23.tempdir("deltapush-setup-");
    let server = MailServer::start(Version::V23, dir.path(), MailUser::get(), &["me"], &[]);
    let ca = Ca::new(&dir.path().join("ca"));
    let front = TlsFront::start(&ca, server.imap_port, dir.path());
    let relay = Relay::start();
    let sandbox = Sandbox::new();
    let token = common::token(21);
    // The first server of the log is gone: the second one is the one set up.
    let dead = free_port();
    let text = log("android-2.59").replace(ANDROID, &token).replace(
        "imap:[imap.example.org:993:tls, imap.example.org:143:starttls]",
        &format!("imap:[127.0.0.1:{dead}:tls, 127.0.0.1:{}:tls]", front.port),
    );
    let password = MailServer::password_of("me");
    let address = MailServer::address("me");
    let mut cmd = sandbox.command();
    cmd.env("XDG_CONFIG_HOME", config(&sandbox))
        .env("SSL_CERT_FILE", &ca.cert)
        .args(["--setup", "work", "--url", &relay.url]);
    let mut pty = Pty::spawn(cmd);
    pty.expect(
        "Paste the log from Delta Chat (Settings → Advanced → View Log), then press Ctrl-D:",
    );
    pty.send(text.as_bytes());
    pty.send(b"\x04");
    pty.expect("Your address at example.org: ");
    let asked_from = pty.seen;
    pty.send(format!("{address}\n").as_bytes());
    pty.expect("The log's server 127.0.0.1 is not in example.org, your address's domain. Send your password to 127.0.0.1? [y/N] ");
    pty.send(b"y\n");
    pty.expect(&format!("Password of {address} at 127.0.0.1 (not shown): "));
    pty.send(format!("{password}\n").as_bytes());
    let (code, output) = pty.wait();
    assert!(
        !output.contains(&password),
        "the password echoed:\n{output}"
    );
    // The paste itself is the terminal's echo; what the program said comes after it.
    let said = &output[asked_from..];
    assert!(!said.contains(TOKEN_BODY), "a token shown:\n{said}");
    assert_eq!(code, 0, "{output}");
    let url = format!(
        "imaps://{}@127.0.0.1:{}",
        address.replace('@', "%40"),
        front.port
    );
    let dead_url = format!("imaps://{}@127.0.0.1:{dead}", address.replace('@', "%40"));
    assert!(
        said.contains(&format!("\n{dead_url}: logging in as {address}\n")),
        "{said}"
    );
    assert!(said.contains("; trying the next server\n"), "{said}");
    assert!(
        said.contains(&format!("\n{url}: logging in as {address}\n")),
        "{said}"
    );
    assert!(
        said.contains(&format!("Token {}: added.\n", shown(&token))),
        "{said}"
    );
    no_systemd_line(said);
    let command = printed_command(said);

    // The files, their modes, nothing else; the unit as systemd reads it.
    let cfg = config(&sandbox);
    let watch = watch_dir(&sandbox);
    let unit = cfg.join("systemd/user/deltapush-watch@.service");
    let want: Vec<(PathBuf, u32)> = vec![
        (cfg.join("deltapush-mda"), 0o700),
        (watch.clone(), 0o700),
        (watch.join("work.env"), 0o600),
        (watch.join("work.password"), 0o600),
        (watch.join("work.tokens"), 0o600),
        (cfg.join("systemd"), 0o700),
        (cfg.join("systemd/user"), 0o700),
        (unit.clone(), 0o644),
    ];
    let mut got: Vec<(PathBuf, u32)> = common::tree(&cfg)
        .into_iter()
        .map(|p| (cfg.join(&p), mode(&cfg.join(&p))))
        .collect();
    got.sort();
    let mut want_sorted = want.clone();
    want_sorted.sort();
    assert_eq!(got, want_sorted);
    assert_eq!(
        fs::read_to_string(watch.join("work.password")).unwrap(),
        format!("{password}\n")
    );
    assert_eq!(
        fs::read_to_string(watch.join("work.env")).unwrap(),
        format!(
            "{ENV_HEAD}DELTAPUSH_WATCH={url}\nDELTAPUSH_PASSWORD_FILE={}\nDELTAPUSH_TOKEN_FILE={}\n\
             DELTAPUSH_URL={}\n",
            watch.join("work.password").display(),
            watch.join("work.tokens").display(),
            relay.url
        )
    );
    let shipped = fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/watch/deltapush-watch@.service"),
    )
    .unwrap();
    assert_eq!(
        fs::read_to_string(&unit).unwrap(),
        shipped.replace(
            "ExecStart=/usr/bin/deltapush-mda ",
            &format!("ExecStart={} ", common::bin().display())
        )
    );
    verify(&sandbox, &unit);

    // The one command left to run: the watcher, which wakes the phone.
    let mut cmd = sandbox.command_for("/bin/sh");
    cmd.arg("-c")
        .arg(format!("exec {command}"))
        .env("SSL_CERT_FILE", &ca.cert)
        .stdout(Stdio::null())
        .stderr(File::create(dir.path().join("watcher.stderr")).unwrap());
    let mut watcher = Daemon::spawn("the printed command", cmd);
    let stderr = || fs::read_to_string(dir.path().join("watcher.stderr")).unwrap_or_default();
    let started = poll(Duration::from_secs(10), || stderr().contains("watching "));
    assert!(started.is_some(), "not watching: {}", stderr());
    let mut lmtp = Lmtp::connect(server.lmtp_port);
    lmtp.deliver("alice@example.net", &address, &chat());
    let woken = poll(Duration::from_secs(10), || !relay.posts().is_empty());
    assert!(woken.is_some(), "no wakeup; watcher: {}", stderr());
    relay.assert_bodies(&[&token]);
    // SAFETY: a plain syscall on the watcher this test started.
    unsafe { libc::kill(watcher.pid() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(
        watcher.wait(Duration::from_secs(5)).code(),
        Some(0),
        "{}",
        stderr()
    );
    assert!(!stderr().contains(&password) && !stderr().contains(TOKEN_BODY));
}

/// `systemd-analyze verify` on the instance `work` of the unit the set-up wrote.
fn verify(sandbox: &Sandbox, unit: &Path) {
    common::realmail::verify_user_unit(
        sandbox.home.path(),
        Some(&config(sandbox)),
        &unit.with_file_name("deltapush-watch@work.service"),
    );
}

/// Without a terminal, each question the log leaves is one line naming its option; a log that
/// needs nothing or cannot have push says so. Nothing is written.
fn questions_without_a_terminal_name_their_options() {
    let chatmail = "This account is on a chatmail relay, which wakes the phone itself: nothing \
                    to set up.\n";
    let desktop = log("android-2.59").replace(&format!("push-token={ANDROID}\n"), "");
    let sandbox = Sandbox::new();
    let pw = private_file(sandbox.home.path(), "pw", "secret\n");
    let pw = pw.to_str().unwrap();
    for (text, args, want) in [
        (
            log("android-2.59"),
            &[][..],
            (
                64,
                "",
                "no terminal to ask for your address: give --address ADDR",
            ),
        ),
        (
            log("android-2.59"),
            &["--address", USER][..],
            (
                64,
                "",
                "no terminal to ask for the password: give --password-file PATH or \
                 --password-command CMD",
            ),
        ),
        (
            log("android-2.59"),
            &["--address", "me@example.net", "--password-file", pw][..],
            (
                64,
                "",
                "me@example.net is not the account of the log (***@example.org): paste the log \
                 of that account",
            ),
        ),
        (
            log("ios-2.40"),
            &["--address", "you@example.org"][..],
            (
                64,
                "",
                "you@example.org is not the account of the log (me@example.org): paste the log \
                 of that account",
            ),
        ),
        (
            log("android-2.59"),
            &["--address", "me at example.org"][..],
            (64, "", "me at example.org: not an email address"),
        ),
        (
            log("ios-partial"),
            &["--address", USER, "--password-file", pw][..],
            (
                64,
                "Line 34 of the log has server settings this version cannot read.\n",
                "no terminal to ask for the IMAP server (the log has no server settings): give \
                 --watch imaps://USER@HOST",
            ),
        ),
        (log("android-chatmail"), &[][..], (0, chatmail, "")),
        (
            log("android-no-token"),
            &[][..],
            (
                64,
                "",
                "this phone has no push token (push-token=<empty>): it has no Google Play \
                 services, so nothing can wake Delta Chat on it",
            ),
        ),
        (
            log("ios-no-token"),
            &[][..],
            (
                64,
                "",
                "this phone has no push token (notify-token=<unset>): notifications are off for \
                 Delta Chat; turn them on, then copy the token again from View Log",
            ),
        ),
        (
            desktop,
            &[][..],
            (
                64,
                "",
                "the log has no push-token= or notify-token= line: paste the log of the phone \
                 from its top (Delta Chat Desktop has no push token)",
            ),
        ),
    ] {
        let run = exec(setup(&sandbox, args), text.as_str());
        let stderr = match want.2 {
            "" => String::new(),
            l => line(l),
        };
        assert_eq!(
            (run.code, run.stdout.as_str(), run.stderr.as_str()),
            (want.0, want.1, stderr.as_str()),
            "{args:?}"
        );
        assert!(!config(&sandbox).exists(), "{args:?}: something written");
    }
}

/// Pastes no app writes: each gets its one line and exit 64, and nothing is written.
fn hostile_pastes_get_one_line_and_nothing_written() {
    let sandbox = Sandbox::new();
    let pw = private_file(sandbox.home.path(), "pw", "secret\n");
    let pw = pw.to_str().unwrap();
    let junk: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    let bad_token = "fcm-chat.delta:abc\u{1b}[2Jdef";
    let with_escape = log("android-2.59").replace(ANDROID, bad_token);
    let token_line = with_escape
        .lines()
        .position(|l| l.starts_with("push-token="))
        .unwrap()
        + 1;
    let elsewhere = log("android-2.59").replace(
        "imap:[imap.example.org:993:tls, imap.example.org:143:starttls]",
        "imap:[imap.example.org.evil.example.net:993:tls]",
    );
    let long = "a".repeat(1 << 20);
    let cases: Vec<(Input, String)> = vec![
        (
            Input::Stream(Box::new(|w| {
                // 100 MB of lines such as a log has: far more than any app shows.
                let lines = "12-07 11:30:01.234  4242  4300 I DeltaChat: src/imap.rs:412: IMAP \
                             IDLE has data.\n"
                    .repeat(1000);
                let mut left = 100usize << 20;
                while left > 0 {
                    let n = left.min(lines.len());
                    w.write_all(&lines.as_bytes()[..n])?;
                    left -= n;
                }
                Ok(())
            })),
            "standard input: more than 16 MiB, not a log from Delta Chat's View Log".into(),
        ),
        (
            junk.into(),
            "standard input, line 1: not text, not a log from Delta Chat's View Log".into(),
        ),
        (
            long.as_str().into(),
            "standard input, line 1: longer than 64 KiB, not a log from Delta Chat's View Log"
                .into(),
        ),
        (
            with_escape.as_str().into(),
            format!(
                "standard input, line {token_line}: token {} has a character that is not \
                 visible ASCII at byte 19; copy it again from Delta Chat",
                shown(bad_token)
            ),
        ),
        (
            elsewhere.as_str().into(),
            "the log's server imap.example.org.evil.example.net is not in example.org, your \
             address's domain: to send the password there, give --trust-server \
             imap.example.org.evil.example.net; nothing written"
                .into(),
        ),
    ];
    for (input, want) in cases {
        let started = Instant::now();
        let cmd = setup(&sandbox, &["--address", USER, "--password-file", pw]);
        let run = exec(cmd, input);
        assert_eq!(run.said(), (64, line(&want).as_str()), "{want}");
        assert_eq!(run.stdout, "", "{want}");
        assert!(started.elapsed() < Duration::from_secs(10), "{want}: slow");
        assert!(!config(&sandbox).exists(), "{want}: something written");
    }
    // The same through --log FILE.
    let file = sandbox.write("junk.log", b"\x7fELF\x02\x01\x01\0\0\0");
    let run = exec(
        setup(&sandbox, &["--log", file.to_str().unwrap()]),
        Input::Null,
    );
    assert_eq!(
        run.said(),
        (
            64,
            line(&format!(
                "--log {}, line 1: not text, not a log from Delta Chat's View Log",
                file.display()
            ))
            .as_str()
        )
    );
    let run = exec(
        setup(&sandbox, &["--log", "/nonexistent/log.txt"]),
        Input::Null,
    );
    assert_eq!(
        run.said(),
        (
            78,
            line("--log /nonexistent/log.txt: No such file or directory (os error 2)").as_str()
        )
    );
    assert!(!config(&sandbox).exists());
}

/// On a terminal, a no to a server outside the address's domain: nothing goes there, nothing
/// is written, exit 77; a password left empty, 64; a paste without the servers: the URL asked.
fn a_no_on_the_terminal_writes_nothing() {
    let sandbox = Sandbox::new();
    let text = log("ios-2.59").replace("imap.example.org", "imap.example.net");
    let start = || {
        let mut cmd = sandbox.command();
        cmd.env("XDG_CONFIG_HOME", config(&sandbox))
            .args(["--setup", "work", "--address", USER]);
        let mut pty = Pty::spawn(cmd);
        pty.expect("then press Ctrl-D:");
        pty.send(text.as_bytes());
        pty.send(b"\x04");
        pty.expect("Send your password to imap.example.net? [y/N] ");
        pty
    };
    let mut pty = start();
    pty.send(b"\n");
    let (code, output) = pty.wait();
    assert_eq!(code, 77, "{output}");
    assert!(output.ends_with(&line(
        "the password does not go to imap.example.net; nothing written"
    )));
    let mut pty = start();
    pty.send(b"yes\n");
    pty.expect(&format!(
        "Password of {USER} at imap.example.net (not shown): "
    ));
    pty.send(b"\n");
    let (code, output) = pty.wait();
    assert_eq!(code, 64, "{output}");
    assert!(output.ends_with(&line("no password typed; nothing written")));
    // A paste cut short: the server is asked for, and a URL without a user is refused.
    let mut cmd = sandbox.command();
    cmd.env("XDG_CONFIG_HOME", config(&sandbox))
        .args(["--setup", "work"]);
    let mut pty = Pty::spawn(cmd);
    pty.expect("then press Ctrl-D:");
    pty.send(log("ios-partial").as_bytes());
    pty.send(b"\n\x04");
    pty.expect(
        "Line 34 of the log has server settings this version cannot read.\n\
         Your IMAP server, as imaps://USER@HOST[:PORT] (%40 for an @ in USER): ",
    );
    pty.send(b"imaps://imap.example.org\n");
    let (code, output) = pty.wait();
    assert_eq!(code, 78, "{output}");
    assert!(output.ends_with(&line(
        "--watch imaps://imap.example.org: no user: imaps://USER@HOST"
    )));
    assert!(!config(&sandbox).exists());
}

#[test]
fn set_up_from_the_log() {
    run_cases(&[
        (
            "every_form_of_the_log_sets_up_its_account",
            every_form_of_the_log_sets_up_its_account,
        ),
        (
            "from_the_log_on_a_terminal_to_a_woken_phone",
            from_the_log_on_a_terminal_to_a_woken_phone,
        ),
        (
            "questions_without_a_terminal_name_their_options",
            questions_without_a_terminal_name_their_options,
        ),
        (
            "hostile_pastes_get_one_line_and_nothing_written",
            hostile_pastes_get_one_line_and_nothing_written,
        ),
        (
            "a_no_on_the_terminal_writes_nothing",
            a_no_on_the_terminal_writes_nothing,
        ),
    ]);
}

// ---------------------------------------------------------------------------------------------

/// A program on a pseudo-terminal of its own, its controlling terminal: what a person sees.
struct Pty {
    master: File,
    child: Child,
    output: Arc<Mutex<Vec<u8>>>,
    /// How much of the output (as text) `expect` has gone past.
    seen: usize,
}

impl Pty {
    fn spawn(mut cmd: Command) -> Pty {
        let (mut master, mut slave) = (0, 0);
        // SAFETY: out-pointers to two ints; no name, settings or size asked for.
        let r = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(r, 0, "openpty: {}", io::Error::last_os_error());
        // SAFETY: openpty gave both, and nothing else owns them.
        let (master, slave) = unsafe { (File::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        cmd.stdin(slave.try_clone().unwrap())
            .stdout(slave.try_clone().unwrap())
            .stderr(slave);
        // SAFETY: setsid and ioctl are async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() == -1 || libc::ioctl(0, libc::TIOCSCTTY, 0) == -1 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            })
        };
        let child = cmd.spawn().unwrap();
        // Our copies of the terminal's end go, so its reads end when the program's do.
        drop(cmd);
        let output = Arc::new(Mutex::new(Vec::new()));
        let mut reader = master.try_clone().unwrap();
        let sink = output.clone();
        std::thread::spawn(move || {
            let mut buf = [0; 4096];
            while let Ok(n @ 1..) = reader.read(&mut buf) {
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Pty {
            master,
            child,
            output,
            seen: 0,
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap()).replace("\r\n", "\n")
    }

    /// Waits until `want` is shown after what was expected before.
    fn expect(&mut self, want: &str) {
        let mut at = None;
        poll(Duration::from_secs(15), || {
            at = self.text()[self.seen..].find(want);
            at.is_some()
        });
        let Some(at) = at else {
            panic!("no {want:?} on the terminal:\n{}", self.text());
        };
        self.seen += at + want.len();
    }

    fn send(&mut self, bytes: &[u8]) {
        self.master.write_all(bytes).unwrap();
    }

    /// The exit code, and all the terminal showed.
    fn wait(mut self) -> (i32, String) {
        let status = poll(Duration::from_secs(30), || {
            self.child.try_wait().unwrap().is_some()
        });
        if status.is_none() {
            let _ = self.child.kill();
            panic!("still running:\n{}", self.text());
        }
        let code = self.child.wait().unwrap().code().unwrap();
        // What it wrote last is on its way.
        std::thread::sleep(Duration::from_millis(100));
        (code, self.text())
    }
}
