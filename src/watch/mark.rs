//! Where the watcher is in the mailbox: its UIDVALIDITY and the highest UID it has handled, in
//! `<cache dir>/watch-<hash of account and mailbox>`, replaced whole (write, then rename), so a
//! restart or reconnect takes up exactly where the last one stopped.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

const HEADER: &str = "deltapush-mda watch state 1";
const MAX_LEN: u64 = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    pub uidvalidity: u32,
    /// Every message up to this UID has been handled.
    pub uid: u32,
}

pub fn path(cache_dir: &Path, key: &str) -> PathBuf {
    let hash = format!("{:x}", Sha256::digest(key.as_bytes()));
    cache_dir.join(format!("watch-{}", &hash[..16]))
}

/// The saved mark; none when missing or not ours (the watcher then starts from now).
pub fn read(path: &Path) -> Option<Mark> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    let mut text = String::new();
    file.take(MAX_LEN).read_to_string(&mut text).ok()?;
    parse(&text)
}

fn parse(text: &str) -> Option<Mark> {
    let mut lines = text.lines();
    if lines.next()? != HEADER {
        return None;
    }
    let (mut uidvalidity, mut uid) = (None, None);
    for line in lines {
        match line.split_once(' ') {
            Some(("uidvalidity", v)) => uidvalidity = v.parse().ok(),
            Some(("uid", v)) => uid = v.parse().ok(),
            _ => {}
        }
    }
    Some(Mark {
        uidvalidity: uidvalidity?,
        uid: uid?,
    })
}

/// Takes `<mark>.lock` for as long as the file lives, so that one watcher, not two, wakes the
/// phone for each message of the mailbox. `None`: another watcher holds it.
pub fn hold(path: &Path) -> Result<Option<File>> {
    let lock = path.with_extension("lock");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&lock)
        .map_err(|source| Error::Cache {
            path: lock.clone(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(TryLockError::WouldBlock) => Ok(None),
        Err(TryLockError::Error(source)) => Err(Error::Cache { path: lock, source }),
    }
}

pub fn save(path: &Path, mark: Mark) -> Result<()> {
    let tmp = path.with_extension("new");
    let err = |source| Error::Cache {
        path: tmp.clone(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .map_err(err)?;
    let text = format!(
        "{HEADER}\nuidvalidity {}\nuid {}\n",
        mark.uidvalidity, mark.uid
    );
    file.write_all(text.as_bytes()).map_err(err)?;
    drop(file);
    fs::rename(&tmp, path).map_err(|source| {
        let _ = fs::remove_file(&tmp);
        Error::Cache {
            path: path.to_path_buf(),
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn round_trip_private_and_foreign_files_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let p = path(dir.path(), "me\nhost\n993\nINBOX");
        assert_eq!(read(&p), None);
        let m = Mark {
            uidvalidity: 7,
            uid: 42,
        };
        save(&p, m).unwrap();
        assert_eq!(read(&p), Some(m));
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        fs::write(&p, "uid 3\n").unwrap();
        assert_eq!(read(&p), None);
    }
}
