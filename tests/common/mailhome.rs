//! A mail user's world for the scenarios that drive real mail programs: a temp dir the mail
//! user can traverse, a per-run CA, homes with the token file and a copy of the binary, and the
//! example files of `examples/` rendered with a test's own values.
//!
//! Used with `#[path]` beside `realmail.rs` and `dovecot.rs`, the way those are.
#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::common::{self, sha256_hex};
use super::dovecot::Dovecot;
use super::realmail::{Ca, MailUser, Ran, require, run};

/// Names the failed scenario on stderr after its panic message, which says why.
pub struct Scenario(pub &'static str);

impl Drop for Scenario {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("FAILED: scenario {}", self.0);
        }
    }
}

/// One scenario's temp dir (traversable by the mail user), CA and mail user.
pub struct World {
    pub dir: tempfile::TempDir,
    pub mail: MailUser,
    pub ca: Ca,
    // Last, so the name is printed after everything above is cleaned up.
    _scenario: Scenario,
}

impl World {
    pub fn new(scenario: &'static str) -> World {
        let scenario = Scenario(scenario);
        let dir = tempfile::Builder::new()
            .prefix("deltapush-integration-")
            .tempdir()
            .unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let ca = Ca::new(&dir.path().join("ca"));
        World {
            mail: MailUser::get(),
            ca,
            dir,
            _scenario: scenario,
        }
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
        fs::create_dir_all(path.join("bin")).unwrap();
        let bin = path.join("bin/deltapush-mda");
        fs::copy(common::bin(), &bin).unwrap();
        runnable(&bin);
        mail.own(&path);
        Home {
            path,
            bin,
            token: token.to_string(),
            mail,
        }
    }
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

    /// Where deltapush-mda keeps this token's state under the default cache dir.
    pub fn stamp(&self) -> PathBuf {
        self.cache_dir().join(sha256_hex(self.token.as_bytes()))
    }

    /// A command run as the mail user with this home and nothing else inherited.
    pub fn cmd(&self, program: &Path, relay_url: &str) -> Command {
        let mut c = Command::new(program);
        c.env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", &self.path)
            .env("DELTAPUSH_URL", relay_url)
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
        let dir = self.path.join(".config/getmail");
        fs::read_dir(dir)
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
}

/// An example file with the listed values replaced; each must occur exactly as often as given,
/// so an edited example cannot silently stop being the file under test.
pub fn render(example: &str, subs: &[(&str, usize, &str)]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(example);
    let mut text = fs::read_to_string(&path).unwrap();
    for (from, count, to) in subs {
        assert_eq!(
            text.matches(from).count(),
            *count,
            "examples/{example} should contain `{from}` {count} time(s)"
        );
        text = text.replace(from, to);
    }
    text
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

/// getmail with the rc file `~/.config/getmail/<rc>`, once, as a user runs it by hand.
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
    let mut cmd = home.cmd(&require("getmail"), relay_url);
    cmd.args(["--rcfile", rc]).envs(env.iter().copied());
    run(name, cmd, &home.path, Duration::from_secs(60))
}

/// A message from the corpus of real mail.
pub fn corpus(name: &str) -> Vec<u8> {
    fs::read(common::data(&format!("corpus/{name}"))).unwrap()
}

/// A chat message: a person wrote it, so it notifies.
pub fn chat() -> Vec<u8> {
    corpus("text_from_alice_encrypted.eml")
}
