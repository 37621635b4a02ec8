//! No way back to another user: a program started with a real or saved uid (or gid) other than
//! its effective one could switch to it. Dovecot 2.4.1's LMTP starts its programs so, with real
//! uid 0 (fixed upstream in 2.4.4, not in Debian 13); this makes every id the effective one before
//! anything else happens.

use std::io;

/// The three ids of one kind, as the kernel keeps them: real, effective, saved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ids {
    pub real: u32,
    pub effective: u32,
    pub saved: u32,
}

impl Ids {
    fn all_effective(&self) -> bool {
        self.real == self.effective && self.saved == self.effective
    }
}

/// What could not be given up, for the one error line.
#[derive(Debug)]
pub struct Kept {
    pub kind: &'static str,
    pub ids: Ids,
    pub source: io::Error,
}

/// Makes the real and saved uid and gid the effective ones, the group first (changing the uid
/// first could take away the right to change the group). Does nothing when they already are.
pub fn drop_to_effective() -> Result<(), Kept> {
    let gids = getresgid();
    if !gids.all_effective() {
        let e = gids.effective;
        // SAFETY: a plain syscall with integers.
        if unsafe { libc::setresgid(e, e, e) } != 0 {
            return Err(kept("gid", gids));
        }
    }
    let uids = getresuid();
    if !uids.all_effective() {
        let e = uids.effective;
        // SAFETY: a plain syscall with integers.
        if unsafe { libc::setresuid(e, e, e) } != 0 {
            return Err(kept("uid", uids));
        }
    }
    // Trust the kernel's answer, not the call's: what matters is what is held now.
    for (kind, ids) in [("gid", getresgid()), ("uid", getresuid())] {
        if !ids.all_effective() {
            return Err(Kept {
                kind,
                ids,
                source: io::Error::from(io::ErrorKind::PermissionDenied),
            });
        }
    }
    Ok(())
}

fn kept(kind: &'static str, ids: Ids) -> Kept {
    Kept {
        kind,
        ids,
        source: io::Error::last_os_error(),
    }
}

fn getresuid() -> Ids {
    let (mut real, mut effective, mut saved) = (0, 0, 0);
    // SAFETY: getresuid writes three integers it is given; it cannot fail with valid pointers.
    unsafe { libc::getresuid(&mut real, &mut effective, &mut saved) };
    Ids {
        real,
        effective,
        saved,
    }
}

fn getresgid() -> Ids {
    let (mut real, mut effective, mut saved) = (0, 0, 0);
    // SAFETY: as above.
    unsafe { libc::getresgid(&mut real, &mut effective, &mut saved) };
    Ids {
        real,
        effective,
        saved,
    }
}
