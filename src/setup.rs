//! `--setup NAME`: from the app's log to a running watcher. Reads the log (bounded), asks only
//! what it lacks, names the server before the password goes there, checks the login as
//! `--check --watch` does, and only then writes the files that `deltapush-watch@NAME` reads and
//! starts it. Run again, it updates: tokens are added once, lines it does not own are kept.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, BufRead, BufReader, IsTerminal, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::account::{Secret, Watch, WatchUrl, read_password_file};
use crate::applog::{self, Address, Log, Reader, Security};
use crate::cli::Auth;
use crate::config::{Config, Setup, Verbosity};
use crate::error::{Error, Result};
use crate::exit;
use crate::relay::is_loopback;
use crate::run::{Outcome, Output};
use crate::token::{self, FileProblem, Token, TokenProblem};
use crate::watch;

/// The unit as the package ships it; only its ExecStart changes, to the program that runs.
const UNIT: &str = include_str!("../examples/watch/deltapush-watch@.service");
const EXEC_START: &str = "ExecStart=/usr/bin/deltapush-mda ";

pub fn run(config: &Config, out: &Output) -> Result<Outcome> {
    let setup = config
        .setup
        .as_ref()
        .expect("Mode::Setup comes with its settings");
    let mut tty = Terminal::open();
    let log = read_logs(setup, tty.as_mut())?;
    if log.chatmail {
        say(
            out,
            "This account is on a chatmail relay, which wakes the phone itself: nothing to set up.",
        );
        return Ok(Outcome::Done);
    }
    if log.tokens.is_empty() {
        return Err(match log.without_push {
            Some(platform) => Error::Token {
                at: None,
                problem: TokenProblem::NoPushToken(platform),
            },
            None => Error::LogWithoutToken,
        });
    }
    let files = Files::of(&setup.name)?;
    let mut env = EnvFile::read(&files.env)?;
    let before = env
        .get("DELTAPUSH_WATCH")
        .and_then(|u| WatchUrl::parse(&u).ok());
    let (urls, lax) = servers(setup, &log, before.as_ref(), &mut tty, out)?;
    let first = &urls[0];

    // The secret: given, kept from the last set-up of the same user, or typed.
    let kept = match before.as_ref() {
        Some(b) if b.user == first.user => env.secret(),
        _ => None,
    };
    let (secret, pending) = match setup.secret.clone().or(kept) {
        Some(secret) => (secret, None),
        None => {
            let tty = tty.as_mut().ok_or(Error::Unasked {
                what: "the password",
                option: "--password-file PATH or --password-command CMD",
            })?;
            let password = tty
                .ask_secret(&format!(
                    "Password of {} at {} (not shown): ",
                    first.user, first.host
                ))
                .map_err(Error::Terminal)?;
            if password.is_empty() {
                return Err(Error::Usage("no password typed; nothing written".into()));
            }
            files.make_dirs()?;
            // It waits beside its file, 0600, for the check, and goes if the check fails.
            let pending = Pending::write(&files.password, &format!("{password}\n"))?;
            (Secret::File(pending.path.clone()), Some(pending))
        }
    };

    let url = check(config, setup, &urls, &secret, out).map_err(|e| match e {
        Error::NoServer { tried, last } if lax => Error::NoServer {
            tried,
            last: format!(
                "{last} (the app takes any certificate of this server, \
                 cert_accept_invalid_certificates; the watcher checks it)"
            ),
        },
        e => e,
    })?;
    files.make_dirs()?;

    let secret = match pending {
        Some(p) => Secret::File(p.commit(&files.password)?),
        None => secret,
    };
    let token_file = env
        .get("DELTAPUSH_TOKEN_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(|| files.tokens.clone());
    add_tokens(&token_file, &log.tokens, &setup.name, out)?;
    env.set("DELTAPUSH_WATCH", Some(&url.to_string()));
    match &secret {
        Secret::File(path) => {
            env.set("DELTAPUSH_PASSWORD_FILE", Some(&path.to_string_lossy()));
            env.set("DELTAPUSH_PASSWORD_COMMAND", None);
        }
        Secret::Command(cmd) => {
            env.set("DELTAPUSH_PASSWORD_COMMAND", Some(cmd));
            env.set("DELTAPUSH_PASSWORD_FILE", None);
        }
    }
    env.set("DELTAPUSH_TOKEN_FILE", Some(&token_file.to_string_lossy()));
    env.set(
        "DELTAPUSH_AUTH",
        (setup.auth == Auth::Xoauth2).then_some("xoauth2"),
    );
    if setup.relay_given {
        env.set("DELTAPUSH_URL", Some(config.url.as_str()));
    }
    replace(&files.env, &env.text(&setup.name), 0o600)?;
    let exe = std::env::current_exe().map_err(|source| Error::SetupWrite {
        path: "/proc/self/exe".into(),
        source,
    })?;
    let unit = unit_text(&exe);
    if fs::read_to_string(&files.unit).ok().as_deref() != Some(unit.as_str()) {
        replace(&files.unit, &unit, 0o644)?;
    }
    say(
        out,
        &format!(
            "Wrote {} and {}.",
            files.env.display(),
            files.unit.display()
        ),
    );
    let mut command = vec![
        exe.to_string_lossy().into_owned(),
        "--watch".into(),
        url.to_string(),
    ];
    match &secret {
        Secret::File(path) => {
            command.extend(["--password-file".into(), path.to_string_lossy().into()])
        }
        Secret::Command(cmd) => command.extend(["--password-command".into(), cmd.clone()]),
    }
    command.extend(["--token-file".into(), token_file.to_string_lossy().into()]);
    if setup.auth == Auth::Xoauth2 {
        command.extend(["--auth".into(), "xoauth2".into()]);
    }
    if let Some(relay) = env.get("DELTAPUSH_URL") {
        command.extend(["--url".into(), relay]);
    }
    start(&setup.name, &command, out)?;
    Ok(Outcome::Done)
}

/// A line for the person at the terminal (or the log of whoever runs it), unless -q.
fn say(out: &Output, line: &str) {
    if out.verbosity != Verbosity::Quiet {
        println!("{line}");
    }
}

// ---------------------------------------------------------------------------------------------
// The log

fn read_logs(setup: &Setup, tty: Option<&mut Terminal>) -> Result<Log> {
    let mut reader = Reader::new();
    if setup.logs.is_empty() {
        let stdin = io::stdin();
        if stdin.is_terminal()
            && let Some(tty) = tty
        {
            tty.say(
                "Paste the log from Delta Chat (Settings → Advanced → View Log), then press \
                 Ctrl-D:\n",
            );
        }
        feed(&mut stdin.lock(), &mut reader, "standard input", None)?;
    } else {
        for path in &setup.logs {
            let err = |source| Error::LogRead {
                path: Some(path.clone()),
                source,
            };
            let file = File::open(path).map_err(err)?;
            reader.next_source();
            let from = format!("--log {}", path.display());
            feed(&mut BufReader::new(file), &mut reader, &from, Some(path))?;
        }
    }
    Ok(reader.finish())
}

/// Line by line, each read at most one byte past [`applog::MAX_LINE`]: memory stays bounded
/// whatever comes.
fn feed(
    input: &mut impl BufRead,
    reader: &mut Reader,
    from: &str,
    path: Option<&PathBuf>,
) -> Result<()> {
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = input
            .by_ref()
            .take(applog::MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .map_err(|source| Error::LogRead {
                path: path.cloned(),
                source,
            })?;
        if n == 0 {
            return Ok(());
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        reader.line(&line).map_err(|problem| Error::Log {
            from: from.to_string(),
            problem,
        })?;
    }
}

// ---------------------------------------------------------------------------------------------
// The server

/// The mailboxes to try, in the app's order, each trusted with the password; and whether the
/// app takes any certificate of them.
fn servers(
    setup: &Setup,
    log: &Log,
    before: Option<&WatchUrl>,
    tty: &mut Option<Terminal>,
    out: &Output,
) -> Result<(Vec<WatchUrl>, bool)> {
    if let Some(url) = &setup.url {
        return Ok((vec![url.clone()], false));
    }
    if log.transports.is_empty() {
        // A token-only paste for an account set up before keeps its server.
        if let Some(url) = before {
            return Ok((vec![url.clone()], false));
        }
        if let Some(line) = log.unread_settings {
            say(
                out,
                &format!("Line {line} of the log has server settings this version cannot read."),
            );
        }
        let text = ask(
            tty,
            "the IMAP server (the log has no server settings)",
            "--watch imaps://USER@HOST",
            "Your IMAP server, as imaps://USER@HOST[:PORT] (%40 for an @ in USER): ",
        )?;
        return Ok((vec![WatchUrl::parse(&text)?], false));
    }
    let domains: Vec<&str> = log.transports.iter().map(|t| t.address.domain()).collect();
    let same_domain = |a: &str| domains.iter().any(|d| domain_of(a).eq_ignore_ascii_case(d));
    let address = match (&setup.address, &log.transports[..]) {
        (Some(a), _) => a.clone(),
        (None, [t]) if matches!(t.address, Address::Whole(_)) => match &t.address {
            Address::Whole(a) => a.clone(),
            Address::Domain(_) => unreachable!(),
        },
        (None, _) if before.is_some_and(|b| same_domain(&b.user)) => {
            before.map(|b| b.user.clone()).unwrap_or_default()
        }
        (None, _) => {
            let a = ask(
                tty,
                "your address",
                "--address ADDR",
                &format!("Your address at {}: ", domains.join(" or ")),
            )?;
            check_address(&a)?;
            a
        }
    };
    let transport = log
        .transports
        .iter()
        .find(|t| match &t.address {
            Address::Whole(w) => w.eq_ignore_ascii_case(&address),
            Address::Domain(d) => d.eq_ignore_ascii_case(domain_of(&address)),
        })
        .ok_or_else(|| Error::AddressNotInLog {
            address: address.clone(),
            log: log
                .transports
                .iter()
                .map(|t| match &t.address {
                    Address::Whole(a) => a.clone(),
                    Address::Domain(d) => format!("***@{d}"),
                })
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    let domain = domain_of(&address).to_ascii_lowercase();
    let mut urls: Vec<WatchUrl> = Vec::new();
    for c in &transport.imap {
        let scheme = match c.security {
            Security::Tls => "imaps",
            Security::Starttls => "imap",
            // Only where nothing travels over a network.
            Security::Plain if is_loopback(&c.host) => "imap",
            Security::Plain => continue,
        };
        let default = if scheme == "imaps" { 993 } else { 143 };
        let mut text = format!(
            "{scheme}://{}@{}",
            encode(c.user.as_deref().unwrap_or(&address)),
            c.host
        );
        if c.port != default {
            text.push_str(&format!(":{}", c.port));
        }
        if let Some(folder) = &transport.folder {
            text.push('/');
            text.push_str(&encode(folder));
        }
        let url = WatchUrl::parse(&text)?;
        if !urls.contains(&url) {
            urls.push(url);
        }
    }
    if urls.is_empty() {
        return Err(Error::NoServer {
            tried: 0,
            last: "the log names only servers without TLS (plain); give --watch imaps://USER@HOST"
                .into(),
        });
    }
    let mut trusted: Vec<String> = setup
        .trusted
        .iter()
        .map(|h| h.to_ascii_lowercase())
        .collect();
    trusted.extend(before.map(|b| b.host.to_ascii_lowercase()));
    for url in &urls {
        let host = url.host.to_ascii_lowercase();
        if host == domain || host.ends_with(&format!(".{domain}")) || trusted.contains(&host) {
            continue;
        }
        let Some(t) = tty.as_mut() else {
            return Err(Error::Untrusted {
                host,
                domain,
                declined: false,
            });
        };
        let answer = t
            .ask(&format!(
                "The log's server {host} is not in {domain}, your address's domain. Send your \
                 password to {host}? [y/N] "
            ))
            .map_err(Error::Terminal)?;
        if !matches!(answer.to_ascii_lowercase().as_str(), "y" | "yes") {
            return Err(Error::Untrusted {
                host,
                domain,
                declined: true,
            });
        }
        trusted.push(host);
    }
    Ok((urls, transport.lax_certificates))
}

/// Logs in over the first server that answers, as `--check --watch` does; its lines are said.
fn check(
    config: &Config,
    setup: &Setup,
    urls: &[WatchUrl],
    secret: &Secret,
    out: &Output,
) -> Result<WatchUrl> {
    let mut last = String::new();
    for (i, url) in urls.iter().enumerate() {
        say(out, &format!("{url}: logging in as {}", url.user));
        let mut config = config.clone();
        config.watch = Some(Watch {
            url: url.clone(),
            secret: secret.clone(),
            auth: setup.auth,
        });
        let lines = watch::check(&config);
        match lines.iter().find_map(|l| l.as_ref().err()) {
            None => {
                for line in lines.iter().flatten() {
                    say(out, line);
                }
                return Ok(url.clone());
            }
            // Not even a connection: the next server may answer.
            Some((exit::UNAVAILABLE, line)) if lines.len() == 1 => {
                if i + 1 < urls.len() {
                    say(out, &format!("{line}; trying the next server"));
                }
                last = line.clone();
            }
            Some((code, line)) => return Err(Error::Checked(*code, line.clone())),
        }
    }
    Err(Error::NoServer {
        tried: urls.len(),
        last,
    })
}

/// A question on the terminal; without one, the line that names the option to give.
fn ask(
    tty: &mut Option<Terminal>,
    what: &'static str,
    option: &'static str,
    prompt: &str,
) -> Result<String> {
    let tty = tty.as_mut().ok_or(Error::Unasked { what, option })?;
    let answer = tty.ask(prompt).map_err(Error::Terminal)?;
    match answer.is_empty() {
        true => Err(Error::Unasked { what, option }),
        false => Ok(answer),
    }
}

/// An address as the watcher's user: one `@`, a host name after it, nothing invisible.
pub fn check_address(text: &str) -> Result<()> {
    let fine = text.len() <= 254
        && text.rsplit_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && !domain.is_empty()
                && domain
                    .chars()
                    .all(|c| c.is_alphanumeric() || matches!(c, '.' | '-' | '_'))
        })
        && text.chars().all(|c| !c.is_control() && !c.is_whitespace());
    match fine {
        true => Ok(()),
        false => Err(Error::Address(
            text.chars()
                .map(|c| if c.is_control() { '?' } else { c })
                .take(254)
                .collect(),
        )),
    }
}

fn domain_of(address: &str) -> &str {
    address.rsplit_once('@').map_or("", |(_, d)| d)
}

/// Percent-encodes all but the unreserved characters of RFC 3986.
fn encode(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        match b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            true => out.push(b as char),
            false => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The files

/// Where the watcher's files go: what the unit reads (`%E` is $XDG_CONFIG_HOME).
struct Files {
    dirs: [PathBuf; 2],
    env: PathBuf,
    password: PathBuf,
    tokens: PathBuf,
    unit: PathBuf,
}

impl Files {
    fn of(name: &str) -> Result<Files> {
        let base = directories::BaseDirs::new().ok_or_else(|| Error::SetupWrite {
            path: "~/.config".into(),
            source: io::Error::new(io::ErrorKind::NotFound, "no home directory"),
        })?;
        let config = base.config_dir();
        let watch = config.join("deltapush-mda/watch");
        let units = config.join("systemd/user");
        Ok(Files {
            env: watch.join(format!("{name}.env")),
            password: watch.join(format!("{name}.password")),
            tokens: watch.join(format!("{name}.tokens")),
            unit: units.join("deltapush-watch@.service"),
            dirs: [watch, units],
        })
    }

    /// Each directory made here is 0700; one that is there is left as it is.
    fn make_dirs(&self) -> Result<()> {
        for dir in &self.dirs {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| Error::SetupWrite {
                    path: dir.clone(),
                    source,
                })?;
        }
        Ok(())
    }
}

/// The file beside `path` that becomes it by a rename.
fn beside(path: &Path) -> PathBuf {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    path.with_file_name(format!(".{name}.new"))
}

/// Writes `path` whole: beside it first (never through a link), then renamed over it.
fn replace(path: &Path, text: &str, mode: u32) -> Result<()> {
    let tmp = beside(path);
    write_new(&tmp, text, mode)?;
    fs::rename(&tmp, path).map_err(|source| {
        let _ = fs::remove_file(&tmp);
        Error::SetupWrite {
            path: path.to_path_buf(),
            source,
        }
    })
}

fn write_new(path: &Path, text: &str, mode: u32) -> Result<()> {
    let err = |source| Error::SetupWrite {
        path: path.to_path_buf(),
        source,
    };
    // A leftover of an interrupted run goes first: O_EXCL below takes no one's file.
    let _ = fs::remove_file(path);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(err)?;
    file.write_all(text.as_bytes()).map_err(err)?;
    file.sync_all().map_err(err)
}

/// A typed password beside its file until the check has passed; removed unless committed.
struct Pending {
    path: PathBuf,
    committed: bool,
}

impl Pending {
    fn write(password_file: &Path, text: &str) -> Result<Pending> {
        let path = beside(password_file);
        write_new(&path, text, 0o600)?;
        Ok(Pending {
            path,
            committed: false,
        })
    }

    fn commit(mut self, password_file: &Path) -> Result<PathBuf> {
        fs::rename(&self.path, password_file).map_err(|source| Error::SetupWrite {
            path: password_file.to_path_buf(),
            source,
        })?;
        self.committed = true;
        Ok(password_file.to_path_buf())
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Adds the tokens that are not in the token file yet; the file's other lines stay.
fn add_tokens(path: &Path, tokens: &[Token], name: &str, out: &Output) -> Result<()> {
    let text = match token::read_checked(path, false) {
        Ok(text) => text,
        Err(FileProblem::Io(e)) if e.kind() == io::ErrorKind::NotFound => format!(
            "# The push tokens woken for deltapush-watch@{name}, one a line \
             (deltapush-mda --setup {name} adds them).\n"
        ),
        Err(problem) => {
            return Err(Error::TokenFile {
                path: path.to_path_buf(),
                problem,
            });
        }
    };
    let there: Vec<Token> = text.lines().filter_map(|l| Token::parse(l).ok()).collect();
    let mut text = text;
    let mut added = false;
    for token in tokens {
        if there.contains(token) {
            say(out, &format!("Token {token}: already there."));
        } else {
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(token.as_str());
            text.push('\n');
            added = true;
            say(out, &format!("Token {token}: added."));
        }
    }
    match added {
        true => replace(path, &text, 0o600),
        false => Ok(()),
    }
}

/// The environment file of one instance: the lines it sets, and every other line as it was.
struct EnvFile {
    lines: Vec<String>,
}

impl EnvFile {
    fn read(path: &Path) -> Result<EnvFile> {
        let text = match token::read_checked(path, false) {
            Ok(text) => text,
            Err(FileProblem::Io(e)) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(problem) => {
                let source = match problem {
                    FileProblem::Io(e) => e,
                    other => io::Error::other(format!("cannot be read ({other:?})")),
                };
                return Err(Error::SetupWrite {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        Ok(EnvFile {
            lines: text.lines().map(str::to_string).collect(),
        })
    }

    fn get(&self, key: &str) -> Option<String> {
        self.lines
            .iter()
            .rev()
            .find_map(|l| l.trim_start().strip_prefix(key)?.strip_prefix('='))
            .map(unquote)
            .filter(|v| !v.is_empty())
    }

    /// The secret the last set-up wrote, if it is still usable.
    fn secret(&self) -> Option<Secret> {
        if let Some(cmd) = self.get("DELTAPUSH_PASSWORD_COMMAND") {
            return Some(Secret::Command(cmd));
        }
        let path = PathBuf::from(self.get("DELTAPUSH_PASSWORD_FILE")?);
        read_password_file(&path).ok()?;
        Some(Secret::File(path))
    }

    /// Sets `key` on its first line (or a new one), or removes it.
    fn set(&mut self, key: &str, value: Option<&str>) {
        let is_key = |l: &str| {
            l.trim_start()
                .strip_prefix(key)
                .is_some_and(|r| r.starts_with('='))
        };
        let mut line = value.map(|v| format!("{key}={}", quote(v)));
        let mut lines = Vec::with_capacity(self.lines.len() + 1);
        for l in self.lines.drain(..) {
            match is_key(&l) {
                true => lines.extend(line.take()),
                false => lines.push(l),
            }
        }
        lines.extend(line);
        self.lines = lines;
    }

    fn text(&self, name: &str) -> String {
        let mut text = String::new();
        if self.lines.first().is_none_or(|l| !l.starts_with('#')) {
            text.push_str(&format!(
                "# deltapush-watch@{name}: written by deltapush-mda --setup {name}; run it again \
                 to change it. Other lines are kept.\n"
            ));
        }
        for line in &self.lines {
            text.push_str(line);
            text.push('\n');
        }
        text
    }
}

/// A value as systemd's EnvironmentFile reads it: double quotes when it needs them.
fn quote(value: &str) -> String {
    let plain =
        !value.is_empty() && value.trim() == value && !value.contains(['"', '\'', '\\', '$', '`']);
    match plain {
        true => value.to_string(),
        false => {
            let mut q = String::from("\"");
            for c in value.chars() {
                if matches!(c, '"' | '\\' | '$' | '`') {
                    q.push('\\');
                }
                q.push(c);
            }
            q.push('"');
            q
        }
    }
}

fn unquote(value: &str) -> String {
    let value = value.trim();
    if let Some(inner) = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        let mut out = String::new();
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => out.extend(chars.next()),
                c => out.push(c),
            }
        }
        return out;
    }
    match value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
        Some(inner) => inner.to_string(),
        None => value.to_string(),
    }
}

/// The shipped unit, with ExecStart the program that runs, as one systemd word.
fn unit_text(exe: &Path) -> String {
    let path = exe.to_string_lossy().replace('%', "%%").replace('$', "$$");
    let word = match path.contains([' ', '\t', '"', '\'', '\\']) {
        true => format!("\"{}\"", path.replace('\\', "\\\\").replace('"', "\\\"")),
        false => path,
    };
    UNIT.replace(EXEC_START, &format!("ExecStart={word} "))
}

// ---------------------------------------------------------------------------------------------
// systemd

/// Enables and (re)starts the unit; without a user systemd, says the command left to run.
fn start(name: &str, command: &[String], out: &Output) -> Result<()> {
    let unit = format!("deltapush-watch@{name}.service");
    if let Err(why) = systemctl(&["daemon-reload"]) {
        say(
            out,
            &format!(
                "No user systemd answers here (systemctl --user: {why}): nothing started. Where \
                 one runs, `systemctl --user enable --now {unit}` starts it; here, run:"
            ),
        );
        let words: Vec<String> = command.iter().map(|w| shell_word(w)).collect();
        say(out, &format!("  {}", words.join(" ")));
        return Ok(());
    }
    for action in ["enable", "restart"] {
        systemctl(&[action, &unit]).map_err(|said| Error::Systemd {
            command: format!("systemctl --user {action} {unit}"),
            said,
        })?;
    }
    say(
        out,
        &format!("Started {unit}; `journalctl --user -u {unit}` shows what it says."),
    );
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    let linger = Command::new("loginctl")
        .args([
            "show-user",
            &uid.to_string(),
            "--property=Linger",
            "--value",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output();
    if let Ok(o) = linger
        && String::from_utf8_lossy(&o.stdout).trim() == "no"
    {
        say(
            out,
            "Lingering is off for you: the watcher stops when you log out, and starts again \
             only when you log in. `loginctl enable-linger` keeps it running from boot on.",
        );
    }
    Ok(())
}

fn systemctl(args: &[&str]) -> std::result::Result<(), String> {
    let o = Command::new("systemctl")
        .arg("--user")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    if o.status.success() {
        return Ok(());
    }
    let said = String::from_utf8_lossy(&o.stderr);
    let first = said.lines().next().unwrap_or("").trim();
    Err(match first.is_empty() {
        true => o.status.to_string(),
        false => first
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(200)
            .collect(),
    })
}

fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-=:@%+,".contains(&b));
    match plain {
        true => word.to_string(),
        false => format!("'{}'", word.replace('\'', "'\\''")),
    }
}

// ---------------------------------------------------------------------------------------------
// The terminal

/// The controlling terminal, for questions: standard input may be the log.
struct Terminal {
    file: File,
}

impl Terminal {
    fn open() -> Option<Terminal> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open("/dev/tty")
            .ok()
            .map(|file| Terminal { file })
    }

    fn say(&mut self, text: &str) {
        let _ = self.file.write_all(text.as_bytes());
    }

    /// One line; a byte at a time, so nothing typed ahead for the next question is taken.
    fn line(&mut self) -> io::Result<String> {
        let mut line = Vec::new();
        let mut byte = [0];
        while line.len() < 4096 && self.file.read(&mut byte)? == 1 && byte[0] != b'\n' {
            line.push(byte[0]);
        }
        let text = String::from_utf8_lossy(&line);
        Ok(text.trim_end_matches('\r').to_string())
    }

    fn ask(&mut self, prompt: &str) -> io::Result<String> {
        self.say(prompt);
        Ok(self.line()?.trim().to_string())
    }

    /// Asks with the echo off (the newline still echoed), and puts it back as it was.
    fn ask_secret(&mut self, prompt: &str) -> io::Result<String> {
        let fd = self.file.as_raw_fd();
        // SAFETY: termios is plain data, filled by tcgetattr before it is read.
        let mut was: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: fd is open for the life of self.file.
        if unsafe { libc::tcgetattr(fd, &mut was) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut quiet = was;
        quiet.c_lflag &= !libc::ECHO;
        quiet.c_lflag |= libc::ECHONL;
        // TCSAFLUSH: what was typed before the echo went off is dropped, not taken as the password.
        // SAFETY: as above.
        if unsafe { libc::tcsetattr(fd, libc::TCSAFLUSH, &quiet) } != 0 {
            return Err(io::Error::last_os_error());
        }
        self.say(prompt);
        let line = self.line();
        // SAFETY: as above.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &was) };
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_file_keeps_other_lines_and_sets_once() {
        let mut env = EnvFile {
            lines: vec![
                "# mine".into(),
                "DELTAPUSH_WATCH=imaps://old@h".into(),
                "DELTAPUSH_INTERVAL=1m".into(),
                "DELTAPUSH_WATCH=imaps://older@h".into(),
                "DELTAPUSH_PASSWORD_COMMAND=pass show x".into(),
            ],
        };
        assert_eq!(env.get("DELTAPUSH_WATCH").unwrap(), "imaps://older@h");
        env.set("DELTAPUSH_WATCH", Some("imaps://me%40example.org@h"));
        env.set("DELTAPUSH_PASSWORD_COMMAND", None);
        env.set("DELTAPUSH_PASSWORD_FILE", Some("/home/a b/it's \"x\"$"));
        assert_eq!(
            env.text("work"),
            "# mine\nDELTAPUSH_WATCH=imaps://me%40example.org@h\nDELTAPUSH_INTERVAL=1m\n\
             DELTAPUSH_PASSWORD_FILE=\"/home/a b/it's \\\"x\\\"\\$\"\n"
        );
        assert_eq!(
            env.get("DELTAPUSH_PASSWORD_FILE").unwrap(),
            "/home/a b/it's \"x\"$"
        );
    }

    #[test]
    fn the_unit_runs_this_program() {
        assert!(UNIT.contains(EXEC_START));
        let unit = unit_text(Path::new("/home/me/.cargo/bin/deltapush-mda"));
        assert!(unit.contains(
            "\nExecStart=/home/me/.cargo/bin/deltapush-mda --watch ${DELTAPUSH_WATCH}\n"
        ));
        let unit = unit_text(Path::new("/opt/my 100%/deltapush-mda"));
        assert!(unit.contains("\nExecStart=\"/opt/my 100%%/deltapush-mda\" --watch"));
    }

    #[test]
    fn addresses_and_words() {
        assert!(check_address("me@example.org").is_ok());
        for bad in [
            "me",
            "@example.org",
            "me@",
            "me@exa mple.org",
            "m e@x.org",
            "me@x/y",
        ] {
            assert!(check_address(bad).is_err(), "{bad}");
        }
        assert_eq!(encode("me+dc@example.org"), "me%2Bdc%40example.org");
        assert_eq!(shell_word("/a/b"), "/a/b");
        assert_eq!(shell_word("it's"), "'it'\\''s'");
    }
}
