//! A mail user's world for the tests that drive real mail programs: a temp dir the mail user can
//! traverse, a per-run CA, homes with the token file and a copy of the binary, the example files
//! of `examples/` rendered for them, and the mail programs run in them as the examples set up.

use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::dovecot::Dovecot;
use super::examples::render;
use super::realmail::{Ca, Daemon, MailUser, Ran, require, run, wait_for};
use super::{Relay, bin, kill_senders, sha256_hex, token};

/// --timeout for every run the mail programs start: a relay that is down costs this, not the
/// default 15 s.
pub const TIMEOUT: &str = "1s";

/// One test's temp dir (traversable by the mail user), CA and mail user.
pub struct World {
    pub dir: TempDir,
    pub mail: MailUser,
    pub ca: Ca,
}

/// A run's deferred senders live on after it: whatever a test left waiting goes with its world.
impl Drop for World {
    fn drop(&mut self) {
        kill_senders(self.dir.path());
    }
}

impl World {
    pub fn new() -> World {
        let dir = tempfile::Builder::new()
            .prefix("deltapush-mail-")
            .tempdir()
            .unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let ca = Ca::new(&dir.path().join("ca"));
        World {
            mail: MailUser::get(),
            ca,
            dir,
        }
    }

    /// A world with a Dovecot, a relay, and a home for `token(n)`.
    pub fn for_getmail(n: u32) -> (World, Relay, Dovecot, Home) {
        let w = World::new();
        let dc = w.dovecot("dovecot");
        let home = w.home("home", &token(n));
        (w, Relay::start(), dc, home)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        fs::create_dir_all(&p).unwrap();
        p
    }

    pub fn dovecot(&self, name: &str) -> Dovecot {
        Dovecot::start(&self.path(name), &self.ca, self.mail)
    }

    /// A mail user's home with the token file in place and a copy of the binary the user can
    /// run (the build dir may not be reachable for `nobody`).
    pub fn home(&self, name: &str, token: &str) -> Home {
        self.home_as(name, token, self.mail)
    }

    pub fn home_as(&self, name: &str, token: &str, mail: MailUser) -> Home {
        let path = self.path(name);
        let conf = path.join(".config/deltapush-mda");
        fs::create_dir_all(&conf).unwrap();
        let tokens = conf.join("tokens");
        fs::write(&tokens, format!("# test phone\n{token}\n")).unwrap();
        fs::set_permissions(&tokens, fs::Permissions::from_mode(0o600)).unwrap();
        mail.own(&path);
        // After `own`: a link shares the build's inode, which must stay as it is.
        let bin = path.join("bin/deltapush-mda");
        install_binary(&bin);
        Home {
            path,
            bin,
            token: token.to_string(),
            mail,
        }
    }
}

/// Puts the binary at `to`, runnable by every user (the build dir may not be reachable for the
/// mail user): a hard link, or where that cannot be, a copy, once it can be run. The binary is
/// tens of megabytes: a copy per home costs a test suite seconds.
pub fn install_binary(to: &Path) {
    fs::create_dir_all(to.parent().unwrap()).unwrap();
    if fs::hard_link(bin(), to).is_ok() {
        return;
    }
    fs::copy(bin(), to).unwrap();
    fs::set_permissions(to, fs::Permissions::from_mode(0o755)).unwrap();
    runnable(to);
}

/// Waits until a binary just written can be run. A process that another thread forked while
/// the copy was open for writing holds it so until it execs, and running the copy fails with
/// ETXTBSY ("Text file busy") until then: in a mail program, that fails the delivery.
fn runnable(bin: &Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match Command::new(bin)
            .arg("--version")
            .stdout(Stdio::null())
            .status()
        {
            Ok(status) => {
                assert!(status.success(), "{} --version: {status}", bin.display());
                return;
            }
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("cannot run {}: {e}", bin.display()),
        }
    }
}

pub struct Home {
    pub path: PathBuf,
    pub bin: PathBuf,
    pub token: String,
    pub mail: MailUser,
}

impl Home {
    /// Writes a file into the home, owned by the mail user, mode 0600 (fetchmail and maildrop
    /// insist).
    pub fn put(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.path.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, text).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        self.mail.own(p.parent().unwrap());
        p
    }

    /// The default cache dir of this home.
    pub fn cache_dir(&self) -> PathBuf {
        self.path.join(".cache/deltapush-mda")
    }

    /// The token state under the default cache dir.
    pub fn state(&self) -> PathBuf {
        self.cache_dir().join(sha256_hex(self.token.as_bytes()))
    }

    /// A command run as the mail user with this home and nothing else inherited.
    pub fn cmd(&self, program: &Path, relay_url: &str) -> Command {
        let mut c = Command::new(program);
        c.env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", &self.path)
            .env("DELTAPUSH_URL", relay_url)
            .env("DELTAPUSH_TIMEOUT", TIMEOUT)
            .current_dir(&self.path);
        self.mail.apply(&mut c);
        c
    }

    pub fn maildir_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = ["new", "cur"]
            .iter()
            .flat_map(|sub| fs::read_dir(self.path.join("Maildir").join(sub)).into_iter())
            .flatten()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        files
    }

    /// The oldmail file: one line per message getmail has handed over in this home.
    pub fn oldmail_lines(&self) -> usize {
        fs::read_dir(self.path.join(".config/getmail"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("oldmail-"))
            .map(|e| {
                fs::read_to_string(e.path())
                    .unwrap_or_default()
                    .lines()
                    .count()
            })
            .sum()
    }

    /// `examples/procmail/procmailrc` for this home's binary, as `~/procmailrc`.
    pub fn procmailrc(&self) -> PathBuf {
        let bin = self.bin.to_string_lossy().into_owned();
        let rc = render(
            "procmail/procmailrc",
            &[("/usr/bin/deltapush-mda", 1, &bin)],
        );
        self.put("procmailrc", &rc)
    }

    /// procmail as an MTA runs it for the user, with the rc file `rcfile`, the relay URL and
    /// `assignments` on its command line. procmail takes HOME from the passwd entry; the
    /// assignments on its command line are its own way to override that. -m: as a plain
    /// filter procmail does not create /var/mail/$LOGNAME on the test machine; the recipe and
    /// the delivery to DEFAULT work the same.
    pub fn procmail(&self, rcfile: &Path, relay_url: &str, assignments: &[String]) -> Command {
        let mut cmd = self.cmd(&require("procmail"), relay_url);
        cmd.arg("-m")
            .arg(format!("HOME={}", self.path.display()))
            .arg(format!("DEFAULT={}/Maildir/", self.path.display()))
            .arg(format!("DELTAPUSH_URL={relay_url}"))
            .args(assignments)
            .arg(rcfile);
        cmd
    }

    /// `examples/maildrop/mailfilter` for this home's binary, `extra` appended to its command
    /// line, as `~/mailfilter`; and the Maildir it delivers to.
    pub fn mailfilter(&self, extra: &str) -> PathBuf {
        for sub in ["cur", "new", "tmp"] {
            fs::create_dir_all(self.path.join("Maildir").join(sub)).unwrap();
        }
        let bin = format!("{}{extra}", self.bin.display());
        let h = self.path.to_string_lossy().into_owned();
        let rc = render(
            "maildrop/mailfilter",
            &[("/usr/bin/deltapush-mda", 1, &bin), ("$HOME", 2, &h)],
        );
        self.put("mailfilter", &rc)
    }

    /// maildrop with the filter file `filter`. maildrop sets HOME from the passwd entry, so the
    /// filter names the home itself, and the cache dir comes from the environment; run it as
    /// the test's user: maildrop runs `cc` through the passwd shell, which is nologin for
    /// `nobody`.
    pub fn maildrop(&self, filter: &Path, relay_url: &str) -> Command {
        let mut cmd = Command::new(require("maildrop"));
        cmd.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("DELTAPUSH_URL", relay_url)
            .env("DELTAPUSH_TIMEOUT", TIMEOUT)
            .env("DELTAPUSH_CACHE_DIR", self.cache_dir())
            .arg(filter)
            .current_dir(&self.path);
        cmd
    }
}

/// `examples/getmail/getmailrc` for this Dovecot and home; `ca_certs` replaces the system CAs
/// (the per-run CA when `None`).
pub fn getmailrc(w: &World, dc: &Dovecot, home: &Home, ca_certs: Option<&Path>) -> String {
    let port = format!("port = {}", dc.port);
    let password = format!("password = {}", dc.password);
    let ca = format!("ca_certs = {}", ca_certs.unwrap_or(&w.ca.cert).display());
    let path = format!("path = {}", home.bin.display());
    render(
        "getmail/getmailrc",
        &[
            ("server = imap.example.org", 1, "server = localhost"),
            ("port = 993", 1, &port),
            ("password = secret", 1, &password),
            ("ca_certs = /etc/ssl/certs/ca-certificates.crt", 1, &ca),
            ("path = /usr/bin/deltapush-mda", 1, &path),
        ],
    )
}

/// getmail with the rc file `~/.config/getmail/<rc>`: once, as a user runs it by hand, or with
/// `idle` as the systemd unit runs it.
pub fn getmail_cmd(home: &Home, rc: &str, relay_url: &str, idle: bool) -> Command {
    let mut cmd = home.cmd(&require("getmail"), relay_url);
    if idle {
        cmd.args(&unit_command(rc)[1..]);
    } else {
        cmd.args(["--rcfile", rc]);
    }
    // getmail before 6.19.09 installs its SIGCHLD handler only after the fork; an MDA that
    // exits before that is never reaped, and getmail waits out its `timeout` (180 s) for it
    // (getmail6 issue 245). On a loaded machine a parent and child on different CPUs hit that
    // about once in 500 handovers; on one CPU the parent runs on until it waits. Each getmail
    // gets the next CPU, so that several at once do not crowd onto one.
    let cpu = next_cpu();
    // SAFETY: sched_setaffinity(2) is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            let mut one: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut one);
            if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &one) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// The CPUs this process may run on, in turn.
fn next_cpu() -> usize {
    static TURN: AtomicUsize = AtomicUsize::new(0);
    // SAFETY: a zeroed cpu_set_t is a valid empty set for sched_getaffinity to fill.
    let allowed: Vec<usize> = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set);
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect()
    };
    allowed[TURN.fetch_add(1, Ordering::Relaxed) % allowed.len()]
}

/// getmail once, to its end.
pub fn getmail(home: &Home, rc: &str, relay_url: &str, name: &str) -> Ran {
    getmail_with(home, rc, relay_url, name, &[])
}

/// [`getmail`] with more variables in its environment (getmail passes them to the MDA).
pub fn getmail_with(
    home: &Home,
    rc: &str,
    relay_url: &str,
    name: &str,
    env: &[(&str, &str)],
) -> Ran {
    let mut cmd = getmail_cmd(home, rc, relay_url, false);
    cmd.envs(env.iter().copied());
    run(name, cmd, &home.path, Duration::from_secs(60))
}

/// getmail --idle as the systemd unit runs it, for the rc file `rc`, `env` added to its
/// environment; what it says goes to files in the home.
pub struct IdleGetmail<'a> {
    home: &'a Home,
    daemon: Daemon,
}

impl<'a> IdleGetmail<'a> {
    pub fn start(home: &'a Home, rc: &str, relay_url: &str, env: &[(&str, &str)]) -> Self {
        let mut cmd = getmail_cmd(home, rc, relay_url, true);
        cmd.envs(env.iter().copied())
            .stdout(File::create(home.path.join("idle.stdout")).unwrap())
            .stderr(File::create(home.path.join("idle.stderr")).unwrap());
        IdleGetmail {
            home,
            daemon: Daemon::spawn("getmail --idle", cmd),
        }
    }

    /// What it has said so far.
    pub fn output(&self) -> String {
        let read = |name: &str| fs::read_to_string(self.home.path.join(name)).unwrap_or_default();
        format!(
            "getmail stdout: {:?}, stderr: {:?}",
            read("idle.stdout"),
            read("idle.stderr")
        )
    }

    /// Delivers `message` to `dc` once getmail idles there: when.
    pub fn deliver(&self, dc: &Dovecot, message: &[u8]) -> Instant {
        dc.wait_idle(Duration::from_secs(20), || self.output());
        dc.deliver(message);
        Instant::now()
    }

    /// Waits until getmail has handed over `n` messages in all.
    pub fn wait_handed_over(&self, n: usize) {
        wait_for(
            Duration::from_secs(5),
            &format!("getmail handing over message {n}"),
            || self.home.oldmail_lines() == n,
        );
    }

    /// Asserts that it still idles and has said nothing: checked while it runs, as on SIGTERM
    /// getmail says "Operation aborted by user".
    pub fn assert_idling_quietly(&mut self) {
        assert_eq!(
            self.daemon.exited(),
            None,
            "getmail --idle stopped; {}",
            self.output()
        );
        assert_eq!(self.output(), r#"getmail stdout: "", stderr: """#);
    }
}

/// The getmail command line of the systemd unit, for the rc file `rc`.
pub fn unit_command(rc: &str) -> Vec<String> {
    let unit = fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/getmail/deltapush@.service"),
    )
    .unwrap();
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("the unit has an ExecStart= line");
    let words: Vec<String> = line
        .split_whitespace()
        .map(|w| w.replace("%i", rc))
        .collect();
    assert_eq!(words[0], "/usr/bin/getmail", "{line}");
    words
}
