//! This program started again in the background, detached from its caller: a session of its
//! own (killing the caller's process group leaves it alone), `/` as its directory, no descriptor
//! of the caller (getmail, procmail, maildrop and Dovecot all wait for the pipes they handed
//! over; Dovecot hands over about 20), and none of the caller's DELTAPUSH_* variables: its
//! configuration is its command line alone.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

/// The descriptor a started program finds the file it was handed on.
pub const HANDED_FD: i32 = 3;

/// Starts this program with `args`, `handed` on descriptor 3 and `input` on standard input.
/// Returns once it runs; the parent's copy of `handed` is closed.
pub fn spawn(args: &[OsString], handed: Option<File>, input: &[u8]) -> io::Result<()> {
    let exe = std::env::current_exe()?;
    let handed_fd = handed.as_ref().map(AsRawFd::as_raw_fd);
    let mut cmd = Command::new(exe);
    cmd.arg0("deltapush-mda")
        .args(args)
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // A DELTAPUSH_TOKEN_FILE relative to the caller's directory, read again in `/`, stopped
    // every sender before it read its token, and the wakeup was lost.
    for (name, _) in std::env::vars_os() {
        if name.as_encoded_bytes().starts_with(b"DELTAPUSH_") {
            cmd.env_remove(name);
        }
    }
    // SAFETY: only async-signal-safe calls (setsid, dup2, fcntl, close_range) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() == -1 {
                return Err(io::Error::last_os_error());
            }
            let keep = match handed_fd {
                None => HANDED_FD - 1,
                // dup2 onto itself would keep close-on-exec set.
                Some(HANDED_FD) => {
                    if libc::fcntl(HANDED_FD, libc::F_SETFD, 0) == -1 {
                        return Err(io::Error::last_os_error());
                    }
                    HANDED_FD
                }
                Some(fd) => {
                    if libc::dup2(fd, HANDED_FD) == -1 {
                        return Err(io::Error::last_os_error());
                    }
                    HANDED_FD
                }
            };
            close_inherited(keep + 1);
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    // The child's copy keeps whatever `handed` holds (a lock).
    drop(handed);
    let mut pipe = child.stdin.take().expect("stdin is piped");
    // What is handed on the pipe fits in its buffer: this never waits for the child.
    pipe.write_all(input)?;
    Ok(())
}

/// Starts this program with `args` and nothing on standard input, without waiting for it to
/// run: for a caller that must return at once (a `--hold`, inside Dovecot's delivery). Only the
/// fork is waited for; an exec that fails ends the child unseen.
pub fn start(args: &[OsString]) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let exe = std::env::current_exe()?;
    let to_c = |s: &std::ffi::OsStr| {
        std::ffi::CString::new(s.as_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
    };
    // Everything the child needs is made before the fork: after it, only async-signal-safe
    // calls.
    let path = to_c(exe.as_os_str())?;
    let mut argv = vec![to_c("deltapush-mda".as_ref())?];
    for arg in args {
        argv.push(to_c(arg)?);
    }
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let env: Vec<std::ffi::CString> = std::env::vars_os()
        .filter(|(name, _)| !name.as_encoded_bytes().starts_with(b"DELTAPUSH_"))
        .filter_map(|(name, value)| {
            let mut pair = name.into_encoded_bytes();
            pair.push(b'=');
            pair.extend_from_slice(value.as_encoded_bytes());
            std::ffi::CString::new(pair).ok()
        })
        .collect();
    let mut env_ptrs: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
    env_ptrs.push(std::ptr::null());
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    let null_fd = null.as_raw_fd();
    // SAFETY: between fork and exec the child makes only async-signal-safe calls (setsid, dup2,
    // chdir, close_range, execve, _exit) on memory prepared above.
    unsafe {
        match libc::fork() {
            -1 => Err(io::Error::last_os_error()),
            0 => {
                libc::setsid();
                for fd in 0..3 {
                    libc::dup2(null_fd, fd);
                }
                libc::chdir(c"/".as_ptr());
                close_inherited(3);
                libc::execve(path.as_ptr(), argv_ptrs.as_ptr(), env_ptrs.as_ptr());
                libc::_exit(127)
            }
            _ => Ok(()),
        }
    }
}

/// Marks every descriptor from `first` on close-on-exec. Marking rather than closing keeps std's
/// own exec-error pipe working.
unsafe fn close_inherited(first: i32) {
    let first = first as libc::c_uint;
    // SAFETY: a raw syscall with plain integers.
    let done = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    } == 0;
    if !done {
        // Kernels before 5.11: one fcntl per possible descriptor.
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct it is given.
        let max = match unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } {
            0 => limit.rlim_cur.min(65536) as i32,
            _ => 1024,
        };
        for fd in first as i32..max {
            // SAFETY: fcntl on a descriptor that may not exist only fails with EBADF.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
    }
}
