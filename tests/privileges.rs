//! No way back to another user: started as Dovecot 2.4.1's LMTP starts its programs (real uid
//! and gid 0, effective and saved ones the mail user's), the program makes every id the
//! effective one before it reads anything; when it cannot, it exits 77 with one line, having
//! read nothing and posted nothing.

mod common;

use std::fs;
use std::io;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use common::realmail::poll;
use common::{Input, Relay, Reply, Sandbox, chat, line, token};

/// The mail user of the tests: nobody, as on Debian.
const USER: u32 = 65534;

/// `cmd` started with real ids 0 and effective (so, after exec, saved) ids `USER`; with
/// `block`, the setresuid and setresgid calls fail with EPERM, as under a seccomp policy.
fn as_lmtp_of_dovecot_2_4_1(cmd: &mut Command, block: bool) {
    // SAFETY: only async-signal-safe calls (setres[ug]id, prctl) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setresgid(0, USER, USER) != 0
                || libc::setresuid(0, USER, USER) != 0
            {
                return Err(io::Error::last_os_error());
            }
            if block {
                deny_id_changes()?;
            }
            Ok(())
        });
    }
}

/// A seccomp filter that answers EPERM to setresuid and setresgid and allows everything else.
unsafe fn deny_id_changes() -> io::Result<()> {
    const NR: u32 = 0; // offsetof(struct seccomp_data, nr)
    let errno = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
    let mut filter = [
        bpf(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, NR, 0, 0),
        bpf(
            libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
            libc::SYS_setresuid as u32,
            2,
            0,
        ),
        bpf(
            libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
            libc::SYS_setresgid as u32,
            1,
            0,
        ),
        bpf(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW, 0, 0),
        bpf(libc::BPF_RET | libc::BPF_K, errno, 0, 0),
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_mut_ptr(),
    };
    // SAFETY: prctl with plain integers and a filter that outlives the call.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
            || libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &prog as *const libc::sock_fprog,
            ) != 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn bpf(code: u32, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

/// The `Uid:` and `Gid:` lines of a running process: real, effective, saved, filesystem.
fn ids_of(pid: u32) -> (String, String) {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    };
    (field("Uid:"), field("Gid:"))
}

/// A sandbox whose home the mail user can write, and the run's command in it.
fn sandbox_for_the_mail_user() -> Sandbox {
    assert!(
        // SAFETY: a plain syscall.
        unsafe { libc::geteuid() } == 0,
        "these tests start the program as Dovecot's LMTP does, which takes root (CI runs as root)"
    );
    let sandbox = Sandbox::new();
    std::os::unix::fs::chown(sandbox.home.path(), Some(USER), Some(USER)).unwrap();
    sandbox
}

#[test]
fn a_real_uid_of_root_is_given_up_before_anything_is_read() {
    let sandbox = sandbox_for_the_mail_user();
    // The relay holds the POST open, so the program can be looked at while it waits.
    let relay = Relay::always(Reply::Hang);
    let mut cmd = sandbox.command();
    cmd.args(["--url", &relay.url, "--timeout", "3s", &token(1)]);
    as_lmtp_of_dovecot_2_4_1(&mut cmd, false);
    let running = common::start(cmd, Input::from(chat()));
    let pid = running.pid();
    assert!(
        poll(Duration::from_secs(10), || !relay.requests().is_empty()).is_some(),
        "no POST reached the relay"
    );
    let u = USER.to_string();
    let all_mail_user = format!("{u} {u} {u} {u}");
    assert_eq!(ids_of(pid), (all_mail_user.clone(), all_mail_user));
    let run = running.finish();
    // The relay never answered: a failure line, but the run itself went its normal way.
    assert_eq!(run.code, 0, "{}", run.stderr);
}

#[test]
fn ids_that_cannot_be_given_up_stop_the_run_with_77_before_it_reads() {
    let sandbox = sandbox_for_the_mail_user();
    let relay = Relay::start();
    let mut cmd = sandbox.command();
    cmd.args(["--url", &relay.url, &token(1)]);
    as_lmtp_of_dovecot_2_4_1(&mut cmd, true);
    let run = common::exec(cmd, Input::from(chat()));
    let u = USER;
    assert_eq!(
        run.said(),
        (
            77,
            line(&format!(
                "started with real gid 0, effective {u}, saved {u}, and could not make them all \
                 {u}: Operation not permitted (os error 1); nothing was read or sent"
            ))
            .as_str()
        )
    );
    assert!(relay.requests().is_empty());
    // Nothing read: the message was never taken off the pipe, so its writer saw EPIPE or
    // wrote it into the pipe's buffer; the program created no cache dir either.
    assert!(!sandbox.cache_dir().exists());
}
