//! A Dovecot IMAP server of the test's own: config, passwd-file and Maildir in a temp dir,
//! IMAP over TLS on a free port of 127.0.0.1, stopped when dropped.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::realmail::{Ca, Daemon, MailUser, free_port, poll, require, wait_listening};

/// The account, as the example files spell it, so they need no change but the password.
pub const USER: &str = "me@example.org";

pub struct Dovecot {
    pub port: u16,
    pub password: String,
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

impl Dovecot {
    pub fn start(dir: &Path, ca: &Ca, mail_user: MailUser) -> Dovecot {
        let dovecot = require("dovecot");
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
        // Unprivileged, Dovecot runs every service as the one user it has and cannot chroot.
        let unprivileged = if mail_user.is_root_switch() {
            String::new()
        } else {
            let me = mail_user.name();
            format!(
                "default_internal_user = {me}\ndefault_login_user = {me}\n\
                 service anvil {{\n  chroot =\n}}\n\
                 service stats {{\n  unix_listener stats-writer {{\n    group =\n  }}\n}}\n\
                 service imap-hibernate {{\n  unix_listener imap-hibernate {{\n    group =\n  }}\n}}\n\
                 service dict {{\n  unix_listener dict {{\n    group =\n  }}\n}}\n\
                 service dict-async {{\n  unix_listener dict-async {{\n    group =\n  }}\n}}\n"
            )
        };
        let login_chroot = if mail_user.is_root_switch() {
            ""
        } else {
            "  chroot =\n"
        };
        let config = format!(
            "base_dir = {run}\nstate_dir = {state}\nlog_path = {log}\n\
             protocols = imap\nlisten = 127.0.0.1\n\
             ssl = required\nssl_cert = <{cert}\nssl_key = <{key}\n\
             auth_mechanisms = plain login\n\
             first_valid_uid = {uid}\n\
             passdb {{\n  driver = passwd-file\n  args = {passwd}\n}}\n\
             userdb {{\n  driver = passwd-file\n  args = {passwd}\n}}\n\
             mail_location = maildir:{maildir}\n\
             # The process title says IDLE while a client idles: the tests wait on it.\n\
             verbose_proctitle = yes\n\
             {unprivileged}\
             service imap-login {{\n{login_chroot}  inet_listener imap {{\n    port = 0\n  }}\n\
             \x20 inet_listener imaps {{\n    address = 127.0.0.1\n    port = {port}\n    ssl = yes\n  }}\n}}\n",
            run = d("run").display(),
            state = d("state").display(),
            log = d("dovecot.log").display(),
            cert = ca.server_cert.display(),
            key = ca.server_key.display(),
            uid = mail_user.uid,
            passwd = d("passwd").display(),
            maildir = maildir.display(),
        );
        fs::write(d("dovecot.conf"), config).unwrap();
        let mut cmd = Command::new(dovecot);
        cmd.arg("-F").arg("-c").arg(d("dovecot.conf"));
        let mut daemon = Daemon::spawn("dovecot", cmd);
        let log = d("dovecot.log");
        wait_listening(port, &mut daemon, || {
            fs::read_to_string(&log).unwrap_or_default()
        });
        Dovecot {
            port,
            password,
            dir: dir.to_path_buf(),
            maildir,
            mail_user,
            seq: AtomicU32::new(0),
            daemon,
        }
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
        let mut all = Vec::new();
        for sub in ["new", "cur"] {
            for entry in fs::read_dir(self.maildir.join(sub)).unwrap() {
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
            let stat = fs::read_to_string(p.path().join("stat")).unwrap_or_default();
            // pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1));
            ppid == Some(master.as_str())
                && fs::read(p.path().join("cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(" IDLE]"))
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
