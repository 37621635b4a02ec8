//! A Dovecot IMAP server of the test's own: config, passwd-file and Maildir in a temp dir,
//! IMAP over TLS on a free port of 127.0.0.1, stopped when dropped.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::realmail::{Ca, Daemon, MailUser, free_port, in_root, poll, require, wait_listening};
use super::realmail::{Ran, run_with_input};

/// The account, as the example files spell it, so they need no change but the password.
pub const USER: &str = "me@example.org";

pub struct Dovecot {
    pub port: u16,
    pub password: String,
    /// As written to `dovecot.conf`, for a restart.
    config: String,
    dir: PathBuf,
    maildir: PathBuf,
    mail_user: MailUser,
    seq: AtomicU32,
    daemon: Daemon,
}

/// One message in the Maildir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub name: String,
    pub seen: bool,
}

/// How a [`Dovecot`] differs from the default: IMAP over TLS from the start, IDLE offered.
#[derive(Debug, Clone, Default)]
pub struct Variant {
    /// Plain IMAP with STARTTLS (required before login) instead of implicit TLS.
    pub starttls: bool,
    /// Leave IDLE out of the capabilities, as servers without it do.
    pub no_idle: bool,
    /// Log in with OAuth 2 (XOAUTH2, OAUTHBEARER) only, checking each token at this
    /// introspection URL (RFC 7662, POST) instead of the password.
    pub oauth2: Option<String>,
}

impl Dovecot {
    pub fn start(dir: &Path, ca: &Ca, mail_user: MailUser) -> Dovecot {
        Dovecot::start_variant(dir, ca, mail_user, Variant::default())
    }

    pub fn start_variant(dir: &Path, ca: &Ca, mail_user: MailUser, variant: Variant) -> Dovecot {
        let d = |name: &str| dir.join(name);
        let maildir = d("mail/Maildir");
        for sub in ["cur", "new", "tmp"] {
            fs::create_dir_all(maildir.join(sub)).unwrap();
        }
        for sub in ["run", "state"] {
            fs::create_dir_all(d(sub)).unwrap();
        }
        mail_user.own(&d("mail"));
        let port = free_port();
        let password = format!("pw-{}-{port}", std::process::id());
        fs::write(
            d("passwd"),
            format!(
                "{USER}:{{PLAIN}}{password}:{}:{}::{}::\n",
                mail_user.uid,
                mail_user.gid,
                d("mail").display()
            ),
        )
        .unwrap();
        let (unprivileged, login_chroot) = unprivileged_conf(&mail_user);
        let (imap_port, imaps_port) = match variant.starttls {
            true => (port, 0),
            false => (0, port),
        };
        let capability = match variant.no_idle {
            true => "imap_capability = IMAP4rev1 LITERAL+ SASL-IR UIDPLUS\n",
            false => "",
        };
        let (mechanisms, passdb) = match &variant.oauth2 {
            None => (
                "plain login",
                format!("passwd-file\n  args = {}", d("passwd").display()),
            ),
            Some(url) => {
                fs::write(
                    d("oauth2.conf"),
                    format!(
                        "introspection_mode = post\nintrospection_url = {url}\n\
                         username_attribute = username\nactive_attribute = active\n\
                         active_value = true\n"
                    ),
                )
                .unwrap();
                (
                    "xoauth2 oauthbearer",
                    format!(
                        "oauth2\n  mechanisms = xoauth2 oauthbearer\n  args = {}",
                        d("oauth2.conf").display()
                    ),
                )
            }
        };
        let config = format!(
            "base_dir = {run}\nstate_dir = {state}\nlog_path = {log}\n\
             protocols = imap\nlisten = 127.0.0.1\n\
             ssl = required\nssl_cert = <{cert}\nssl_key = <{key}\n\
             auth_mechanisms = {mechanisms}\n\
             first_valid_uid = {uid}\n{capability}\
             passdb {{\n  driver = {passdb}\n}}\n\
             userdb {{\n  driver = passwd-file\n  args = {passwd}\n}}\n\
             mail_location = maildir:{maildir}\n\
             # The process title says IDLE while a client idles: the tests wait on it.\n\
             verbose_proctitle = yes\n\
             {unprivileged}\
             service imap-login {{\n{login_chroot}  inet_listener imap {{\n    address = 127.0.0.1\n    port = {imap_port}\n  }}\n\
             \x20 inet_listener imaps {{\n    address = 127.0.0.1\n    port = {imaps_port}\n    ssl = yes\n  }}\n}}\n",
            run = d("run").display(),
            state = d("state").display(),
            log = d("dovecot.log").display(),
            cert = ca.server_cert.display(),
            key = ca.server_key.display(),
            uid = mail_user.uid,
            passwd = d("passwd").display(),
            maildir = maildir.display(),
        );
        let daemon = run_dovecot(dir, &config, &[port]);
        Dovecot {
            port,
            password,
            config,
            dir: dir.to_path_buf(),
            maildir,
            mail_user,
            seq: AtomicU32::new(0),
            daemon,
        }
    }

    /// Stops the server, runs `meanwhile`, and starts it again on the same port and mail.
    pub fn restart(&mut self, meanwhile: impl FnOnce(&Dovecot)) {
        self.daemon.stop();
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err(),
            "dovecot still listening after its stop"
        );
        meanwhile(self);
        self.daemon = run_dovecot(&self.dir, &self.config, &[self.port]);
    }

    /// Kills every IMAP session process with SIGKILL, as a crash or an OOM kill would; the
    /// server itself goes on. Returns how many there were.
    pub fn kill_sessions(&self) -> usize {
        let master = self.daemon.pid().to_string();
        let mut killed = 0;
        for p in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let is_imap = fs::read(p.path().join("cmdline"))
                .is_ok_and(|c| c.starts_with(b"dovecot/imap ") || c == b"dovecot/imap\0");
            if !is_imap {
                continue;
            }
            let stat = fs::read_to_string(p.path().join("stat")).unwrap_or_default();
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1));
            if ppid != Some(master.as_str()) {
                continue;
            }
            let pid: i32 = p.file_name().to_string_lossy().parse().unwrap();
            // SAFETY: a plain syscall on a session process of this test's own server.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            killed += 1;
        }
        killed
    }

    /// Delivers a message the way an MTA does: written into tmp/, then renamed into new/.
    pub fn deliver(&self, message: &[u8]) {
        self.store(message, "new", "");
    }

    /// Puts a message into INBOX as one that was read long ago: in cur/ with the \Seen flag.
    pub fn deliver_seen(&self, message: &[u8]) {
        self.store(message, "cur", ":2,S");
    }

    fn store(&self, message: &[u8], sub: &str, flags: &str) {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let name = format!(
            "{}.M{}P{}Q{}.deltapush-test",
            now.as_secs(),
            now.subsec_micros(),
            std::process::id(),
            self.seq.fetch_add(1, Ordering::SeqCst)
        );
        let tmp = self.maildir.join("tmp").join(&name);
        fs::write(&tmp, message).unwrap();
        self.mail_user.own(&tmp);
        fs::rename(&tmp, self.maildir.join(sub).join(name + flags)).unwrap();
    }

    /// Every message in INBOX, with its \Seen flag as Dovecot stored it in the file name.
    pub fn messages(&self) -> Vec<Stored> {
        stored(&self.maildir)
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("dovecot.log")).unwrap_or_default()
    }

    /// Whether an IMAP session of this server is in IDLE right now (from its process title).
    pub fn idling(&self) -> bool {
        let master = self.daemon.pid().to_string();
        let Ok(procs) = fs::read_dir("/proc") else {
            return false;
        };
        procs.flatten().any(|p| {
            // The title first: few processes idle, and one read tells.
            if !fs::read(p.path().join("cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(" IDLE]"))
            {
                return false;
            }
            let stat = fs::read_to_string(p.path().join("stat")).unwrap_or_default();
            // pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1));
            ppid == Some(master.as_str())
        })
    }

    /// Waits until a client idles, panicking with `client()` (what the client said) and the
    /// server log after `limit`.
    pub fn wait_idle(&self, limit: Duration, client: impl Fn() -> String) {
        assert!(
            poll(limit, || self.idling()).is_some(),
            "no IMAP client went into IDLE within {limit:?}; {}\ndovecot log:\n{}",
            client(),
            self.log()
        );
    }
}

/// The service settings that let Dovecot run without root: every service as the one user it
/// has, no chroot for the login process (the string to put in its `service` block).
pub fn unprivileged_conf(mail_user: &MailUser) -> (String, &'static str) {
    if mail_user.is_root_switch() {
        return (String::new(), "");
    }
    let me = mail_user.name();
    (
        format!(
            "default_internal_user = {me}\ndefault_login_user = {me}\n\
             service anvil {{\n  chroot =\n}}\n\
             service stats {{\n  unix_listener stats-writer {{\n    group =\n  }}\n}}\n\
             service imap-hibernate {{\n  unix_listener imap-hibernate {{\n    group =\n  }}\n}}\n\
             service dict {{\n  unix_listener dict {{\n    group =\n  }}\n}}\n\
             service dict-async {{\n  unix_listener dict-async {{\n    group =\n  }}\n}}\n"
        ),
        "  chroot =\n",
    )
}

/// Which Dovecot a [`MailServer`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// The host's (Debian 12: 2.3.19).
    V23,
    /// Debian 13's (2.4.1), in the root that `.ci/setup` makes, under chroot.
    V24,
}

/// Where `.ci/setup` makes the Debian 13 root, unless DELTAPUSH_TRIXIE_ROOT says otherwise.
const TRIXIE_ROOT: &str = "/var/lib/deltapush-mda-tests/trixie";

impl Version {
    /// The folder of `examples/dovecot/` with this version's fragment.
    pub fn examples(self) -> &'static str {
        match self {
            Version::V23 => "dovecot/2.3",
            Version::V24 => "dovecot/2.4",
        }
    }

    /// A temp dir for a server of this version. The Debian 13 root sees the host's /tmp at the
    /// same path, and nothing else of it: its paths must be there.
    pub fn tempdir(self, prefix: &str) -> tempfile::TempDir {
        let mut b = tempfile::Builder::new();
        b.prefix(prefix);
        match self {
            Version::V23 => b.tempdir(),
            Version::V24 => b.tempdir_in("/tmp"),
        }
        .unwrap()
    }

    /// A command that runs `program` of this version, named by its path on its system
    /// (`/usr/sbin/dovecot`). For 2.4: under chroot in the Debian 13 root, with /proc, /dev and
    /// /tmp bound in a mount namespace of its own, so no mount outlives the program.
    pub fn command(self, program: &str) -> Command {
        match self {
            Version::V23 => {
                let path = Path::new(program);
                assert!(path.is_file(), "no {program}: run `sudo .ci/setup`");
                Command::new(path)
            }
            Version::V24 => {
                let root = trixie_root();
                assert!(
                    root.join(program.trim_start_matches('/')).is_file(),
                    "no {program} in the Debian 13 root {}: run `sudo .ci/setup`",
                    root.display()
                );
                let mut cmd = in_root(&root, "the Dovecot 2.4 tests");
                cmd.arg(program);
                cmd
            }
        }
    }

    /// The path of a Dovecot program, as this version's system has it.
    pub fn program(self, name: &str) -> String {
        match name {
            "dovecot-lda" => "/usr/lib/dovecot/dovecot-lda".to_string(),
            "dovecot" => "/usr/sbin/dovecot".to_string(),
            _ => match self {
                Version::V23 => require(name).to_str().unwrap().to_string(),
                Version::V24 => format!("/usr/bin/{name}"),
            },
        }
    }
}

/// The Debian 13 root, checked to be one that `.ci/setup` finished; panics (never skips)
/// when it is missing.
pub fn trixie_root() -> PathBuf {
    let root = std::env::var_os("DELTAPUSH_TRIXIE_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(TRIXIE_ROOT));
    assert!(
        root.join(".deltapush-mda-root").is_file(),
        "no Debian 13 root at {} for the Dovecot 2.4 tests: run `sudo .ci/setup` (it makes it \
         once, in about 30 s; DELTAPUSH_TRIXIE_ROOT moves it)",
        root.display()
    );
    root
}

/// A Dovecot that takes mail the way a mail server hands it over, through LMTP (and
/// dovecot-lda), with Sieve at delivery, and serves plain IMAP on 127.0.0.1 (a client on the
/// same host may log in without TLS). Every user has a home of its own with `~/Maildir`, and a
/// user Sieve script at `~/.dovecot.sieve`, as Debian's 90-sieve.conf has it. Like Debian's
/// dovecot.conf, it includes every `conf.d/*.conf`. Of either [`Version`]: the same server in
/// each one's syntax. Stopped when dropped.
pub struct MailServer {
    pub imap_port: u16,
    pub lmtp_port: u16,
    pub version: Version,
    dir: PathBuf,
    mail_user: MailUser,
    _daemon: Daemon,
}

pub const DOMAIN: &str = "example.org";

impl MailServer {
    /// Starts one with `users` (local parts) and the `conf_d` files (name, text) in place.
    pub fn start(
        version: Version,
        dir: &Path,
        mail_user: MailUser,
        users: &[&str],
        conf_d: &[(&str, String)],
    ) -> MailServer {
        if version == Version::V24 {
            assert!(
                dir.starts_with("/tmp"),
                "{}: the Debian 13 root sees only /tmp of the host",
                dir.display()
            );
        }
        let d = |name: &str| dir.join(name);
        for sub in ["run", "state", "conf.d", "home"] {
            fs::create_dir_all(d(sub)).unwrap();
        }
        for (name, text) in conf_d {
            fs::write(d("conf.d").join(name), text).unwrap();
        }
        let mut passwd = String::new();
        for user in users {
            let home = d("home").join(user);
            fs::create_dir_all(&home).unwrap();
            mail_user.own(&home);
            passwd.push_str(&passwd_line(user, &mail_user, &home));
        }
        fs::write(d("passwd"), passwd).unwrap();
        let (imap_port, lmtp_port) = two_free_ports();
        let (unprivileged, login_chroot) = unprivileged_conf(&mail_user);
        let config = match version {
            Version::V23 => format!(
                "base_dir = {run}\nstate_dir = {state}\nlog_path = {log}\n\
                 protocols = imap lmtp\nlisten = 127.0.0.1\n\
                 ssl = no\ndisable_plaintext_auth = no\nauth_mechanisms = plain login\n\
                 first_valid_uid = {uid}\n\
                 passdb {{\n  driver = passwd-file\n  args = {passwd}\n}}\n\
                 userdb {{\n  driver = passwd-file\n  args = {passwd}\n}}\n\
                 mail_location = maildir:~/Maildir\n\
                 plugin {{\n  sieve = file:~/sieve;active=~/.dovecot.sieve\n}}\n\
                 {unprivileged}\
                 service imap-login {{\n{login_chroot}  inet_listener imap {{\n    address = 127.0.0.1\n    port = {imap_port}\n  }}\n\
                 \x20 inet_listener imaps {{\n    port = 0\n  }}\n}}\n\
                 service lmtp {{\n  inet_listener lmtp {{\n    address = 127.0.0.1\n    port = {lmtp_port}\n  }}\n}}\n\
                 !include_try {conf_d}/*.conf\n",
                run = d("run").display(),
                state = d("state").display(),
                log = d("dovecot.log").display(),
                uid = mail_user.uid,
                passwd = d("passwd").display(),
                conf_d = d("conf.d").display(),
            ),
            // The same in 2.4's words. Its listeners take `listen` (here the global one) for an
            // address; the user's script is where Debian 13's 90-sieve.conf suggests it.
            Version::V24 => format!(
                "dovecot_config_version = 2.4.1\ndovecot_storage_version = 2.4.1\n\
                 base_dir = {run}\nstate_dir = {state}\nlog_path = {log}\n\
                 protocols = imap lmtp\nlisten = 127.0.0.1\n\
                 ssl = no\nauth_allow_cleartext = yes\nauth_mechanisms = plain login\n\
                 first_valid_uid = {uid}\n\
                 passdb passwd-file {{\n  passwd_file_path = {passwd}\n}}\n\
                 userdb passwd-file {{\n  passwd_file_path = {passwd}\n}}\n\
                 mail_driver = maildir\nmail_path = ~/Maildir\n\
                 namespace inbox {{\n  inbox = yes\n}}\n\
                 sieve_script personal {{\n  driver = file\n  path = ~/sieve\n  active_path = ~/.dovecot.sieve\n}}\n\
                 {unprivileged}\
                 service imap-login {{\n{login_chroot}  inet_listener imap {{\n    port = {imap_port}\n  }}\n\
                 \x20 inet_listener imaps {{\n    port = 0\n  }}\n}}\n\
                 service lmtp {{\n  inet_listener lmtp {{\n    port = {lmtp_port}\n  }}\n}}\n\
                 !include_try {conf_d}/*.conf\n",
                run = d("run").display(),
                state = d("state").display(),
                log = d("dovecot.log").display(),
                uid = mail_user.uid,
                passwd = d("passwd").display(),
                conf_d = d("conf.d").display(),
            ),
        };
        let mut cmd = version.command(&version.program("dovecot"));
        cmd.arg("-F").arg("-c").arg(d("dovecot.conf"));
        let daemon = run_dovecot_as(cmd, dir, &config, &[imap_port, lmtp_port]);
        // The version asked for, and no other: its first line says which it is (written by its
        // log process, maybe after the ports are open).
        let want = match version {
            Version::V23 => "Info: Dovecot v2.3.",
            Version::V24 => "Info: Dovecot v2.4.",
        };
        let log = || fs::read_to_string(d("dovecot.log")).unwrap_or_default();
        poll(Duration::from_secs(10), || log().contains('\n'));
        assert!(
            log().lines().next().is_some_and(|l| l.contains(want)),
            "not {want}: {}",
            log()
        );
        MailServer {
            imap_port,
            lmtp_port,
            version,
            dir: dir.to_path_buf(),
            mail_user,
            _daemon: daemon,
        }
    }

    /// Adds `user` while the server runs, as an admin does: a home, and a line appended to the
    /// passwd-file, which Dovecot reads again once it has changed.
    pub fn add_user(&self, user: &str) {
        let home = self.home(user);
        fs::create_dir_all(&home).unwrap();
        self.mail_user.own(&home);
        let line = passwd_line(user, &self.mail_user, &home);
        let mut passwd = fs::OpenOptions::new()
            .append(true)
            .open(self.dir.join("passwd"))
            .unwrap();
        std::io::Write::write_all(&mut passwd, line.as_bytes()).unwrap();
    }

    /// The user's address, as LMTP, IMAP and doveadm take it.
    pub fn address(user: &str) -> String {
        format!("{user}@{DOMAIN}")
    }

    pub fn password_of(user: &str) -> String {
        format!("pw-{user}-{}", std::process::id())
    }

    pub fn home(&self, user: &str) -> PathBuf {
        self.dir.join("home").join(user)
    }

    pub fn config(&self) -> PathBuf {
        self.dir.join("dovecot.conf")
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("dovecot.log")).unwrap_or_default()
    }

    /// Writes a file into a user's home, owned by the mail user.
    pub fn put(&self, user: &str, rel: &str, text: &str) -> PathBuf {
        let path = self.home(user).join(rel);
        fs::write(&path, text).unwrap();
        self.mail_user.own(&path);
        path
    }

    /// A Dovecot tool (doveadm, sievec, dovecot-lda, ...), this server's version of it, run
    /// against this server's config.
    pub fn tool(&self, program: &str, args: &[&str], input: Option<&[u8]>) -> Ran {
        let mut cmd = self.version.command(&self.version.program(program));
        cmd.arg("-c").arg(self.config()).args(args);
        let out = self.dir.join("tools");
        fs::create_dir_all(&out).unwrap();
        static RUNS: AtomicU32 = AtomicU32::new(0);
        run_with_input(
            &format!("{program}-{}", RUNS.fetch_add(1, Ordering::SeqCst)),
            cmd,
            &out,
            Duration::from_secs(30),
            input.map(<[u8]>::to_vec),
        )
    }

    /// The messages of a user's folder (`INBOX` or another), flags as Dovecot put them in the
    /// file names.
    pub fn folder(&self, user: &str, folder: &str) -> Vec<Stored> {
        let mut maildir = self.home(user).join("Maildir");
        if folder != "INBOX" {
            maildir = maildir.join(format!(".{folder}"));
        }
        stored(&maildir)
    }
}

/// Two ports of 127.0.0.1 that were free a moment ago, and not the same one (Dovecot refuses a
/// duplicate listener): [`free_port`] never gives one twice.
fn two_free_ports() -> (u16, u16) {
    (free_port(), free_port())
}

/// A user's line of the passwd-file.
fn passwd_line(user: &str, mail_user: &MailUser, home: &Path) -> String {
    format!(
        "{user}@{DOMAIN}:{{PLAIN}}{}:{}:{}::{}::\n",
        MailServer::password_of(user),
        mail_user.uid,
        mail_user.gid,
        home.display()
    )
}

/// What a user's Maildir holds, every folder together, as a phone that fetched now would find
/// it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mailbox {
    /// Messages in a `new/` or `cur/`, and their bytes.
    pub stored: usize,
    pub bytes: u64,
    /// Files in a `tmp/`: messages being written.
    pub writing: usize,
}

impl std::fmt::Display for Mailbox {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(
            f,
            "{} message(s) of {} bytes stored, {} being written",
            self.stored, self.bytes, self.writing
        )
    }
}

/// The Maildir under `home`, as [`Mailbox`] counts it.
pub fn mailbox(home: &Path) -> Mailbox {
    let maildir = home.join("Maildir");
    let mut folders = vec![maildir.clone()];
    if let Ok(entries) = fs::read_dir(&maildir) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with('.') && entry.path().is_dir() {
                folders.push(entry.path());
            }
        }
    }
    let mut mailbox = Mailbox {
        stored: 0,
        bytes: 0,
        writing: 0,
    };
    for folder in folders {
        for sub in ["new", "cur", "tmp"] {
            let Ok(entries) = fs::read_dir(folder.join(sub)) else {
                continue;
            };
            for entry in entries.flatten() {
                if sub == "tmp" {
                    mailbox.writing += 1;
                } else {
                    mailbox.stored += 1;
                    mailbox.bytes += entry.metadata().map_or(0, |m| m.len());
                }
            }
        }
    }
    mailbox
}

impl Stored {
    /// The IMAP flags as Maildir letters (`S` seen, `F` flagged, ...).
    pub fn flags(&self) -> &str {
        self.name.split_once(":2,").map(|(_, f)| f).unwrap_or("")
    }
}

/// Every message of a Maildir folder (none when it does not exist yet), with its \Seen flag as
/// Dovecot stored it in the file name.
fn stored(maildir: &Path) -> Vec<Stored> {
    let mut all = Vec::new();
    for sub in ["new", "cur"] {
        let Ok(entries) = fs::read_dir(maildir.join(sub)) else {
            continue;
        };
        for entry in entries {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            let flags = name.split_once(":2,").map(|(_, f)| f).unwrap_or("");
            all.push(Stored {
                seen: sub == "cur" && flags.contains('S'),
                name,
            });
        }
    }
    all.sort_by(|a, b| a.name.cmp(&b.name));
    all
}

/// Starts Dovecot in the foreground with `config` (written to `dir/dovecot.conf`, logging to
/// `dir/dovecot.log`) and waits until it listens on every port.
fn run_dovecot(dir: &Path, config: &str, ports: &[u16]) -> Daemon {
    let mut cmd = Command::new(require("dovecot"));
    cmd.arg("-F").arg("-c").arg(dir.join("dovecot.conf"));
    run_dovecot_as(cmd, dir, config, ports)
}

/// [`run_dovecot`] with the command given (`dovecot -F -c dir/dovecot.conf` of a version).
fn run_dovecot_as(cmd: Command, dir: &Path, config: &str, ports: &[u16]) -> Daemon {
    fs::write(dir.join("dovecot.conf"), config).unwrap();
    let log = dir.join("dovecot.log");
    let mut daemon = Daemon::spawn("dovecot", cmd);
    for &port in ports {
        wait_listening(port, &mut daemon, || {
            fs::read_to_string(&log).unwrap_or_default()
        });
    }
    daemon
}
