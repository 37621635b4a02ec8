//! Courier-IMAP, an IMAP server that is not Dovecot: Debian 13's (5.2), from the root that
//! `.ci/setup` makes (courier-imap conflicts with dovecot-imapd, so it cannot be on the host),
//! under chroot like Dovecot 2.4. couriertcpd starts one imapd per connection, preauthenticated
//! on a Maildir of the test's own (PREAUTH, as for an imapd reached through ssh: no login, no
//! authdaemon), on 127.0.0.1; socat puts TLS with the test's CA in front. Stopped when dropped.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use super::realmail::{Ca, Daemon, TlsFront, free_port, in_root, wait_listening};

/// Where `.ci/setup` makes the Courier root, unless DELTAPUSH_COURIER_ROOT says otherwise.
const COURIER_ROOT: &str = "/var/lib/deltapush-mda-tests/courier";

pub fn courier_root() -> PathBuf {
    let root = std::env::var_os("DELTAPUSH_COURIER_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(COURIER_ROOT));
    assert!(
        root.join(".deltapush-mda-root").is_file() && root.join("usr/bin/imapd").is_file(),
        "no Courier root at {}: run `sudo .ci/setup` (it makes it once, in about 30 s; \
         DELTAPUSH_COURIER_ROOT moves it)",
        root.display()
    );
    root
}

pub struct Courier {
    /// TLS (imaps://).
    pub port: u16,
    /// couriertcpd itself, plain.
    plain_port: u16,
    maildir: PathBuf,
    seq: AtomicU32,
    // The front first: it goes before the server behind it.
    _front: TlsFront,
    daemon: Daemon,
}

impl Courier {
    /// `dir` must be under /tmp: the root sees the host's /tmp, and nothing else of it.
    pub fn start(dir: &Path, ca: &Ca) -> Courier {
        assert!(
            dir.starts_with("/tmp"),
            "{} is not under /tmp",
            dir.display()
        );
        let root = courier_root();
        let maildir = dir.join("Maildir");
        for sub in ["cur", "new", "tmp"] {
            fs::create_dir_all(maildir.join(sub)).unwrap();
        }
        let plain_port = free_port();
        let log = dir.join("courier.log");
        // The pid is couriertcpd's, for Daemon to stop.
        let mut cmd = in_root(&root, "the Courier tests");
        cmd.args(["env", "-i", "AUTHENTICATED=me"])
            .arg(format!("HOME={}", dir.display()))
            // IDLE told by the file system (inotify), not by polling.
            .args([
                "IMAP_CAPABILITY=IMAP4rev1 UIDPLUS IDLE",
                "IMAP_ENHANCEDIDLE=1",
            ])
            .args([
                "/usr/sbin/couriertcpd",
                "-address=127.0.0.1",
                "-nodnslookup",
                "-maxprocs=20",
                "-stderr=syslog",
            ])
            .arg(plain_port.to_string())
            .arg("/usr/bin/imapd")
            .arg(&maildir)
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap());
        let mut daemon = Daemon::spawn("couriertcpd", cmd);
        wait_listening(plain_port, &mut daemon, || {
            fs::read_to_string(&log).unwrap_or_default()
        });
        let front = TlsFront::start(ca, plain_port, dir);
        Courier {
            port: front.port,
            plain_port,
            maildir,
            seq: AtomicU32::new(0),
            _front: front,
            daemon,
        }
    }

    /// One session that SELECTs INBOX, as a mail client does: Courier keeps the UIDs (and the
    /// UIDVALIDITY) of a Maildir only from a read-write session on, never from EXAMINE alone.
    pub fn select(&self) {
        let stream = TcpStream::connect(("127.0.0.1", self.plain_port)).unwrap();
        let mut out = stream.try_clone().unwrap();
        out.write_all(b"a SELECT INBOX\r\nb LOGOUT\r\n").unwrap();
        let mut said = String::new();
        for line in BufReader::new(stream).lines() {
            let line = line.unwrap();
            said.push_str(&line);
            said.push('\n');
            if line.starts_with("b ") {
                break;
            }
        }
        assert!(said.contains("a OK"), "SELECT: {said}");
        assert!(
            self.maildir.join("courierimapuiddb").exists(),
            "courier kept no UIDs: {said}"
        );
    }

    /// Delivers a message the way an MTA does: written into tmp/, then renamed into new/.
    pub fn deliver(&self, message: &[u8]) {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let name = format!(
            "{}.M{}P{}Q{}.courier-test",
            now.as_secs(),
            now.subsec_micros(),
            std::process::id(),
            self.seq.fetch_add(1, Ordering::SeqCst)
        );
        let tmp = self.maildir.join("tmp").join(&name);
        fs::write(&tmp, message).unwrap();
        fs::rename(&tmp, self.maildir.join("new").join(name)).unwrap();
    }

    /// The messages marked \Seen (`S` among the Maildir flags).
    pub fn seen(&self) -> Vec<String> {
        let mut seen = Vec::new();
        for sub in ["new", "cur"] {
            for entry in fs::read_dir(self.maildir.join(sub)).unwrap() {
                let name = entry.unwrap().file_name().to_string_lossy().into_owned();
                if name
                    .split_once(":2,")
                    .is_some_and(|(_, flags)| flags.contains('S'))
                {
                    seen.push(name);
                }
            }
        }
        seen
    }

    /// Kills every imapd session with SIGKILL; couriertcpd goes on taking connections.
    pub fn kill_sessions(&self) -> usize {
        let server = self.daemon.pid().to_string();
        let mut killed = 0;
        for p in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let stat = fs::read_to_string(p.path().join("stat")).unwrap_or_default();
            // pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1));
            let is_imapd = stat.contains("(imapd)");
            if !is_imapd || ppid != Some(server.as_str()) {
                continue;
            }
            let pid: i32 = p.file_name().to_string_lossy().parse().unwrap();
            // SAFETY: a plain syscall on an imapd of this test's own server.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            killed += 1;
        }
        killed
    }
}
