//! At most one notification per token per interval, across concurrent processes.
//!
//! `<cache-dir>/<sha256 of token>` is the stamp: its mtime is the last successful notification.
//! `<stamp>.lock` is held with `flock` while a process decides and posts; the kernel drops it
//! when the process dies, so a killed run never blocks the next one.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::token::Token;

pub struct Cache {
    dir: PathBuf,
}

/// The default cache dir: `$XDG_CACHE_HOME/deltapush-mda`, else `~/.cache/deltapush-mda`.
pub fn default_dir() -> Option<PathBuf> {
    directories::ProjectDirs::from("", "", "deltapush-mda").map(|d| d.cache_dir().to_path_buf())
}

impl Cache {
    /// Checks the cache dir, creating it (mode 0700, with parents) when `create` is set.
    pub fn open(dir: PathBuf, create: bool) -> Result<Cache> {
        let config = |what: &str| {
            Error::Config(format!(
                "cache dir {}: {what}; fix it or give another with --cache-dir",
                dir.display()
            ))
        };
        let meta = match fs::symlink_metadata(&dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&dir)
                    .map_err(|e| config(&e.to_string()))?;
                fs::symlink_metadata(&dir).map_err(|e| config(&e.to_string()))?
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Cache { dir }),
            Err(e) => return Err(config(&e.to_string())),
            Ok(meta) => meta,
        };
        // Stamps could be redirected anywhere through a link or a dir that others can write.
        if meta.file_type().is_symlink() {
            return Err(config("is a symbolic link"));
        }
        if !meta.is_dir() {
            return Err(config("not a directory"));
        }
        if meta.permissions().mode() & 0o002 != 0 {
            return Err(config("writable by every user"));
        }
        Ok(Cache { dir })
    }

    pub fn stamp_path(&self, token: &Token) -> PathBuf {
        let hash = Sha256::digest(token.as_bytes());
        self.dir.join(format!("{hash:x}"))
    }

    /// When the token was last notified, if ever.
    pub fn last_notified(&self, token: &Token) -> Option<SystemTime> {
        let meta = fs::symlink_metadata(self.stamp_path(token)).ok()?;
        meta.is_file().then(|| meta.modified().ok()).flatten()
    }

    /// Waits for the token's lock until `deadline`. `Ok(None)` means another process held it
    /// all along.
    pub fn lock(&self, token: &Token, deadline: Instant) -> Result<Option<Lock>> {
        let stamp = self.stamp_path(token);
        let path = stamp.with_extension("lock");
        let file = open_private(&path).map_err(|source| Error::Cache { path, source })?;
        let mut pause = Duration::from_millis(2);
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(Some(Lock { _file: file, stamp })),
                Err(fs::TryLockError::WouldBlock) => {}
                Err(fs::TryLockError::Error(source)) => {
                    return Err(Error::Cache {
                        path: stamp.with_extension("lock"),
                        source,
                    });
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            thread::sleep(pause.min(deadline - now));
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }
}

/// Held while deciding and posting; released on drop or process death.
pub struct Lock {
    _file: File,
    stamp: PathBuf,
}

impl Lock {
    /// Records a successful notification: the stamp's mtime becomes now.
    pub fn touch(&self) -> Result<()> {
        let err = |source| Error::Cache {
            path: self.stamp.clone(),
            source,
        };
        let file = open_private(&self.stamp).map_err(err)?;
        file.set_modified(SystemTime::now()).map_err(err)
    }
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

/// How long the token must still wait, or `None` when it may be notified now.
/// A stamp more than `interval` in the future means the clock was set back: it has expired.
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
    fn stamp_name_is_the_hash_never_the_token() {
        let cache = Cache {
            dir: PathBuf::from("/c"),
        };
        assert_eq!(
            cache.stamp_path(&token("../../x")),
            Path::new("/c/9cdf6a50100a862e14286c7a334296daf7da8b45d48e20302424ca729b62a31a")
        );
    }

    #[test]
    fn creates_private_dir_and_stamps() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        let cache = Cache::open(dir.clone(), true).unwrap();
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let t = token("tok");
        assert_eq!(cache.last_notified(&t), None);
        let lock = cache.lock(&t, Instant::now()).unwrap().unwrap();
        lock.touch().unwrap();
        let meta = fs::metadata(cache.stamp_path(&t)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.len(), 0);
        assert!(cache.last_notified(&t).unwrap().elapsed().unwrap() < Duration::from_secs(5));
    }

    #[test]
    fn dry_open_creates_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("never");
        Cache::open(dir.clone(), false).unwrap();
        assert!(!dir.exists());
    }

    #[test]
    fn lock_is_exclusive_and_times_out() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = Cache::open(tmp.path().to_path_buf(), true).unwrap();
        let t = token("tok");
        let held = cache.lock(&t, Instant::now()).unwrap();
        assert!(held.is_some());
        let start = Instant::now();
        let second = cache.lock(&t, start + Duration::from_millis(100)).unwrap();
        assert!(second.is_none());
        assert!(start.elapsed() >= Duration::from_millis(100));
        drop(held);
        assert!(cache.lock(&t, Instant::now()).unwrap().is_some());
    }

    #[test]
    fn refuses_links_files_and_open_dirs() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("real");
        fs::create_dir(&real).unwrap();
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let msg = Cache::open(link, true).err().unwrap().to_string();
        assert!(msg.ends_with("is a symbolic link; fix it or give another with --cache-dir"));

        let file = tmp.path().join("file");
        fs::write(&file, "").unwrap();
        assert!(matches!(
            Cache::open(file.clone(), true),
            Err(Error::Config(_))
        ));
        assert!(matches!(
            Cache::open(file.join("sub"), true),
            Err(Error::Config(_))
        ));

        fs::set_permissions(&real, fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(Cache::open(real, true), Err(Error::Config(_))));
    }

    #[test]
    fn planted_link_is_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = Cache::open(tmp.path().join("c"), true).unwrap();
        let t = token("tok");
        let victim = tmp.path().join("victim");
        std::os::unix::fs::symlink(&victim, cache.stamp_path(&t)).unwrap();
        let lock = cache.lock(&t, Instant::now()).unwrap().unwrap();
        assert!(matches!(lock.touch(), Err(Error::Cache { .. })));
        assert!(!victim.exists());
    }
}
