//! The cache dir and the token state in it.
//!
//! `<cache dir>/<sha256 of token>` is the token state: when it was last posted, a wakeup waiting
//! for the interval's end, a 410 or a pause from the relay, a deferred POST that failed, and,
//! with --remember, the token itself. It is replaced whole (write, then rename), so no reader
//! ever sees half of it. `<name>.lock` is held with `flock` while a run decides and posts;
//! `<name>.waiter` is held by the deferred sender for as long as it lives. The kernel drops both
//! when a process dies, so a killed run or sender never blocks the next one.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::error::{CacheDirProblem, Error, Result};
use crate::token::Token;

/// How long a 410 keeps a token from being posted.
pub const GONE_FOR: Duration = Duration::from_secs(24 * 3600);
/// The longest pause a relay may ask for.
pub const MAX_PAUSE: Duration = Duration::from_secs(3600);
/// A remembered token not given for this long is forgotten.
pub const REMEMBER_FOR: Duration = Duration::from_secs(90 * 24 * 3600);
/// The first line of every token state written by this version; a file without it is the empty
/// stamp of 0.1.0, whose mtime was the last POST.
const HEADER: &str = "deltapush-mda token state 1";
/// A token state is a few lines; anything longer was not written by us.
const MAX_STATE_LEN: u64 = 16 * 1024;

pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    /// Checks the cache dir, creating it (mode 0700, with parents) when `create` is set.
    pub fn open(dir: &Path, create: bool) -> Result<Cache> {
        let problem = |problem| Error::CacheDir {
            path: dir.to_path_buf(),
            problem,
        };
        let meta = match fs::symlink_metadata(dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(|e| problem(CacheDirProblem::Io(e)))?;
                fs::symlink_metadata(dir).map_err(|e| problem(CacheDirProblem::Io(e)))?
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(Cache {
                    dir: dir.to_path_buf(),
                });
            }
            Err(e) => return Err(problem(CacheDirProblem::Io(e))),
            Ok(meta) => meta,
        };
        // Token states could be redirected anywhere through a link or a dir others can write.
        if meta.file_type().is_symlink() {
            return Err(problem(CacheDirProblem::Symlink));
        }
        if !meta.is_dir() {
            return Err(problem(CacheDirProblem::NotDir));
        }
        if meta.permissions().mode() & 0o002 != 0 {
            return Err(problem(CacheDirProblem::WorldWritable));
        }
        Ok(Cache {
            dir: dir.to_path_buf(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, token: &Token, ext: &str) -> PathBuf {
        self.dir.join(format!("{}{ext}", token.hash()))
    }

    /// The token's state as it is now, without the lock: for reports that change nothing.
    pub fn peek(&self, token: &Token) -> State {
        read_state(&self.path(token, ""))
    }

    /// Waits for the token's lock until `deadline`. `Ok(None)` means another process held it
    /// all along.
    pub fn lock(&self, token: &Token, deadline: Instant) -> Result<Option<Locked>> {
        let path = self.path(token, ".lock");
        let file = open_private(&path).map_err(|source| Error::Cache {
            path: path.clone(),
            source,
        })?;
        let mut pause = Duration::from_millis(2);
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(fs::TryLockError::WouldBlock) => {}
                Err(fs::TryLockError::Error(source)) => return Err(Error::Cache { path, source }),
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            thread::sleep(pause.min(deadline - now));
            pause = (pause * 2).min(Duration::from_millis(50));
        }
        let path = self.path(token, "");
        let state = read_state(&path);
        Ok(Some(Locked {
            saved: state.clone(),
            state,
            path,
            _lock: file,
        }))
    }

    /// The waiter lock of a token, if no deferred sender holds it: whoever keeps the returned
    /// file (and every copy of its descriptor) is the token's one sender.
    pub fn claim_waiter(&self, token: &Token) -> Result<Option<File>> {
        try_lock(&self.path(token, ".waiter"))
    }

    /// Whether `file` is the waiter lock of `token` (the deferred sender checks what it was given).
    pub fn is_waiter_of(&self, file: &File, token: &Token) -> bool {
        use std::os::unix::fs::MetadataExt;
        let (Ok(a), Ok(b)) = (
            file.metadata(),
            fs::symlink_metadata(self.path(token, ".waiter")),
        ) else {
            return false;
        };
        (a.dev(), a.ino()) == (b.dev(), b.ino())
    }

    /// Every token state that holds a remembered token: the token and its state, the most
    /// recently given first.
    pub fn remembered(&self) -> Vec<(Token, State)> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut found: Vec<(Token, State)> = entries
            .flatten()
            .filter(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit())
            })
            .filter_map(|e| {
                let state = read_state(&e.path());
                let token = Token::parse(state.token.as_deref()?).ok()?;
                // A file whose name does not match its token was not written by us.
                (token.hash() == e.file_name().to_string_lossy()).then_some((token, state))
            })
            .collect();
        // The phone in use is the one worth waking first.
        found.sort_by_key(|(_, state)| std::cmp::Reverse(state.seen));
        found
    }
}

/// A token's state, read under its lock; `save` replaces it.
pub struct Locked {
    pub state: State,
    /// As read or last written: a state that did not change is not written again.
    saved: State,
    path: PathBuf,
    _lock: File,
}

impl Locked {
    /// Writes the state to a new file and renames it over the old one, if it changed.
    pub fn save(&mut self) -> Result<()> {
        if self.state == self.saved {
            return Ok(());
        }
        replace(&self.path, &self.state.render())?;
        self.saved = self.state.clone();
        Ok(())
    }
}

/// A lock file of the cache dir, if no one else holds it: whoever keeps the returned file (and
/// every copy of its descriptor) holds the lock.
pub fn try_lock(path: &Path) -> Result<Option<File>> {
    let file = open_private(path).map_err(|source| Error::Cache {
        path: path.to_path_buf(),
        source,
    })?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(fs::TryLockError::WouldBlock) => Ok(None),
        Err(fs::TryLockError::Error(source)) => Err(Error::Cache {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Writes a file of the cache dir (mode 0600, never through a link) in place: for a file no one
/// reads before this returns.
pub fn write_private(path: &Path, text: &str) -> Result<()> {
    let err = |source| Error::Cache {
        path: path.to_path_buf(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(err)?;
    file.write_all(text.as_bytes()).map_err(err)
}

/// Replaces a file of the cache dir whole: written to `<path>.new` (mode 0600, never through a
/// link), then renamed over it, so no reader ever sees half of it.
pub fn replace(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("new");
    write_private(&tmp, text)?;
    fs::rename(&tmp, path).map_err(|source| {
        let _ = fs::remove_file(&tmp);
        Error::Cache {
            path: path.to_path_buf(),
            source,
        }
    })
}

/// A regular file of the cache dir (never through a link, never a FIFO that would block) and
/// when it was last written, if it is there and no longer than `max`.
pub fn read_private(path: &Path, max: u64) -> Option<(String, SystemTime)> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    let meta = file.metadata().ok()?;
    if !meta.is_file() || meta.len() > max {
        return None;
    }
    // Room for all of it, so that it is read in one call rather than in growing pieces.
    let mut text = String::with_capacity(meta.len() as usize + 1);
    file.take(max).read_to_string(&mut text).ok()?;
    Some((text, meta.modified().ok()?))
}

/// Opens (creating, mode 0600) a file in the cache dir, refusing to follow a link planted there.
fn open_private(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// A missing, unreadable or foreign file reads as no state: the worst that follows is one POST
/// too many.
fn read_state(path: &Path) -> State {
    match read_private(path, MAX_STATE_LEN) {
        None => State::default(),
        Some((text, modified)) if text.is_empty() => State {
            notified: Some(modified),
            ..State::default()
        },
        Some((text, _)) => State::parse(&text),
    }
}

/// What is known about one token.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct State {
    /// The last successful POST.
    pub notified: Option<SystemTime>,
    /// The first message still waiting for its wakeup.
    pub pending: Option<SystemTime>,
    /// When the relay answered 410.
    pub gone: Option<SystemTime>,
    /// No POST before this: the relay asked for a pause.
    pub paused: Option<SystemTime>,
    /// A deferred POST that failed, and the line that says how, for the next run to print.
    pub failed: Option<(SystemTime, String)>,
    /// With --remember: when the token was last given, and the token.
    pub seen: Option<SystemTime>,
    pub token: Option<String>,
}

impl State {
    fn parse(text: &str) -> State {
        let mut state = State::default();
        let mut lines = text.lines();
        if lines.next() != Some(HEADER) {
            return state;
        }
        for line in lines {
            let (key, rest) = line.split_once(' ').unwrap_or((line, ""));
            let (time, text) = rest.split_once(' ').unwrap_or((rest, ""));
            let time = parse_time(time);
            match key {
                "notified" => state.notified = time,
                "pending" => state.pending = time,
                "gone" => state.gone = time,
                "paused" => state.paused = time,
                "failed" => state.failed = time.map(|t| (t, text.to_string())),
                "seen" => state.seen = time,
                "token" => state.token = Some(rest.to_string()),
                _ => {}
            }
        }
        state
    }

    fn render(&self) -> String {
        let mut text = format!("{HEADER}\n");
        let times = [
            ("notified", self.notified),
            ("pending", self.pending),
            ("gone", self.gone),
            ("paused", self.paused),
            ("seen", self.seen),
        ];
        for (key, time) in times {
            if let Some(t) = time {
                text.push_str(&format!("{key} {}\n", format_time(t)));
            }
        }
        if let Some((t, line)) = &self.failed {
            // One line, whatever the relay said.
            let line = line.replace(['\n', '\r'], " ");
            text.push_str(&format!("failed {} {line}\n", format_time(*t)));
        }
        if let Some(token) = &self.token {
            text.push_str(&format!("token {token}\n"));
        }
        text
    }

    /// Since when the token is gone, if the relay said so less than a day ago.
    pub fn gone_since(&self, now: SystemTime) -> Option<SystemTime> {
        self.gone.filter(|&g| within(g, now, GONE_FOR))
    }

    /// Whether a remembered token was given recently enough to be kept.
    pub fn is_remembered(&self, now: SystemTime) -> bool {
        self.token.is_some() && self.seen.is_some_and(|s| within(s, now, REMEMBER_FOR))
    }

    /// The earliest time the token may be posted again, if that is later than `now`.
    pub fn next_post(&self, now: SystemTime, interval: Duration) -> Option<SystemTime> {
        let after_interval = wait_left(self.notified, now, interval).map(|left| now + left);
        // A pause further off than the cap means the clock was set back.
        let paused = self
            .paused
            .filter(|&p| p > now)
            .map(|p| p.min(now + MAX_PAUSE));
        after_interval.max(paused)
    }

    /// Forgets the token's secret and everything that only mattered while it was remembered.
    pub fn forget(&mut self) {
        self.token = None;
        self.seen = None;
    }
}

/// Whether `then` is less than `span` ago. A time in the future (the clock was set back) counts
/// as recent, unless it is further off than `span`.
fn within(then: SystemTime, now: SystemTime, span: Duration) -> bool {
    match now.duration_since(then) {
        Ok(age) => age < span,
        Err(ahead) => ahead.duration() <= span,
    }
}

/// How long the token must still wait after its last POST, or `None` when it may be posted now.
/// A POST more than `interval` in the future means the clock was set back: it has expired.
pub fn wait_left(
    last: Option<SystemTime>,
    now: SystemTime,
    interval: Duration,
) -> Option<Duration> {
    let last = last?;
    match now.duration_since(last) {
        Ok(age) => interval.checked_sub(age).filter(|left| !left.is_zero()),
        Err(ahead) if ahead.duration() <= interval && !interval.is_zero() => Some(interval),
        Err(_) => None,
    }
}

fn format_time(t: SystemTime) -> String {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => format!("{}.{:03}", d.as_secs(), d.subsec_millis()),
        Err(_) => "0.000".to_string(),
    }
}

fn parse_time(text: &str) -> Option<SystemTime> {
    let (secs, frac) = text.split_once('.').unwrap_or((text, "0"));
    let secs: u64 = secs.parse().ok()?;
    let millis: u64 = format!("{frac:0<3}").get(..3)?.parse().ok()?;
    UNIX_EPOCH.checked_add(Duration::from_secs(secs) + Duration::from_millis(millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(s: &str) -> Token {
        Token::parse(s).unwrap()
    }

    #[test]
    fn wait_left_rules() {
        let now = SystemTime::now();
        let s = Duration::from_secs;
        let i = s(10);
        assert_eq!(wait_left(None, now, i), None);
        assert_eq!(wait_left(Some(now - s(3)), now, i), Some(s(7)));
        assert_eq!(wait_left(Some(now - s(10)), now, i), None);
        assert_eq!(wait_left(Some(now - s(11)), now, i), None);
        assert_eq!(wait_left(Some(now + s(5)), now, i), Some(i));
        assert_eq!(wait_left(Some(now + s(11)), now, i), None);
        assert_eq!(wait_left(Some(now), now, Duration::ZERO), None);
        assert_eq!(wait_left(Some(now + s(1)), now, Duration::ZERO), None);
    }

    #[test]
    fn next_post_takes_the_later_of_interval_and_pause() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let s = Duration::from_secs;
        let mut st = State {
            notified: Some(now - s(4)),
            ..State::default()
        };
        assert_eq!(st.next_post(now, s(10)), Some(now + s(6)));
        st.paused = Some(now + s(30));
        assert_eq!(st.next_post(now, s(10)), Some(now + s(30)));
        st.paused = Some(now + s(7200));
        assert_eq!(st.next_post(now, s(10)), Some(now + MAX_PAUSE));
        st.paused = Some(now - s(1));
        assert_eq!(st.next_post(now, Duration::ZERO), None);
    }

    #[test]
    fn gone_for_a_day_remembered_for_90_days() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let st = State {
            gone: Some(now - GONE_FOR + Duration::from_secs(1)),
            seen: Some(now - REMEMBER_FOR),
            token: Some("t".into()),
            ..State::default()
        };
        assert!(st.gone_since(now).is_some());
        assert!(st.gone_since(now + Duration::from_secs(1)).is_none());
        assert!(!st.is_remembered(now));
        assert!(st.is_remembered(now - Duration::from_secs(1)));
    }

    #[test]
    fn state_round_trips_and_ignores_what_it_does_not_know() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_597_200_123);
        let st = State {
            notified: Some(t),
            pending: Some(t),
            gone: Some(t),
            paused: Some(t),
            failed: Some((t, "token x: not notified:\nline".into())),
            seen: Some(t),
            token: Some("openpgp:abc".into()),
        };
        let text = st.render();
        assert!(text.contains("notified 1795597200.123\n"), "{text}");
        assert!(text.contains("failed 1795597200.123 token x: not notified: line\n"));
        let mut back = State::parse(&text);
        back.failed = back.failed.map(|(t, l)| (t, l.replace(" line", "\nline")));
        assert_eq!(back, st);
        assert_eq!(
            State::parse(&format!("{HEADER}\nfuture 1\nnotified x\n")),
            State::default()
        );
        assert_eq!(State::parse("garbage\nnotified 1\n"), State::default());
    }

    #[test]
    fn state_file_is_replaced_whole_and_private() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        let cache = Cache::open(&dir, true).unwrap();
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let t = token("tok");
        assert_eq!(cache.peek(&t), State::default());
        let mut locked = cache.lock(&t, Instant::now()).unwrap().unwrap();
        // Kept to the millisecond.
        locked.state.notified = Some(UNIX_EPOCH + Duration::from_millis(1_795_597_200_123));
        locked.save().unwrap();
        let path = dir.join(t.hash());
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(!path.with_extension("new").exists());
        assert_eq!(cache.peek(&t), locked.state);
    }

    #[test]
    fn the_empty_stamp_of_0_1_0_still_counts() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = Cache::open(tmp.path(), true).unwrap();
        let t = token("tok");
        let stamp = File::create(tmp.path().join(t.hash())).unwrap();
        let then = SystemTime::now() - Duration::from_secs(3);
        stamp.set_modified(then).unwrap();
        assert_eq!(cache.peek(&t).notified, Some(then));
    }

    #[test]
    fn dry_open_creates_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("never");
        Cache::open(&dir, false).unwrap();
        assert!(!dir.exists());
    }

    #[test]
    fn locks_are_exclusive_and_time_out() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = Cache::open(tmp.path(), true).unwrap();
        let t = token("tok");
        let held = cache.lock(&t, Instant::now()).unwrap();
        assert!(held.is_some());
        let start = Instant::now();
        let second = cache.lock(&t, start + Duration::from_millis(100)).unwrap();
        assert!(second.is_none());
        assert!(start.elapsed() >= Duration::from_millis(100));
        drop(held);
        assert!(cache.lock(&t, Instant::now()).unwrap().is_some());

        let waiter = cache.claim_waiter(&t).unwrap().unwrap();
        assert!(cache.is_waiter_of(&waiter, &t));
        assert!(cache.claim_waiter(&t).unwrap().is_none());
        drop(waiter);
        assert!(cache.claim_waiter(&t).unwrap().is_some());
    }

    #[test]
    fn remembered_tokens_come_back_newest_first() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = Cache::open(tmp.path(), true).unwrap();
        let now = SystemTime::now();
        for (name, age) in [("old", 20), ("new", 10)] {
            let t = token(name);
            let mut l = cache.lock(&t, Instant::now()).unwrap().unwrap();
            l.state.token = Some(name.into());
            l.state.seen = Some(now - Duration::from_secs(age));
            l.save().unwrap();
        }
        // Only a state named after its own token counts.
        let mut l = cache
            .lock(&token("other"), Instant::now())
            .unwrap()
            .unwrap();
        l.state.token = Some("new".into());
        l.state.seen = Some(now);
        l.save().unwrap();
        let got: Vec<Token> = cache.remembered().into_iter().map(|(t, _)| t).collect();
        assert_eq!(got, [token("new"), token("old")]);
    }

    #[test]
    fn refuses_links_files_and_open_dirs() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("real");
        fs::create_dir(&real).unwrap();
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let msg = Cache::open(&link, true).err().unwrap().to_string();
        assert!(msg.ends_with("is a symbolic link; fix it or give another with --cache-dir"));
        let file = tmp.path().join("file");
        fs::write(&file, "").unwrap();
        assert!(Cache::open(&file, true).is_err());
        assert!(Cache::open(&file.join("sub"), true).is_err());
        fs::set_permissions(&real, fs::Permissions::from_mode(0o777)).unwrap();
        assert!(Cache::open(&real, true).is_err());
    }

    #[test]
    fn planted_link_is_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = Cache::open(&tmp.path().join("c"), true).unwrap();
        let t = token("tok");
        let victim = tmp.path().join("victim");
        std::os::unix::fs::symlink(
            &victim,
            tmp.path().join("c").join(t.hash()).with_extension("new"),
        )
        .unwrap();
        let mut locked = cache.lock(&t, Instant::now()).unwrap().unwrap();
        locked.state.notified = Some(SystemTime::now());
        assert!(matches!(locked.save(), Err(Error::Cache { .. })));
        assert!(!victim.exists());
    }
}
