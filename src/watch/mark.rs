//! Where the watcher is in the mailbox: its UIDVALIDITY and the highest UID it has handled, in
//! `<cache dir>/watch-<hash of account and mailbox>`, replaced whole (write, then rename), so a
//! restart or reconnect takes up exactly where the last one stopped.

use std::fs::File;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::cache;
use crate::error::Result;

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
    parse(&cache::read_private(path, MAX_LEN)?.0)
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
    cache::try_lock(&path.with_extension("lock"))
}

pub fn save(path: &Path, mark: Mark) -> Result<()> {
    let text = format!(
        "{HEADER}\nuidvalidity {}\nuid {}\n",
        mark.uidvalidity, mark.uid
    );
    cache::replace(path, &text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
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
