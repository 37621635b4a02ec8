#!/usr/bin/env python3
"""What instant push costs and gives on your own Dovecot (issue 16), on the host's Dovecot 2.3
and on Debian 13's 2.4 (in the root `.ci/setup` makes, under chroot), with the files of
examples/dovecot/ as shipped (paths and the relay URL changed, nothing else) in Dovecots of its
own on 127.0.0.1, started and stopped here. Run through bench/dovecot.sh.

Measured on each version:
  - delivery to POST: from the end of an LMTP DATA to the stand-in relay having read the POST,
    and whether the message was in the Maildir (new/ or cur/) when the relay had read it: the
    relay lists the user's Maildir right then. A POST that came first is a violation;
  - the LMTP reply (end of DATA to the 250) of a delivery that posts, of one to a user without
    a token, of the same with a stock Dovecot (no fragment), and with `cat` in the program's
    place; and of a delivery whose relay accepts and never answers;
  - LMTP deliveries per second over 1 and 4 connections, against stock;
  - (full run only) delivery to POST through getmail --idle (examples/getmail), for comparison.
Each case first checks that every message was stored and that the relay got exactly the posts
it should. Exits 1 when a POST came before its message or a delivery waited 1 s or more for a
relay that never answers.

usage: dovecot.py BINARY OUT.md [--quick] [--only 2.3|2.4]
"""

import concurrent.futures
import json
import multiprocessing
import os
import pwd
import re
import shutil
import signal
import smtplib
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from common import chown_tree, mail_user, make_ca, stop_group

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Where the example files install things, replaced by the bench's own paths.
SCRIPT = "/etc/dovecot/sieve/deltapush.sieve"
EXEC_DIR = "/usr/lib/dovecot/sieve-execute"
LUA = "/etc/dovecot/deltapush.lua"
RELAY = "https://notifications.delta.chat/notify"
TRIXIE_ROOT = os.environ.get("DELTAPUSH_TRIXIE_ROOT", "/var/lib/deltapush-mda-tests/trixie")
# As tests/common/dovecot.rs runs 2.4: chroot into the Debian 13 root, with /proc, /dev and
# /tmp bound in a mount namespace of its own, so no mount outlives the program. unshare, sh and
# chroot each exec the next: the pid is the program's.
CHROOT = (
    'set -e; r=$1; shift; mount --rbind /proc "$r/proc"; mount --rbind /dev "$r/dev"; '
    'mount --bind /tmp "$r/tmp"; exec chroot "$r" "$@"'
)
# LMTP deliveries over 1 connection, and over 4 at once.
CONNS = (1, 4)
# The issue's targets.
REPLY_TARGET = 0.005
HUNG_LIMIT = 1.0


def die(msg):
    print(f"bench/dovecot.py: {msg}", file=sys.stderr)
    sys.exit(1)


# Clients and the relay run as processes of their own, as a mail server and the real relay
# would: threads of this one would wait on each other for Python's interpreter lock.
MP = multiprocessing.get_context("fork")


class Relay:
    """The stand-in relay, a process of its own: notes when each body arrived (CLOCK_MONOTONIC,
    the same clock in every process) and how many messages the Maildir of the token's user held
    right then; answers 200, or never, for a token marked to hang. Which token is whose comes
    from a file written before any delivery."""

    def __init__(self, tokens_file):
        self.tokens_file = tokens_file
        self.known = {}
        self.write_tokens()
        self.cond = threading.Condition()
        self.posts = []  # (monotonic time, body, messages in the Maildir then)
        queue, ready = MP.Queue(), MP.Queue()
        self.proc = MP.Process(target=serve_relay, args=(queue, ready, tokens_file), daemon=True)
        self.proc.start()
        self.url = f"http://127.0.0.1:{ready.get(timeout=10)}/notify"
        threading.Thread(target=self.collect, args=(queue,), daemon=True).start()

    def add(self, token, maildir, hang=False):
        self.known[token] = {"maildir": maildir, "hang": hang}

    def write_tokens(self):
        tmp = self.tokens_file + ".new"
        with open(tmp, "w") as f:
            json.dump(self.known, f)
        os.replace(tmp, self.tokens_file)

    def collect(self, queue):
        while True:
            post = queue.get()
            with self.cond:
                self.posts.append(post)
                self.cond.notify_all()

    def stop(self):
        self.proc.terminate()
        self.proc.join()

    def of(self, body):
        with self.cond:
            return [p for p in self.posts if p[1] == body]

    def count(self, body=None):
        with self.cond:
            return sum(1 for p in self.posts if body is None or p[1] == body)

    def sync(self):
        """Returns once every POST the relay has read is in self.posts."""
        self.syncs = getattr(self, "syncs", 0) + 1
        marker = f"/sync/{self.syncs}"
        with urllib.request.urlopen(self.url.replace("/notify", marker), timeout=10):
            pass
        self.wait_for(marker, 1)

    def wait_seen(self, body, stored, limit=15):
        """Waits until the relay has read a POST of `body` that saw `stored` messages in its
        user's Maildir: the wakeup of the last message."""
        with self.cond:
            if not self.cond.wait_for(
                lambda: any(p[2] >= stored for p in self.posts if p[1] == body), timeout=limit
            ):
                die(f"no POST of a token saw its {stored} messages stored within {limit} s: "
                    "the last message woke nothing")

    def wait_for(self, body, n, limit=15):
        """Waits until the relay holds n posts of `body`; returns the n-th."""
        with self.cond:
            if not self.cond.wait_for(lambda: self.count(body) >= n, timeout=limit):
                die(f"the relay got {self.count(body)} posts of a token, expected {n} in {limit} s")
            return [p for p in self.posts if p[1] == body][n - 1]


def serve_relay(queue, ready, tokens_file):
    known = {}

    def lookup(body):
        if body not in known:
            with open(tokens_file) as f:
                known.update(json.load(f))
        return known.get(body)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
            now = time.monotonic()
            info = lookup(body)
            stored = count_stored(info["maildir"]) if info else -1
            queue.put((now, body, stored))
            if info and info["hang"]:
                # Accepted and read, never answered: the thread sleeps until the relay ends.
                threading.Event().wait()
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self):
            # Whatever the relay read before this is in the queue before this marker.
            queue.put((time.monotonic(), self.path, -1))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    ready.put(server.server_address[1])
    server.serve_forever()


def count_stored(maildir):
    """The messages of a Maildir folder: what an IMAP client can see (new/ and cur/). Named
    once each: a message that moves from new/ to cur/ between the two listings is in both."""
    names = set()
    for sub in ("new", "cur"):
        try:
            names.update(n.split(":", 1)[0] for n in os.listdir(os.path.join(maildir, sub)))
        except FileNotFoundError:
            pass
    return len(names)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def render(example, subs):
    """An example file with values replaced; each must occur exactly as often as given."""
    with open(os.path.join(ROOT, "examples", example)) as f:
        text = f.read()
    return substitute(text, subs, f"examples/{example}")


def substitute(text, subs, what):
    for old, count, new in subs:
        if text.count(old) != count:
            die(f"{what} should contain `{old}` {count} time(s), not {text.count(old)}")
        text = text.replace(old, new)
    return text


def message(n, to):
    return (
        f"From: alice@example.net\r\nTo: {to}\r\nSubject: bench {n}\r\n"
        f"Message-ID: <{n}.{os.getpid()}.{time.time_ns()}@example.net>\r\n"
        f"Chat-Version: 1.0\r\n\r\nHello number {n}\r\n"
    ).encode()


def token(n):
    """A device token shaped like Delta Chat's: `openpgp:` and base64, 908 characters."""
    t = f"openpgp:wcFMA{n:05}QzPd+/" + "hQIMA8Kx0Rq3c2vJARAAl9+/Zq" * 35
    return t[:907] + "="


class Version:
    """The host's Dovecot 2.3, or Debian 13's 2.4 in its root under chroot."""

    def __init__(self, name):
        self.name = name
        self.chroot = name == "2.4"

    def command(self, program):
        """The command that runs `program`, named by its path on this version's system."""
        if not self.chroot:
            return [program]
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", CHROOT, "sh",
                TRIXIE_ROOT, program]

    def check(self):
        progs = ("/usr/sbin/dovecot", "/usr/bin/doveadm", "/usr/bin/sievec")
        if self.chroot:
            if not os.path.isfile(os.path.join(TRIXIE_ROOT, ".deltapush-mda-root")):
                die(f"no Debian 13 root at {TRIXIE_ROOT} for Dovecot 2.4: run `sudo .ci/setup`")
            if os.geteuid() != 0:
                die("Dovecot 2.4 runs under chroot in the Debian 13 root: run me as root "
                    "(or give --only 2.3)")
            progs = [TRIXIE_ROOT + p for p in progs]
        for p in progs:
            if not os.path.isfile(p):
                die(f"no {p}: run `sudo .ci/setup`")

    def config(self, d, uid, passwd, ports, tls, unprivileged, login_chroot):
        imap, imaps, lmtp = ports
        if self.name == "2.3":
            ssl = (f"ssl = yes\nssl_cert = <{tls}/server.crt\nssl_key = <{tls}/server.key\n"
                   if tls else "ssl = no\n")
            return (
                f"base_dir = {d}/run\nstate_dir = {d}/state\nlog_path = {d}/dovecot.log\n"
                f"protocols = imap lmtp\nlisten = 127.0.0.1\n{ssl}"
                "disable_plaintext_auth = no\nauth_mechanisms = plain login\n"
                f"first_valid_uid = {uid}\n"
                f"passdb {{\n  driver = passwd-file\n  args = {passwd}\n}}\n"
                f"userdb {{\n  driver = passwd-file\n  args = {passwd}\n}}\n"
                "mail_location = maildir:~/Maildir\n"
                # The process title says IDLE while a client idles: the getmail route waits on it.
                "verbose_proctitle = yes\n"
                "plugin {\n  sieve = file:~/sieve;active=~/.dovecot.sieve\n}\n"
                + unprivileged
                + f"service imap-login {{\n{login_chroot}"
                f"  inet_listener imap {{\n    address = 127.0.0.1\n    port = {imap}\n  }}\n"
                f"  inet_listener imaps {{\n    address = 127.0.0.1\n    port = {imaps}\n"
                "    ssl = yes\n  }\n}\n"
                f"service lmtp {{\n  inet_listener lmtp {{\n    address = 127.0.0.1\n"
                f"    port = {lmtp}\n  }}\n}}\n"
                f"!include_try {d}/conf.d/*.conf\n"
            )
        # The same in 2.4's words, as tests/common/dovecot.rs writes it. Its listeners take the
        # global `listen` for an address.
        ssl = (f"ssl = yes\nssl_server_cert_file = {tls}/server.crt\n"
               f"ssl_server_key_file = {tls}/server.key\n" if tls else "ssl = no\n")
        return (
            "dovecot_config_version = 2.4.1\ndovecot_storage_version = 2.4.1\n"
            f"base_dir = {d}/run\nstate_dir = {d}/state\nlog_path = {d}/dovecot.log\n"
            f"protocols = imap lmtp\nlisten = 127.0.0.1\n{ssl}"
            "auth_allow_cleartext = yes\nauth_mechanisms = plain login\n"
            f"first_valid_uid = {uid}\n"
            f"passdb passwd-file {{\n  passwd_file_path = {passwd}\n}}\n"
            f"userdb passwd-file {{\n  passwd_file_path = {passwd}\n}}\n"
            "mail_driver = maildir\nmail_path = ~/Maildir\n"
            "namespace inbox {\n  inbox = yes\n}\n"
            "verbose_proctitle = yes\n"
            "sieve_script personal {\n  driver = file\n  path = ~/sieve\n"
            "  active_path = ~/.dovecot.sieve\n}\n"
            + unprivileged
            + f"service imap-login {{\n{login_chroot}  inet_listener imap {{\n    port = {imap}\n  }}\n"
            f"  inet_listener imaps {{\n    port = {imaps}\n    ssl = yes\n  }}\n}}\n"
            f"service lmtp {{\n  inet_listener lmtp {{\n    port = {lmtp}\n  }}\n}}\n"
            f"!include_try {d}/conf.d/*.conf\n"
        )

    def sieve_only(self):
        """What the Sieve plugin costs by itself, for comparison: loaded, with no script to run."""
        if self.name == "2.3":
            return "protocol lmtp {\n  mail_plugins = $mail_plugins sieve\n}\n"
        return "protocol lmtp {\n  mail_plugins {\n    sieve = yes\n  }\n}\n"

    def fragment(self, script, exec_dir, lua):
        return render(
            f"dovecot/{self.name}/90-deltapush.conf",
            [(SCRIPT, 3, script), (EXEC_DIR, 3, exec_dir),
             (LUA, 2 if self.name == "2.3" else 3, lua)],
        )


class Dovecot:
    """One Dovecot with `users` (local parts), each with a home and ~/Maildir, and the conf.d
    files given. start() returns at once; ready() waits until it listens and has logged."""

    def __init__(self, version, work, name, users, conf_d, tls=None):
        self.version = version
        self.name = name
        self.dir = os.path.join(work, name)
        uid, gid, user_name, switch = mail_user()
        for sub in ("run", "state", "conf.d"):
            os.makedirs(os.path.join(self.dir, sub))
        for fname, text in conf_d:
            with open(os.path.join(self.dir, "conf.d", fname), "w") as f:
                f.write(text)
        self.homes = {}
        lines = []
        for u in users:
            home = os.path.join(self.dir, "home", u)
            os.makedirs(home)
            self.homes[u] = home
            lines.append(f"{u}@example.org:{{PLAIN}}pw-{u}:{uid}:{gid}::{home}::\n")
        chown_tree(os.path.join(self.dir, "home"), uid, gid)
        passwd = os.path.join(self.dir, "passwd")
        with open(passwd, "w") as f:
            f.writelines(lines)
        self.imap_port, self.lmtp_port = free_port(), free_port()
        # IMAP over TLS only where getmail needs it.
        self.imaps_port = free_port() if tls else 0
        unprivileged = login_chroot = ""
        if not switch:
            unprivileged = (
                f"default_internal_user = {user_name}\ndefault_login_user = {user_name}\n"
                "service anvil {\n  chroot =\n}\n"
                "service stats {\n  unix_listener stats-writer {\n    group =\n  }\n}\n"
                "service imap-hibernate {\n  unix_listener imap-hibernate {\n    group =\n  }\n}\n"
                "service dict {\n  unix_listener dict {\n    group =\n  }\n}\n"
                "service dict-async {\n  unix_listener dict-async {\n    group =\n  }\n}\n"
            )
            login_chroot = "  chroot =\n"
        self.conf = os.path.join(self.dir, "dovecot.conf")
        with open(self.conf, "w") as f:
            f.write(version.config(self.dir, uid, passwd,
                                   (self.imap_port, self.imaps_port, self.lmtp_port),
                                   tls, unprivileged, login_chroot))
        self.proc = subprocess.Popen(
            version.command("/usr/sbin/dovecot") + ["-F", "-c", self.conf],
            start_new_session=True, stdin=subprocess.DEVNULL,
        )
        self.dovecot_version = None

    def ready(self):
        deadline = time.monotonic() + 15
        for port in (self.imap_port, self.imaps_port, self.lmtp_port):
            while port:
                try:
                    socket.create_connection(("127.0.0.1", port)).close()
                    break
                except OSError:
                    if self.proc.poll() is not None or time.monotonic() > deadline:
                        die(f"{self.dir}: dovecot did not start: {self.log()}")
                    time.sleep(0.02)
        # The version asked for, and no other: its log's first line says which it is.
        while "\n" not in self.log() and time.monotonic() < deadline:
            time.sleep(0.02)
        m = re.search(r"Info: Dovecot v(\S+)", self.log().split("\n", 1)[0])
        if not m or not m.group(1).startswith(self.version.name + "."):
            die(f"{self.dir}: not Dovecot {self.version.name}: {self.log()}")
        self.dovecot_version = m.group(1)

    def tool(self, program, *args):
        out = subprocess.run(
            self.version.command(program) + ["-c", self.conf, *args],
            capture_output=True, text=True, stdin=subprocess.DEVNULL,
        )
        if out.returncode != 0 or out.stderr:
            die(f"{program} {' '.join(args)}: exit {out.returncode}: {out.stderr}")
        return out.stdout

    def set_token(self, user, value):
        self.tool("/usr/bin/doveadm", "mailbox", "metadata", "set", "-u", f"{user}@example.org",
                  "INBOX", "/private/devicetoken", value)

    def log(self):
        try:
            with open(os.path.join(self.dir, "dovecot.log")) as f:
                return f.read()
        except OSError:
            return ""

    def complaints(self):
        return [
            line
            for line in self.log().splitlines()
            if re.search(r"Error:|Warning:|Fatal:|Panic:|deltapush-mda", line)
        ]

    def stop(self):
        """The master stops its services itself; whatever is left of the group is killed."""
        stop_group(self.proc)

    def lmtp(self):
        return smtplib.LMTP("127.0.0.1", self.lmtp_port)

    def maildir(self, user):
        return os.path.join(self.homes[user], "Maildir")

    def stored(self, user):
        return count_stored(self.maildir(user))

    def deliver(self, conn, n, user):
        """One message over an open LMTP connection; returns the times of the end of its data
        and of the reply."""
        to = f"{user}@example.org"
        code, _ = conn.mail("alice@example.net")
        code2, _ = conn.rcpt(to)
        if (code, code2) != (250, 250):
            die(f"{self.name}: LMTP refused {to}: {code} {code2}")
        conn.putcmd("data")
        code, reply = conn.getreply()
        if code != 354:
            die(f"{self.name}: LMTP DATA for {to}: {code} {reply}")
        conn.send(message(n, to) + b".\r\n")
        end = time.monotonic()
        code, reply = conn.getreply()
        replied = time.monotonic()
        if code != 250:
            die(f"{self.name}: LMTP DATA for {to}: {code} {reply}")
        return end, replied

    def wait_idle(self, user, limit=20):
        """Waits until an IMAP session of `user` is in IDLE (from its process title)."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        title = f.read().decode(errors="replace")
                except OSError:
                    continue
                if f"[{user}@example.org " in title and " IDLE]" in title:
                    return
            time.sleep(0.01)
        die(f"no IMAP session of {user} went into IDLE within {limit} s")


def background(work):
    """The waiters and senders deltapush-mda left with a cache dir below `work`."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args = f.read().decode(errors="replace").split("\0")
            with open(f"/proc/{pid}/stat") as f:
                zombie = f.read().rsplit(")", 1)[1].split()[0] == "Z"
        except (OSError, IndexError):
            continue
        if zombie or not ({"--wait-stored", "--send-deferred"} & set(args)):
            continue
        if "--cache-dir" not in args:
            continue
        i = args.index("--cache-dir")
        if i + 1 < len(args) and args[i + 1].startswith(work + "/"):
            pids.append(int(pid))
    return pids


def wait_quiet(work, limit=15):
    """Waits until no waiter or sender of `work` runs: a case starts with none of the last."""
    deadline = time.monotonic() + limit
    while background(work):
        if time.monotonic() > deadline:
            die(f"waiters or senders still run {limit} s after the last delivery")
        time.sleep(0.01)


def kill_background(work):
    """Kills them (a relay that never answers keeps its sender for the whole --timeout)."""
    for pid in background(work):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def percentile(values, q):
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q * (len(v) - 1))))]


def fmt_ms(seconds):
    return f"{seconds * 1000:.1f} ms"


def rate(dovecot, users, per_conn, conns):
    """Deliveries per second: `per_conn` messages on each of `conns` connections at once, each
    connection a process delivering to a user of its own (users[k]); checks that every one was
    stored. Returns the rate and the counts before."""
    users = users[:conns]
    before = {u: dovecot.stored(u) for u in users}
    barrier = MP.Barrier(conns + 1)

    def worker(k):
        conn = dovecot.lmtp()
        barrier.wait(30)
        for i in range(per_conn):
            dovecot.deliver(conn, i, users[k])
        conn.quit()

    procs = [MP.Process(target=worker, args=(k,)) for k in range(conns)]
    for p in procs:
        p.start()
    barrier.wait(30)
    start = time.monotonic()
    for p in procs:
        p.join()
    took = time.monotonic() - start
    failed = [p.exitcode for p in procs if p.exitcode != 0]
    if failed:
        die(f"{dovecot.name}: a delivering process failed (exit {failed[0]})")
    for u in users:
        if dovecot.stored(u) - before[u] != per_conn:
            die(f"{dovecot.name}: {dovecot.stored(u) - before[u]} of {per_conn} messages stored")
    return per_conn * conns / took, before, start


def time_runs(cmd, stdin, home, n):
    """The run times of `cmd` (stdin given, output dropped), after one to warm up."""
    times = []
    env = {"PATH": "/usr/bin:/bin", "HOME": home}
    for i in range(n + 1):
        start = time.monotonic()
        subprocess.run(cmd, input=stdin, env=env, stdout=subprocess.DEVNULL, check=True)
        times.append(time.monotonic() - start)
    return times[1:]


def prewarm(dovecot, users):
    """One message to each of `users`, over 4 connections: a first delivery also creates the
    Maildir and its index, which is not what is measured."""
    def worker(part):
        conn = dovecot.lmtp()
        for u in part:
            dovecot.deliver(conn, 0, u)
        conn.quit()

    threads = [threading.Thread(target=worker, args=(users[k::4],)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    missing = [u for u in users if dovecot.stored(u) != 1]
    if missing:
        die(f"{dovecot.name}: the first message did not reach {len(missing)} users")


class Order:
    """Counts the POSTs that the relay read before their message was in the Maildir."""

    def __init__(self):
        self.posts = 0
        self.early = []

    def check(self, what, post, want):
        """`post` must have seen at least `want` messages in its user's Maildir."""
        self.posts += 1
        if post[2] < want:
            self.early.append(f"{what}: the relay read the POST with {post[2]} messages "
                              f"in the Maildir, expected {want}")


def bench_version(version, binary, work, relay, order, quick, n0):
    """Every measurement on one version; returns its results. `n0` numbers its tokens."""
    samples, hung_samples, idle_samples, per_conn, rounds = (
        (10, 3, 0, 20, 1) if quick else (30, 5, 10, 60, 7))
    uid, gid, _, switch = mail_user()
    work = os.path.join(work, version.name)
    os.makedirs(work)
    os.chmod(work, 0o755)
    res = {"samples": samples, "per_conn": per_conn, "rounds": rounds}
    servers = []
    getmail = None
    try:
        ca = make_ca(os.path.join(work, "ca"))
        bin_dir = os.path.join(work, "bin")
        os.makedirs(bin_dir)
        bin_copy = os.path.join(bin_dir, "deltapush-mda")
        shutil.copy(binary, bin_copy)
        os.chmod(bin_copy, 0o755)
        exec_dir = os.path.join(work, "sieve-execute")
        os.makedirs(exec_dir)
        os.symlink(bin_copy, os.path.join(exec_dir, "deltapush-mda"))
        # For comparison, what Dovecot's execute costs by itself: the same script running, in
        # place of deltapush-mda, a program that only reads the message.
        drain = os.path.join(bin_dir, "drain")
        with open(drain, "w") as f:
            f.write("#!/bin/sh\nexec cat >/dev/null\n")
        os.chmod(drain, 0o755)
        os.symlink(drain, os.path.join(exec_dir, "drain"))
        lua = os.path.join(work, "deltapush.lua")
        shutil.copy(os.path.join(ROOT, "examples/dovecot/deltapush.lua"), lua)
        os.chmod(lua, 0o644)
        sieve_dir = os.path.join(work, "sieve")
        os.makedirs(sieve_dir)
        shipped = render("dovecot/deltapush.sieve", [(RELAY, 1, relay.url)])
        scripts = {
            "deltapush": shipped,
            # Every delivery posts, even to one user: the interval off.
            "every": substitute(shipped, [('"--remember", "--hold"', 1,
                                           '"--interval", "0", "--remember", "--hold"')],
                                "examples/dovecot/deltapush.sieve"),
        }
        text, n = re.subn(r'"deltapush-mda" \[[^]]*\]', '"drain"', shipped)
        if n != 1:
            die("examples/dovecot/deltapush.sieve: the execute line is not where it was")
        scripts["drain"] = text
        paths = {}
        for name, text in scripts.items():
            paths[name] = os.path.join(sieve_dir, f"{name}.sieve")
            with open(paths[name], "w") as f:
                f.write(text)

        plain = [f"p{k}" for k in range(max(CONNS))]
        posting = [f"t{i}" for i in range(samples)]
        hung = [f"h{i}" for i in range(hung_samples)]
        every = [f"e{k}" for k in range(max(CONNS))]
        frag = lambda s: [("90-deltapush.conf", version.fragment(paths[s], exec_dir, lua))]
        stock = Dovecot(version, work, "stock", plain, [])
        servers.append(stock)
        sieve_only = Dovecot(version, work, "sieve", plain,
                             [("90-sieve-only.conf", version.sieve_only())])
        servers.append(sieve_only)
        dc = Dovecot(version, work, "deltapush", plain + posting + hung + ["idle"],
                     frag("deltapush"), tls=ca)
        servers.append(dc)
        ev = Dovecot(version, work, "every", every, frag("every"))
        servers.append(ev)
        drainer = Dovecot(version, work, "drain", plain, frag("drain"))
        servers.append(drainer)
        for s in servers:
            s.ready()
        res["dovecot"] = dc.dovecot_version
        # The README's compile step; without it Dovecot logs an error for every delivery.
        for server, script in ((dc, "deltapush"), (ev, "every"), (drainer, "drain")):
            server.tool("/usr/bin/sievec", paths[script])
        # Not "idle": getmail would fetch its first message as soon as it starts.
        for s in servers:
            prewarm(s, [u for u in s.homes if u != "idle"])

        # A token each, so that the relay knows whose Maildir to look at.
        tokens = {}
        jobs = []
        for server, users, hang in ((dc, posting, False), (dc, hung, True), (ev, every, False)):
            for u in users:
                n0 += 1
                tokens[u] = token(n0)
                relay.add(tokens[u], server.maildir(u), hang)
                jobs.append((server, u, tokens[u]))
        n0 += 1
        tokens["idle"] = token(n0)
        relay.add(tokens["idle"], dc.maildir("idle"))
        relay.write_tokens()
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            for f in [pool.submit(s.set_token, u, t) for s, u, t in jobs]:
                f.result()
        # The program runs for these too, `cat` in its place: any token will do.
        drainer.tool("/usr/bin/doveadm", "mailbox", "metadata", "set", "-u", "p*@example.org",
                     "INBOX", "/private/devicetoken", token(0))

        # Delivery to POST, as shipped: each the first message of its interval (a user each).
        # In turns with a delivery to a user without a token, to the stock server, and to the
        # server with `cat` in the program's place.
        lat, reply = [], {k: [] for k in ("posts", "no token", "stock", "cat")}
        conns = {k: s.lmtp() for k, s in (("dc", dc), ("stock", stock), ("cat", drainer))}
        for i, u in enumerate(posting):
            before = dc.stored(u)
            end, replied = dc.deliver(conns["dc"], i, u)
            reply["posts"].append(replied - end)
            post = relay.wait_for(tokens[u], 1)
            lat.append(post[0] - end)
            order.check(f"{version.name} {u}", post, before + 1)
            # The others with nothing of this one left running.
            wait_quiet(work)
            for key, server in (("no token", dc), ("stock", stock), ("cat", drainer)):
                end, replied = server.deliver(conns["dc" if server is dc else key], i, "p0")
                reply[key].append(replied - end)
        for c in conns.values():
            c.quit()
        res["lat"], res["reply"] = lat, reply
        wait_quiet(work)

        rows = [
            ("stock Dovecot (no fragment)", stock, plain),
            ("Sieve plugin for LMTP, no script at all", sieve_only, plain),
            ("this setup, user without a token", dc, plain),
            ("this setup, every delivery posts (`--interval 0`)", ev, every),
            ("this setup with `cat >/dev/null` in the program's place", drainer, plain),
        ]
        rates = {name: {c: [] for c in CONNS} for name, _, _ in rows}
        every_posts, every_deliveries = {c: 0 for c in CONNS}, {c: 0 for c in CONNS}
        for _ in range(rounds):
            for name, server, users in rows:
                for c in CONNS:
                    r, before, start = rate(server, users, per_conn, c)
                    rates[name][c].append(r)
                    # The last message woke the phone once it was stored; no POST came
                    # before its message: the j-th POST of a user (one connection's, one
                    # message after the other) saw j messages more. A release that finds the
                    # token's sender about to post joins that POST, so a burst may take fewer
                    # POSTs than messages, never a POST before a message stored.
                    waking = [u for u in users[:c] if u in tokens]
                    for u in waking:
                        relay.wait_seen(tokens[u], before[u] + per_conn)
                    wait_quiet(work)
                    relay.sync()
                    for u in waking:
                        new = sorted(p for p in relay.of(tokens[u]) if p[0] >= start)
                        for j, post in enumerate(new, 1):
                            order.check(f"{version.name} {u}", post, before[u] + j)
                        every_posts[c] += len(new)
                        every_deliveries[c] += per_conn
        res["rates"] = rates
        res["every"] = (every_posts, every_deliveries)

        # A relay that accepts the POST and never answers.
        hung_reply = []
        conn = dc.lmtp()
        for i, u in enumerate(hung):
            before = dc.stored(u)
            end, replied = dc.deliver(conn, i, u)
            hung_reply.append(replied - end)
            order.check(f"{version.name} {u}", relay.wait_for(tokens[u], 1), before + 1)
        conn.quit()
        res["hung"] = hung_reply

        # The getmail route, as the unit runs it, for the user "idle" (no token on the server).
        idle_lat = []
        if idle_samples:
            home = dc.homes["idle"]
            os.makedirs(os.path.join(home, ".config/getmail"))
            os.makedirs(os.path.join(home, ".config/deltapush-mda"))
            with open(os.path.join(home, ".config/deltapush-mda/tokens"), "w") as f:
                f.write(tokens["idle"] + "\n")
            rc = render(
                "getmail/getmailrc",
                [
                    ("server = imap.example.org", 1, "server = localhost"),
                    ("port = 993", 1, f"port = {dc.imaps_port}"),
                    ("username = me@example.org", 1, "username = idle@example.org"),
                    ("password = secret", 1, "password = pw-idle"),
                    ("ca_certs = /etc/ssl/certs/ca-certificates.crt", 1, f"ca_certs = {ca}/ca.crt"),
                    ("path = /usr/bin/deltapush-mda", 1, f"path = {bin_copy}"),
                ],
            )
            with open(os.path.join(home, ".config/getmail/deltapush"), "w") as f:
                f.write(rc)
            os.chmod(os.path.join(home, ".config/deltapush-mda/tokens"), 0o600)
            chown_tree(home, uid, gid)
            env = {
                "PATH": "/usr/local/bin:/usr/bin:/bin",
                "HOME": home,
                "DELTAPUSH_URL": relay.url,
                # Every message posts, as the first of an interval does.
                "DELTAPUSH_INTERVAL": "0",
            }
            with open(os.path.join(ROOT, "examples/getmail/deltapush@.service")) as f:
                unit = f.read()
            command = re.search(r"^ExecStart=(.*)$", unit, re.M).group(1).replace("%i", "deltapush")
            getmail = subprocess.Popen(
                command.split(),
                env=env, cwd=home, start_new_session=True, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "getmail.err"), "w"),
                user=uid if switch else None, group=gid if switch else None,
            )
            for i in range(idle_samples):
                dc.wait_idle("idle")
                before = dc.stored("idle")
                conn = dc.lmtp()
                end, _ = dc.deliver(conn, 1000 + i, "idle")
                conn.quit()
                post = relay.wait_for(tokens["idle"], i + 1)
                idle_lat.append(post[0] - end)
                order.check(f"{version.name} idle", post, before + 1)
            if getmail.poll() is not None:
                die("getmail --idle ended: " + open(os.path.join(work, "getmail.err")).read())
        res["idle"] = idle_lat

        # The program by itself, outside Dovecot: the same message on standard input, a cache
        # dir of its own, the relay never asked (each run's waiter ends when the next one
        # replaces its record; the last is killed with the rest).
        alone_home = os.path.join(work, "alone")
        os.makedirs(alone_home)
        msg = message(0, "p0@example.org")
        hold = [bin_copy, "--url", relay.url, "--remember", "--hold", "--", token(0)]
        res["alone"] = {name: time_runs(cmd, msg, alone_home, samples)
                        for name, cmd in (("hold", hold), ("cat", [drain]),
                                          ("true", ["/bin/true"]))}

        # Exactly the posts expected, and nothing in the logs.
        relay.sync()
        want = samples + hung_samples + sum(every_posts.values()) + idle_samples
        got = sum(relay.count(t) for t in tokens.values())
        if got != want:
            die(f"{version.name}: the relay got {got} posts, expected {want}")
        res["complaints"] = [f"{s.name}: {line}" for s in (dc, ev) for line in s.complaints()]
        res["posts"] = got
        return res, n0
    except BaseException:
        for s in servers:
            for line in s.complaints()[:20]:
                print(f"  {s.dir}: {line}", file=sys.stderr)
        raise
    finally:
        if getmail is not None and getmail.poll() is None:
            os.killpg(getmail.pid, signal.SIGTERM)
            getmail.wait()
        for s in servers:
            s.stop()
        kill_background(work)


def loadavg():
    with open("/proc/loadavg") as f:
        return f.read().split()[0]


def machine():
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    nproc = len(os.sched_getaffinity(0))
    return f"{cpu}, `nproc` {nproc}, Linux {os.uname().release}"


def report(results, quick, took, order, failures):
    med = statistics.median

    def stat_row(name, values, note=""):
        return (
            f"| {name} | {fmt_ms(statistics.median(values))} | {fmt_ms(percentile(values, 0.9))} "
            f"| {fmt_ms(min(values))} | {fmt_ms(max(values))} | {len(values)} |{note}"
        )

    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    cmd = f"bash bench/dovecot.sh{' --quick' if quick else ''}"
    out = [
        "# Instant push on your own Dovecot: measurements",
        "",
        f"Generated by `{cmd}` on {when}, in {took:.0f} s: the files of `examples/dovecot/` as",
        "shipped (paths and the relay URL changed) on "
        + " and on ".join({"2.3": "the host's Dovecot 2.3",
                           "2.4": "Debian 13's 2.4 (the root `.ci/setup` makes, under chroot)"}[v]
                          for v in results) + ",",
        "a release build, a stand-in relay on 127.0.0.1 and a local LMTP client in place of the",
        "mail server. The bench starts and stops each server; every mailbox has had a message",
        "before. Each case is checked: every message stored, exactly the posts expected, nothing",
        "in Dovecot's log.",
        "",
        f"Machine: {machine()}.",
        "",
        f"**POSTs before their message was in the Maildir: {len(order.early)} of {order.posts}**"
        " (the relay lists the user's `new/` and `cur/` as soon as it has read a POST).",
        "",
    ]
    for name, res in results.items():
        r = res["reply"]
        gap = statistics.median(r["posts"]) - statistics.median(r["no token"])
        out += [
            f"## Dovecot {res['dovecot']}" + (" (Debian 13, under chroot)" if name == "2.4"
                                              else " (the host, Debian 12)"),
            "",
            f"Load average (1 min) {res['load'][0]} before, {res['load'][1]} after (the bench's "
            "own processes count in it; other work on a shared machine falls on every case "
            "alike, as they take turns).",
            "",
            "| | median | 90th percentile | min | max | samples |",
            "|---|---|---|---|---|---|",
            stat_row("delivery → POST (end of the LMTP DATA → the relay has read it), "
                     "each the first message of its interval", res["lat"]),
        ]
        if res["idle"]:
            out.append(stat_row("delivery → POST through getmail `--idle` (examples/getmail), "
                                "for comparison", res["idle"]))
        out += [
            stat_row("LMTP reply (end of DATA → 250), stock Dovecot (no fragment)", r["stock"]),
            stat_row("LMTP reply, this setup, user without a token", r["no token"]),
            stat_row("LMTP reply, this setup, a delivery that posts", r["posts"]),
            stat_row("LMTP reply, this setup with `cat >/dev/null` in the program's place",
                     r["cat"]),
            stat_row("LMTP reply, a relay that accepts and never answers", res["hung"]),
            stat_row("by itself, outside Dovecot: `deltapush-mda --remember --hold` of the "
                     "same message", res["alone"]["hold"]),
            stat_row("by itself: the `cat >/dev/null` script", res["alone"]["cat"]),
            stat_row("by itself: `/bin/true`", res["alone"]["true"]),
            "",
            f"A delivery that posts replies {fmt_ms(gap)} after one that does not (medians; "
            f"target: within {fmt_ms(REPLY_TARGET)}: "
            f"{'met' if gap <= REPLY_TARGET else '**missed**'}). A relay that never answers: "
            f"{fmt_ms(max(res['hung']))} at most (target: under {HUNG_LIMIT:.0f} s: "
            f"{'met' if max(res['hung']) < HUNG_LIMIT else '**missed**'}).",
            "",
            "Where the time goes (medians): Dovecot waits for the program to end before it "
            "stores the message. Running any program at all, the `cat` script in its place, "
            f"costs {fmt_ms(med(r['cat']) - med(r['no token']))} over no program; deltapush-mda "
            f"in its place {fmt_ms(med(r['posts']) - med(r['cat']))} more than `cat`. Outside "
            "Dovecot its `--hold` run (it reads the message, decides, writes the token's state "
            "and the held record, and starts the waiter) takes "
            f"{fmt_ms(med(res['alone']['hold']) - med(res['alone']['cat']))} more than the "
            "`cat` script; inside, the waiter starting competes with Dovecot for the same CPUs.",
            "",
            f"LMTP deliveries per second: a small message, {res['per_conn']} one after the other "
            "on each connection, each connection a client process with a user of its own; the "
            f"median of {res['rounds']} round(s) in which the servers take turns. In brackets: "
            "the median share of the stock rate of the same round.",
            "",
            "| server | 1 connection | 4 connections at once |",
            "|---|---|---|",
        ]
        stock = next(iter(res["rates"].values()))
        for row, per in res["rates"].items():
            cells = []
            for c in CONNS:
                ratio = statistics.median(x / y for x, y in zip(per[c], stock[c]))
                cells.append(f"{statistics.median(per[c]):.0f} ({ratio:.2f}×)")
            out.append(f"| {row} | {' | '.join(cells)} |")
        posts, deliveries = res["every"]
        out += [
            "",
            "With `--interval 0` the relay got "
            + " and ".join(f"{posts[c]} POSTs for {deliveries[c]} deliveries over {c} "
                           f"connection{'s' if c > 1 else ''}" for c in CONNS)
            + ": a wakeup released while the token's sender is about to post joins that POST"
            " (every one after its message was stored, the last after the last message).",
        ]
        out.append("")
    out += [
        "\"Sieve plugin, no script\" and \"`cat` in the program's place\" are not setups to use:",
        "they show where the cost comes from (Sieve itself; the metadata lookup, Lua and Dovecot",
        "starting a program for each delivery to a user with a token).",
    ]
    if quick:
        out += ["", "A quick run (`--quick`): few samples, no getmail comparison."]
    if failures:
        out += ["", "**Failed:**", ""] + [f"- {f}" for f in failures]
    return "\n".join(out) + "\n"


def main():
    args = sys.argv[1:]
    quick = "--quick" in args
    args = [a for a in args if a != "--quick"]
    versions = ["2.3", "2.4"]
    if "--only" in args:
        i = args.index("--only")
        versions = args[i + 1:i + 2]
        del args[i:i + 2]
        if versions not in (["2.3"], ["2.4"]):
            die("--only takes 2.3 or 2.4")
    if len(args) != 2:
        die("usage: dovecot.py BINARY OUT.md [--quick] [--only 2.3|2.4]")
    binary, out = args
    versions = [Version(v) for v in versions]
    for v in versions:
        v.check()
    for tool in ["openssl"] + ([] if quick else ["getmail"]):
        if not shutil.which(tool):
            die(f"{tool} is missing: run .ci/setup")

    started = time.monotonic()
    # Below /tmp: the Debian 13 root sees the host's /tmp, and nothing else of it.
    work = tempfile.mkdtemp(prefix="deltapush-bench-dovecot-", dir="/tmp")
    os.chmod(work, 0o755)
    relay = None
    order = Order()
    results = {}
    try:
        relay = Relay(os.path.join(work, "relay-tokens.json"))
        n0 = 0
        for v in versions:
            print(f"bench/dovecot.py: Dovecot {v.name} ...", file=sys.stderr)
            load = loadavg()
            results[v.name], n0 = bench_version(v, binary, work, relay, order, quick, n0)
            results[v.name]["load"] = (load, loadavg())
    finally:
        if relay is not None:
            relay.stop()
        kill_background(work)
        shutil.rmtree(work, ignore_errors=True)

    failures = list(order.early)
    for name, res in results.items():
        failures += [f"{name}: the Dovecot log: {line}" for line in res["complaints"]]
        slow = [h for h in res["hung"] if h >= HUNG_LIMIT]
        if slow:
            failures.append(f"{name}: with a relay that never answers, a delivery waited "
                            f"{fmt_ms(max(slow))} for its LMTP reply")
    text = report(results, quick, time.monotonic() - started, order, failures)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        f.write(text)
    print(f"bench/dovecot.py: wrote {out} ({time.monotonic() - started:.0f} s)", file=sys.stderr)
    for name, res in results.items():
        r = res["reply"]
        print(f"  {name}: delivery→POST median {fmt_ms(statistics.median(res['lat']))}, "
              f"LMTP reply posts {fmt_ms(statistics.median(r['posts']))} / no token "
              f"{fmt_ms(statistics.median(r['no token']))} / stock "
              f"{fmt_ms(statistics.median(r['stock']))}, hung relay max "
              f"{fmt_ms(max(res['hung']))}", file=sys.stderr)
    if failures:
        die("failed:\n  " + "\n  ".join(failures))


if __name__ == "__main__":
    main()
