//! This program in the background, detached from its caller: a session of its own (killing the
//! caller's process group leaves it alone), `/` as its directory, and no descriptor of the
//! caller (getmail, procmail, maildrop and Dovecot all wait for the pipes they handed over;
//! Dovecot hands over about 20). The deferred sender is the program started again, with none
//! of the caller's DELTAPUSH_* variables: its configuration is its command line alone. The
//! waiter of a `--hold` is a forked copy, which costs Dovecot's delivery no exec.

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

/// Forks a detached copy of this process, for a caller that must return at once (a `--hold`,
/// inside Dovecot's delivery): no exec, so the copy costs a fork and nothing more. `true` in the
/// copy, which must end with `std::process::exit`; `false` in the caller. Only for a process
/// with one thread.
pub fn fork() -> io::Result<bool> {
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    let null_fd = null.as_raw_fd();
    // SAFETY: one thread, so the copy may go on as this process would.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            // SAFETY: plain syscalls on descriptors this process owns.
            unsafe {
                libc::setsid();
                for fd in 0..3 {
                    libc::dup2(null_fd, fd);
                }
                libc::chdir(c"/".as_ptr());
                libc::syscall(
                    libc::SYS_close_range,
                    3 as libc::c_uint,
                    libc::c_uint::MAX,
                    0,
                );
            }
            // Closed above already.
            std::mem::forget(null);
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// Rewrites this process's command line, as `ps` shows it, to `words`, cut to the length of the
/// original: a forked copy drops the token its parent was given there, and says what it is.
/// Does nothing unless the kernel's idea of where the command line is matches what it holds.
pub fn retitle(words: &[&str]) {
    let (Ok(stat), Ok(cmdline)) = (
        std::fs::read_to_string("/proc/self/stat"),
        std::fs::read("/proc/self/cmdline"),
    ) else {
        return;
    };
    // pid (comm) state ...: comm may hold anything, so the fields are counted after ')'; the
    // first of those is field 3, and arg_start and arg_end are fields 48 and 49.
    let Some((_, fields)) = stat.rsplit_once(')') else {
        return;
    };
    let fields: Vec<&str> = fields.split_whitespace().collect();
    let at = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<usize>().ok());
    let (Some(start), Some(end)) = (at(48), at(49)) else {
        return;
    };
    if end <= start || end - start != cmdline.len() {
        return;
    }
    let mut title = words.join("\0").into_bytes();
    title.resize(cmdline.len(), 0);
    // SAFETY: [start, end) is this process's own command line, which the kernel just showed
    // whole; nothing here reads it again.
    unsafe { std::ptr::copy_nonoverlapping(title.as_ptr(), start as *mut u8, title.len()) };
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
