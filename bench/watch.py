#!/usr/bin/env python3
"""`deltapush-mda --watch` against getmail `--idle` (issue 17, "Measure"), side by side in one run
on one Dovecot 2.3 of its own (IMAP over TLS on 127.0.0.1, a CA made for the run), each with an
account and a stand-in relay of its own. Run through bench/watch.sh.

- The watcher: `deltapush-mda --watch imaps://w%40example.org@127.0.0.1:PORT --interval 0`.
- getmail: examples/getmail/getmailrc and the ExecStart of examples/getmail/deltapush@.service
  (`getmail --rcfile deltapush --idle INBOX`), with deltapush-mda as its MDA, `--interval 0`.

Mail lands as an MTA delivers it: written into tmp/, renamed into new/, the same message to both
accounts at once (which of the two renames comes first alternates). Chat mail (Chat-Version), an
automatic message (Auto-Submitted: auto-replied) right before a chat message, pairs, bursts.

Measured, per contender:
  - delivery → POST, from the rename into new/ to the relay having read the POST. getmail runs
    deltapush-mda once per message, so its k-th POST is the k-th chat message's; the watcher
    wakes once per fetch, so a POST counts for every chat message that landed before it since
    the previous POST. A message without a POST within 3 s of landing is missed;
  - CPU seconds (utime+stime, and the children's: getmail's MDA runs) from /proc/PID/stat, and
    peak RSS (VmHWM, reset through clear_refs at the start of each period), over an idle period
    and over a stream of messages;
  - wakeups while idle: the seconds in which each contender ran at all (voluntary context
    switches, sampled), and, for the watcher, every poll(2) it returned from (strace): by
    timeout (its own wakeups) or because the server said something.

usage: watch.py BINARY OUT.md [--quick]
"""

import multiprocessing
import os
import pwd
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from common import chown_tree, mail_user, make_ca, stop_group

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MP = multiprocessing.get_context("fork")

# A message without a POST this long after it landed is missed (the measure).
MISS = 3.0
# The targets: Dovecot's IDLE notification delay (0.5 s) plus 20 ms; 8 MiB idle.
LATENCY_TARGET = 0.520
RSS_TARGET_KIB = 8 * 1024
OWN_WAKEUP_EVERY = 60.0

FULL = {
    "idle": 600,
    "singles": 10,
    # chat, then chat this many ms later
    # (finely around 0.5 s, getmail's window: Dovecot's notification delay and its own pass)
    "pairs": [30, 50, 100, 200, 300, 400, 480, 500, 510, 520, 530, 540, 550, 560, 600, 700,
              800, 1000],
    # automatic, then chat this many ms later
    "after_auto": [0, 30, 100, 200, 300, 400, 450, 480, 500, 510, 520, 530, 540, 550, 560, 580,
                   600, 650, 700, 800, 1000],
    "bursts": [3, 5, 10, 20],
    "stream": 1000,
    "rate": 5.0,
}
QUICK = {
    "idle": 30,
    "singles": 3,
    "pairs": [30, 300, 540, 1000],
    "after_auto": [0, 500, 540, 600],
    "bursts": [5, 10],
    "stream": 100,
    "rate": 10.0,
}
# Messages of a burst land this far apart (an MTA delivering a queue run).
BURST_GAP = 0.005


def die(msg):
    print(f"bench/watch.py: {msg}", file=sys.stderr)
    sys.exit(1)


def say(msg):
    print(f"bench/watch.py: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# The stand-in relay: a process of its own (no interpreter lock shared with the deliveries),
# answering 200 and noting when it had read each POST (CLOCK_MONOTONIC, the same in every
# process).


def serve_relay(queue, ready, token):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            now = time.monotonic()
            queue.put((now, self.path == "/notify" and body.decode(errors="replace") == token))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    ready.put(server.server_address[1])
    server.serve_forever()


class Relay:
    def __init__(self, token):
        queue, ready = MP.Queue(), MP.Queue()
        self.proc = MP.Process(target=serve_relay, args=(queue, ready, token), daemon=True)
        self.proc.start()
        self.url = f"http://127.0.0.1:{ready.get(timeout=10)}/notify"
        self.lock = threading.Lock()
        self.times = []
        self.bad = 0
        threading.Thread(target=self.collect, args=(queue,), daemon=True).start()

    def collect(self, queue):
        while True:
            t, good = queue.get()
            with self.lock:
                if good:
                    self.times.append(t)
                else:
                    self.bad += 1

    def posts(self):
        with self.lock:
            return list(self.times)

    def stop(self):
        if self.proc.is_alive():
            self.proc.terminate()
        self.proc.join()


# ---------------------------------------------------------------------------------------------
# Dovecot, the CA, the accounts.


def free_ports(n):
    """n distinct free ports of 127.0.0.1, all held until all are picked."""
    import socket

    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Dovecot:
    """The host's Dovecot 2.3: IMAP over TLS only, on a free port of 127.0.0.1, one account per
    user with its home and ~/Maildir."""

    def __init__(self, work, users, ca):
        self.dir = os.path.join(work, "dovecot")
        uid, gid, name, switch = mail_user()
        for sub in ("run", "state"):
            os.makedirs(os.path.join(self.dir, sub))
        self.homes = {}
        lines = []
        for u in users:
            home = os.path.join(work, "home", u)
            for sub in ("cur", "new", "tmp"):
                os.makedirs(os.path.join(home, "Maildir", sub))
            self.homes[u] = home
            lines.append(f"{u}@example.org:{{PLAIN}}pw-{u}:{uid}:{gid}::{home}::\n")
        chown_tree(os.path.join(work, "home"), uid, gid)
        passwd = os.path.join(self.dir, "passwd")
        with open(passwd, "w") as f:
            f.writelines(lines)
        (self.port,) = free_ports(1)
        unprivileged = login_chroot = ""
        if not switch:
            unprivileged = (
                f"default_internal_user = {name}\ndefault_login_user = {name}\n"
                "service anvil {\n  chroot =\n}\n"
                "service stats {\n  unix_listener stats-writer {\n    group =\n  }\n}\n"
                "service imap-hibernate {\n  unix_listener imap-hibernate {\n    group =\n  }\n}\n"
                "service dict {\n  unix_listener dict {\n    group =\n  }\n}\n"
                "service dict-async {\n  unix_listener dict-async {\n    group =\n  }\n}\n"
            )
            login_chroot = "  chroot =\n"
        d = self.dir
        self.conf = os.path.join(d, "dovecot.conf")
        with open(self.conf, "w") as f:
            f.write(
                f"base_dir = {d}/run\nstate_dir = {d}/state\nlog_path = {d}/dovecot.log\n"
                "protocols = imap\nlisten = 127.0.0.1\n"
                f"ssl = required\nssl_cert = <{ca}/server.crt\nssl_key = <{ca}/server.key\n"
                "auth_mechanisms = plain login\n"
                f"first_valid_uid = {uid}\n"
                f"passdb {{\n  driver = passwd-file\n  args = {passwd}\n}}\n"
                f"userdb {{\n  driver = passwd-file\n  args = {passwd}\n}}\n"
                "mail_location = maildir:~/Maildir\n"
                # The process title says IDLE while a client idles: the bench waits on it.
                "verbose_proctitle = yes\n"
                + unprivileged
                + f"service imap-login {{\n{login_chroot}"
                "  inet_listener imap {\n    address = 127.0.0.1\n    port = 0\n  }\n"
                f"  inet_listener imaps {{\n    address = 127.0.0.1\n    port = {self.port}\n"
                "    ssl = yes\n  }\n}\n"
            )
        self.proc = subprocess.Popen(["/usr/sbin/dovecot", "-F", "-c", self.conf],
                                     start_new_session=True, stdin=subprocess.DEVNULL)
        import socket

        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port)).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    die(f"dovecot did not start: {self.log()}")
                time.sleep(0.02)
        while "\n" not in self.log() and time.monotonic() < deadline:
            time.sleep(0.02)
        m = re.search(r"Info: Dovecot v(\S+)", self.log())
        self.version = m.group(1) if m else "unknown"
        self.seq = 0
        self.uid, self.gid = uid, gid

    def log(self):
        try:
            with open(os.path.join(self.dir, "dovecot.log")) as f:
                return f.read()
        except OSError:
            return ""

    def complaints(self):
        return [l for l in self.log().splitlines() if re.search(r"Error:|Warning:|Fatal:|Panic:", l)]

    def stop(self):
        stop_group(self.proc)

    def maildir(self, user):
        return os.path.join(self.homes[user], "Maildir")

    def write(self, user, data):
        """Writes a message into the user's tmp/ (as an MTA does first); returns both paths."""
        self.seq += 1
        now = time.time()
        name = f"{int(now)}.M{int(now * 1e6) % 1000000}P{os.getpid()}Q{self.seq}.bench"
        tmp = os.path.join(self.maildir(user), "tmp", name)
        with open(tmp, "wb") as f:
            f.write(data)
        os.chown(tmp, self.uid, self.gid)
        return tmp, os.path.join(self.maildir(user), "new", name)

    def sessions(self):
        """The process titles of the IMAP sessions of this server, by user."""
        master = str(self.proc.pid)
        out = {}
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    title = f.read().decode(errors="replace")
                if not title.startswith("dovecot/imap "):
                    continue
                with open(f"/proc/{pid}/stat") as f:
                    ppid = f.read().rsplit(")", 1)[1].split()[1]
            except (OSError, IndexError):
                continue
            if ppid != master:
                continue
            m = re.search(r"\[(\S+)@example\.org ", title)
            if m:
                out[m.group(1)] = title
        return out

    def wait_idle(self, users, limit=20, why=lambda: ""):
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            titles = self.sessions()
            if all(" IDLE]" in titles.get(u, "") for u in users):
                return
            time.sleep(0.005)
        die(f"not every one of {users} idles within {limit} s: {self.sessions()} {why()}")


def message(n, to, auto=False):
    date = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime())
    if auto:
        return (
            f"From: mailer-daemon@example.net\r\nTo: {to}\r\nSubject: Out of office {n}\r\n"
            f"Message-ID: <auto{n}.{os.getpid()}@example.net>\r\nDate: {date}\r\n"
            "Auto-Submitted: auto-replied\r\n\r\nI am away.\r\n"
        ).encode()
    return (
        f"From: alice@example.net\r\nTo: {to}\r\nSubject: [...]\r\n"
        f"Message-ID: <Mr.{n}.{os.getpid()}@example.net>\r\nDate: {date}\r\n"
        "Chat-Version: 1.0\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"\r\nHello number {n}\r\n"
    ).encode()


def token(n):
    """A device token shaped like Delta Chat's: `openpgp:` and base64."""
    t = f"openpgp:wcFMA{n:05}QzPd+/" + "hQIMA8Kx0Rq3c2vJARAAl9+/Zq" * 35
    return t[:907] + "="


def render(example, subs):
    with open(os.path.join(ROOT, "examples", example)) as f:
        text = f.read()
    for old, count, new in subs:
        if text.count(old) != count:
            die(f"examples/{example} should contain `{old}` {count} time(s), not {text.count(old)}")
        text = text.replace(old, new)
    return text


# ---------------------------------------------------------------------------------------------
# What a process costs, from /proc.

TICK = os.sysconf("SC_CLK_TCK")


def cpu(pid):
    """utime+stime and the waited-for children's, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / TICK


def status(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key] = value.split()[0] if value.split() else ""
    return out


def switches(pid):
    """Voluntary and involuntary context switches, over all threads."""
    vol = invol = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            s = status(f"{pid}/task/{tid}")
        except OSError:
            continue
        vol += int(s["voluntary_ctxt_switches"])
        invol += int(s["nonvoluntary_ctxt_switches"])
    return vol, invol


def reset_peak(pid):
    """Starts VmHWM over (clear_refs 5, Linux 4.0 and later)."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


class Sampler:
    """The seconds in which each process ran (its voluntary context switches grew), sampled
    every 0.25 s without touching the process."""

    def __init__(self, pids):
        self.pids = pids
        self.runs = {k: [] for k in pids}
        self.stop_flag = threading.Event()
        self.start = time.monotonic()
        self.last = {k: switches(p)[0] for k, p in pids.items()}
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def loop(self):
        while not self.stop_flag.wait(0.25):
            for k, p in self.pids.items():
                try:
                    v = switches(p)[0]
                except OSError:
                    continue
                if v != self.last[k]:
                    t = time.monotonic() - self.start
                    # One wakeup episode: the first sample of a run of samples that grew.
                    if not self.runs[k] or t - self.runs[k][-1][1] > 2.0:
                        self.runs[k].append([t, t])
                    else:
                        self.runs[k][-1][1] = t
                    self.last[k] = v

    def stop(self):
        self.stop_flag.set()
        self.thread.join()
        return {k: [round(a) for a, _ in v] for k, v in self.runs.items()}


def parse_strace(path, t0):
    """The watcher's returns from poll(2) while traced (`strace -tt -T`): (seconds from the
    wall-clock time t0 to the return, result)."""
    out = []
    lt = time.localtime(t0)
    first = lt.tm_hour * 3600 + lt.tm_min * 60 + lt.tm_sec + (t0 % 1)
    try:
        lines = open(path).read().splitlines()
    except OSError:
        return None
    for line in lines:
        m = re.match(r"(?:\d+\s+)?(\d+):(\d+):(\d+\.\d+) (.*)$", line)
        if not m:
            continue
        t = int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))
        rest = m.group(4)
        if re.match(r"(poll|ppoll|restart_syscall|<\.\.\. (poll|ppoll|restart_syscall) resumed>)", rest):
            r = re.search(r"\)\s+= (-?\d+|\?)", rest)
            took = re.search(r"<(\d+\.\d+)>$", rest)
            if r and r.group(1) != "?":
                out.append(((t + (float(took.group(1)) if took else 0) - first) % 86400,
                            int(r.group(1))))
    return out


# ---------------------------------------------------------------------------------------------
# The schedule.


def schedule(p, rng):
    """Groups of messages, each a list of (offset s, auto?) and a label; in a fixed order."""
    groups = [([(0.0, False)], "single") for _ in range(p["singles"])]
    groups += [([(0.0, False), (g / 1000, False)], f"pair {g} ms apart") for g in p["pairs"]]
    groups += [([(0.0, True), (g / 1000, False)], f"chat {g} ms after an automatic one")
               for g in p["after_auto"]]
    groups += [([(i * BURST_GAP, False) for i in range(n)], f"burst of {n}") for n in p["bursts"]]
    rng.shuffle(groups)
    return groups


class Bench:
    def __init__(self, binary, work, quick):
        self.binary = binary
        self.work = work
        self.quick = quick
        self.p = QUICK if quick else FULL
        self.rng = random.Random(17)
        self.n = 0
        # Per contender: (landed, chat?, phase, label) in landing order.
        self.landed = {"watch": [], "getmail": []}
        self.failures = []
        self.gm_lock = threading.Lock()
        self.gm_cpu_done = 0.0
        self.gm_ends = []
        self.stopping = threading.Event()
        self.load_start = " ".join(open("/proc/loadavg").read().split()[:3])

    def deliver(self, auto, label, phase):
        """The same message into both Maildirs (tmp/, then renamed into new/)."""
        self.n += 1
        order = [("watch", "w"), ("getmail", "g")]
        if self.n % 2:
            order.reverse()
        staged = [(k, self.dc.write(u, message(self.n, f"{u}@example.org", auto))) for k, u in order]
        for k, (tmp, new) in staged:
            os.rename(tmp, new)
            self.landed[k].append((time.monotonic(), not auto, phase, label))

    def chat_count(self, k):
        return sum(1 for m in self.landed[k] if m[1])

    def done(self, k):
        """Whether `k` has posted after its last chat message."""
        last = next((m[0] for m in reversed(self.landed[k]) if m[1]), None)
        return last is None or any(t >= last for t in self.relays[k].posts())

    def settle(self, tail):
        """After a group: until both have posted, at least 1 s after the last landing (Dovecot's
        notification may still be due); or, when getmail has not, until `tail` has passed and it
        has posted nothing for a second (it may still work off a backlog); then until both idle
        again, getmail for 10 s at most: the next mail does not wait for a getmail that hangs."""
        last = max(self.landed["watch"][-1][0], self.landed["getmail"][-1][0])
        while True:
            now = time.monotonic()
            w, g = self.done("watch"), self.done("getmail")
            if now >= last + 1.0 and w and g:
                break
            posts = self.relays["getmail"].posts()
            if now >= last + tail and w and (not posts or posts[-1] < now - 1.0):
                break
            if now >= last + 120:
                break
            time.sleep(0.005)
        self.check_alive()
        self.dc.wait_idle(["w"], limit=30, why=self.outputs)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and " IDLE]" not in self.dc.sessions().get("g", ""):
            time.sleep(0.005)

    def check_alive(self):
        if self.watcher.poll() is not None:
            die(f"the watcher ended (exit {self.watcher.returncode}): {self.outputs()}")

    def start_getmail(self):
        self.getmail = subprocess.Popen(
            self.getmail_cmd, env=self.getmail_env, cwd=self.dc.homes["g"],
            start_new_session=True, stdin=subprocess.DEVNULL,
            stdout=open(os.path.join(self.work, "getmail.out"), "a"),
            stderr=open(os.path.join(self.work, "getmail.err"), "a"), **self.as_user)

    def supervise(self):
        """Restarts getmail when it ends, as its unit does (Restart=always, RestartSec=), and
        notes why it ended and what the process had cost (wait4: its own and its children's)."""
        while not self.stopping.is_set():
            with self.gm_lock:
                pid, st, ru = os.wait4(self.getmail.pid, os.WNOHANG)
                if pid:
                    self.getmail.returncode = os.waitstatus_to_exitcode(st)
                    self.gm_cpu_done += ru.ru_utime + ru.ru_stime
                    err = open(os.path.join(self.work, "getmail.err")).read().strip()
                    self.gm_ends.append({"at": time.monotonic(), "code": self.getmail.returncode,
                                         "err": err.splitlines()[-1] if err else ""})
            if pid:
                if self.stopping.wait(self.restart_sec):
                    return
                with self.gm_lock:
                    self.start_getmail()
                    self.gm_ends[-1]["restarted"] = time.monotonic()
            self.stopping.wait(0.05)

    def outputs(self):
        return " ".join(f"{n}: {open(os.path.join(self.work, n)).read()!r}"
                        for n in ("watch.err", "getmail.out", "getmail.err"))

    def usage(self):
        out = {}
        with self.gm_lock:
            for k, proc in (("watch", self.watcher), ("getmail", self.getmail)):
                done = self.gm_cpu_done if k == "getmail" else 0.0
                try:
                    s = status(proc.pid)
                    out[k] = {"cpu": done + cpu(proc.pid), "hwm": int(s["VmHWM"]),
                              "rss": int(s["VmRSS"]), "switches": switches(proc.pid)}
                except (OSError, KeyError):  # ended, waiting for its restart
                    out[k] = {"cpu": done, "hwm": 0, "rss": 0, "switches": (0, 0)}
        return out

    def run(self):
        p = self.p
        work = self.work
        uid, gid, _, switch = mail_user()
        as_user = {"user": uid, "group": gid} if switch else {}
        ca = make_ca(os.path.join(work, "ca"))
        bindir = os.path.join(work, "bin")
        os.makedirs(bindir)
        binary = os.path.join(bindir, "deltapush-mda")
        shutil.copy(self.binary, binary)
        os.chmod(binary, 0o755)
        self.version = subprocess.run([binary, "--version"], capture_output=True,
                                      text=True).stdout.strip()
        self.getmail_version = subprocess.run(["getmail", "--version"], capture_output=True,
                                              text=True).stdout.strip()
        tokens = {"watch": token(1), "getmail": token(2)}
        self.relays = {k: Relay(t) for k, t in tokens.items()}
        self.dc = Dovecot(work, ["w", "g"], ca)

        # The watcher, as the unit runs it (password and tokens in files of its own).
        home = self.dc.homes["w"]
        for name, text in (("password", "pw-w\n"), ("tokens", tokens["watch"] + "\n")):
            with open(os.path.join(home, name), "w") as f:
                f.write(text)
            os.chmod(os.path.join(home, name), 0o600)
        chown_tree(home, uid, gid)
        self.watch_url = f"imaps://w%40example.org@127.0.0.1:{self.dc.port}"
        self.watch_cmd = [binary, "--watch", self.watch_url,
                          "--password-file", os.path.join(home, "password"),
                          "--token-file", os.path.join(home, "tokens"),
                          "--url", self.relays["watch"].url, "--interval", "0",
                          "--cache-dir", os.path.join(home, "cache")]
        self.watcher = subprocess.Popen(
            self.watch_cmd,
            env={"PATH": "/usr/bin:/bin", "HOME": home, "SSL_CERT_FILE": f"{ca}/ca.crt"},
            cwd=home, start_new_session=True, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "watch.err"), "w"),
            **as_user)

        # getmail, as examples/getmail has it.
        home = self.dc.homes["g"]
        os.makedirs(os.path.join(home, ".config/getmail"))
        os.makedirs(os.path.join(home, ".config/deltapush-mda"))
        with open(os.path.join(home, ".config/deltapush-mda/tokens"), "w") as f:
            f.write(tokens["getmail"] + "\n")
        os.chmod(os.path.join(home, ".config/deltapush-mda/tokens"), 0o600)
        rc = render("getmail/getmailrc", [
            ("server = imap.example.org", 1, "server = localhost"),
            ("port = 993", 1, f"port = {self.dc.port}"),
            ("username = me@example.org", 1, "username = g@example.org"),
            ("password = secret", 1, "password = pw-g"),
            ("ca_certs = /etc/ssl/certs/ca-certificates.crt", 1, f"ca_certs = {ca}/ca.crt"),
            ("path = /usr/bin/deltapush-mda", 1, f"path = {binary}"),
        ])
        with open(os.path.join(home, ".config/getmail/deltapush"), "w") as f:
            f.write(rc)
        chown_tree(home, uid, gid)
        with open(os.path.join(ROOT, "examples/getmail/deltapush@.service")) as f:
            unit = f.read()
        self.getmail_cmd = re.search(r"^ExecStart=(.*)$", unit, re.M).group(1).replace(
            "%i", "deltapush").split()
        self.restart_sec = float(re.search(r"^RestartSec=(\d+)$", unit, re.M).group(1))
        self.getmail_env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": home,
                            "DELTAPUSH_URL": self.relays["getmail"].url, "DELTAPUSH_INTERVAL": "0"}
        self.as_user = as_user
        self.start_getmail()
        threading.Thread(target=self.supervise, daemon=True).start()

        self.dc.wait_idle(["w", "g"], why=self.outputs)
        err = open(os.path.join(work, "watch.err")).read()
        if f"deltapush-mda: watching {self.watch_url} with IDLE" not in err:
            die(f"the watcher idles but has not said so: {err!r}")
        time.sleep(1)  # the start-up's last writes and frees, out of the idle period
        started = self.usage()

        # Idle.
        say(f"idle for {p['idle']} s ...")
        for proc in (self.watcher, self.getmail):
            reset_peak(proc.pid)
        trace = os.path.join(work, "watch.strace")
        strace = None
        if shutil.which("strace"):
            strace = subprocess.Popen(["strace", "-tt", "-T", "-p", str(self.watcher.pid), "-o", trace],
                                      stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=open(trace + ".err", "w"))
            deadline = time.monotonic() + 5
            while "attached" not in open(trace + ".err").read():
                if time.monotonic() > deadline or strace.poll() is not None:
                    strace.kill() if strace.poll() is None else None
                    strace.wait()
                    strace = None
                    break
                time.sleep(0.01)
        before = self.usage()
        t0_wall = time.time()
        sampler = Sampler({"watch": self.watcher.pid, "getmail": self.getmail.pid})
        t0 = time.monotonic()
        while time.monotonic() < t0 + p["idle"]:
            time.sleep(1)
            self.check_alive()
        runs = sampler.stop()
        after = self.usage()
        idle_took = time.monotonic() - t0
        if strace is not None:
            strace.send_signal(signal.SIGINT)  # detaches
            strace.wait(10)
        polls = parse_strace(trace, t0_wall) if strace is not None else None
        if any(self.relays[k].posts() for k in self.relays):
            self.failures.append("a POST while idle, with no mail")
        self.idle = {"took": idle_took, "before": before, "after": after, "runs": runs,
                     "polls": polls, "started": started}
        self.dc.wait_idle(["w", "g"], why=self.outputs)

        # The schedule.
        groups = schedule(p, self.rng)
        say(f"{len(groups)} groups of messages ...")
        t_sched = time.monotonic()
        self.phases = {"schedule": (t_sched, float("inf"))}
        for steps, label in groups:
            time.sleep(self.rng.uniform(0.3, 0.8))
            base = time.monotonic()
            for offset, auto in steps:
                while time.monotonic() < base + offset:
                    time.sleep(min(0.001, max(0.0, base + offset - time.monotonic())))
                self.deliver(auto, label, "schedule")
            self.settle(MISS + 0.2)
        self.sched_took = time.monotonic() - t_sched

        # A stream of messages: CPU and peak RSS for each.
        n, rate = p["stream"], p["rate"]
        say(f"{n} messages at {rate:g} a second ...")
        time.sleep(1)
        for proc in (self.watcher, self.getmail):
            reset_peak(proc.pid)
        before = self.usage()
        t0 = time.monotonic()
        self.phases["schedule"] = (t_sched, t0)
        self.phases["stream"] = (t0, float("inf"))
        for i in range(n):
            at = t0 + i / rate
            while time.monotonic() < at:
                time.sleep(min(0.002, max(0.0, at - time.monotonic())))
            self.deliver(False, "stream", "stream")
        self.settle(MISS + 2.0)
        after = self.usage()
        self.stream = {"took": time.monotonic() - t0, "before": before, "after": after}

        # Stop: the watcher on SIGTERM logs out and exits 0.
        time.sleep(0.5)
        self.watcher.send_signal(signal.SIGTERM)
        try:
            self.stop_code = self.watcher.wait(10)
        except subprocess.TimeoutExpired:
            self.stop_code = None
        if self.stop_code != 0:
            self.failures.append(f"the watcher on SIGTERM: exit {self.stop_code}")
        for k, r in self.relays.items():
            if r.bad:
                self.failures.append(f"{k}: {r.bad} POSTs of something not its token")
        self.complaints = self.dc.complaints()
        self.watch_err = open(os.path.join(work, "watch.err")).read()
        self.getmail_err = (open(os.path.join(work, "getmail.out")).read()
                            + open(os.path.join(work, "getmail.err")).read())

    def cleanup(self):
        self.stopping.set()
        for proc in (getattr(self, "watcher", None), getattr(self, "getmail", None)):
            if proc is not None and proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait(5)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        if getattr(self, "dc", None) is not None:
            self.dc.stop()
        for r in getattr(self, "relays", {}).values():
            r.stop()

    # -----------------------------------------------------------------------------------------
    # The figures.

    def latencies(self, k):
        """Per chat message: (phase, label, latency in s or None for no POST at all). The first
        POST the relay read after a message landed is its wakeup: the phone, woken then, finds
        it. (The watcher posts once per fetch; getmail once per message, but after a restart it
        hands the message it was at over again, so its k-th POST need not be the k-th
        message's.)"""
        posts = sorted(self.relays[k].posts())
        chats = [m for m in self.landed[k] if m[1]]
        out = []
        j = 0
        for t, _, phase, label in chats:
            while j < len(posts) and posts[j] < t:
                j += 1
            out.append((phase, label, posts[j] - t if j < len(posts) else None))
        return out

    def one_per_message(self):
        """getmail's misses counting its k-th POST as its k-th chat message's, up to the time
        it first ended: (missed, messages)."""
        end = self.gm_ends[0]["at"] if self.gm_ends else float("inf")
        posts = sorted(t for t in self.relays["getmail"].posts() if t < end)
        chats = [m[0] for m in self.landed["getmail"] if m[1] and m[0] < end]
        missed = sum(1 for i, t in enumerate(chats) if i >= len(posts) or posts[i] - t > MISS)
        return missed, len(chats)


def percentile(values, q):
    v = sorted(values)
    return v[min(len(v) - 1, max(0, int(-(-q * len(v) // 1)) - 1))]


def ms(s):
    return f"{s * 1000:.0f} ms" if s >= 0.1 else f"{s * 1000:.1f} ms"


def mib(kib):
    return f"{kib / 1024:.1f} MiB"


def machine():
    cpu_model = "unknown CPU"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    return cpu_model, nproc


def report(b, took, quick, cmd):
    p = b.p
    names = {"watch": "`deltapush-mda --watch`", "getmail": "getmail `--idle` + deltapush-mda"}
    lat = {k: b.latencies(k) for k in ("watch", "getmail")}
    verdict = lambda ok: "met" if ok else "**missed**"
    cpu_model, nproc = machine()
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load = " ".join(open("/proc/loadavg").read().split()[:3])
    n_chat = b.chat_count("watch")
    n_auto = len(b.landed["watch"]) - n_chat
    sched_chat = sum(1 for m in b.landed["watch"] if m[1] and m[2] == "schedule")
    out = [
        "# `deltapush-mda --watch` against getmail `--idle`: measurements",
        "",
        f"Generated by `{cmd}` on {when}, in {took:.0f} s"
        + (" (a quick run: a short idle period and fewer messages)" if quick else "") + ".",
        f"Machine: {cpu_model}, `nproc` {nproc}, Linux {os.uname().release}, load average "
        f"{b.load_start} at the start and {load} at the end.",
        f"{b.version} (release build{', ' + os.environ['DELTAPUSH_BENCH_REV'] if os.environ.get('DELTAPUSH_BENCH_REV') else ''}), "
        f"{b.getmail_version}, Dovecot {b.dc.version} (the host's).",
        "",
        "Both contenders run side by side against one Dovecot of the bench's own on 127.0.0.1 "
        "(IMAP over TLS, a CA made for the run), each on an account of its own and posting to a "
        "stand-in relay of its own (a process answering 200 that notes when it read each POST):",
        "",
        f"- the watcher: `deltapush-mda --watch imaps://w%40example.org@127.0.0.1:PORT "
        "--password-file … --token-file … --url RELAY --interval 0 --cache-dir …`;",
        f"- getmail: `{' '.join(b.getmail_cmd)}` (the unit of `examples/getmail/`) with "
        "`examples/getmail/getmailrc` (server, port, account, CA and MDA path changed), its MDA "
        "deltapush-mda with `DELTAPUSH_INTERVAL=0`.",
        "",
        "Each message is written into `tmp/` of both Maildirs and renamed into `new/`, as an MTA "
        "delivers (which account's rename comes first alternates). Chat messages carry "
        "`Chat-Version`; automatic ones `Auto-Submitted: auto-replied`, and should wake no one. "
        "Delivery → POST is from the rename to the relay having read the POST. The watcher wakes "
        "once per fetch, so its POST counts for every chat message that landed before it since "
        "its previous POST; the same rule for getmail, which posts once per message (the phone, "
        "woken after a message landed, finds it; and once getmail restarts it hands the message "
        "it was at over again, so its k-th POST need not be its k-th message's). A chat message "
        f"without a POST within {MISS:.0f} s of landing is **missed**.",
        "",
    ]

    # Delivery → POST.
    out += [
        "## Delivery → POST",
        "",
        f"The schedule: {sched_chat} chat messages and {n_auto} automatic ones in "
        f"{len(schedule(p, random.Random(17)))} groups: {p['singles']} single messages; pairs "
        f"{', '.join(map(str, p['pairs']))} ms apart; a chat message "
        f"{', '.join(map(str, p['after_auto']))} ms after an automatic one; bursts of "
        f"{', '.join(map(str, p['bursts']))} ({BURST_GAP * 1000:.0f} ms apart). Each group starts "
        "0.3–0.8 s after both contenders are back in IDLE (Dovecot's process title), in a fixed "
        f"shuffled order. Then a stream: {p['stream']} chat messages at {p['rate']:g} a second.",
        "",
        "| contender | chat messages | woken within 3 s | **missed** | median | p99 | max | POSTs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    missed = {}
    for phase, title in (("schedule", "the schedule"), ("stream", "the stream")):
        for k in ("watch", "getmail"):
            rows = [r for r in lat[k] if r[0] == phase]
            woken = [r[2] for r in rows if r[2] is not None and r[2] <= MISS]
            miss = [r for r in rows if r[2] is None or r[2] > MISS]
            missed.setdefault(k, []).extend(miss)
            vals = [r[2] for r in rows if r[2] is not None]
            lo, hi = b.phases[phase]
            posts = sum(1 for t in b.relays[k].posts() if lo <= t < hi)
            out.append(
                f"| {names[k]}, {title} | {len(rows)} | {len(woken)} | {len(miss)} | "
                f"{ms(statistics.median(vals)) if vals else '—'} | "
                f"{ms(percentile(vals, 0.99)) if vals else '—'} | "
                f"{ms(max(vals)) if vals else '—'} | {posts} |")
    out.append("")
    gm_missed, gm_n = b.one_per_message()
    out += [f"Counting getmail's k-th POST as its k-th chat message's instead: {gm_missed} of "
            f"{gm_n} missed" + (" (up to the moment it first ended)." if b.gm_ends else "."), ""]
    if b.gm_ends:
        t0 = b.phases["schedule"][0]
        out += [f"**getmail ended {len(b.gm_ends)} time(s)** and was started again "
                f"{b.restart_sec:.0f} s later, as its unit does:", ""]
        for e in b.gm_ends:
            phase = "the stream" if e["at"] >= b.phases["stream"][0] else "the schedule"
            since = e["at"] - b.phases["stream" if phase == "the stream" else "schedule"][0]
            last = max((t for t in b.relays["getmail"].posts() if t < e["at"]), default=None)
            out.append(f"- {since:.0f} s into {phase}, exit {e['code']}: `{e['err']}`"
                       + (f"; its last POST before that {e['at'] - last:.0f} s earlier"
                          if last is not None else "") + ".")
        out.append("")
    for k in ("watch", "getmail"):
        if missed[k]:
            out.append(f"Missed by {names[k]}:")
            out.append("")
            for phase, label, l in missed[k][:20]:
                out.append(f"- {phase}, {label}: "
                           + (f"its POST came {l:.1f} s after it landed" if l is not None
                              else "no POST at all"))
            if len(missed[k]) > 20:
                late = [l for _, _, l in missed[k] if l is not None]
                out.append(f"- and {len(missed[k]) - 20} more"
                           + (f" (POSTs {min(late):.0f}–{max(late):.0f} s late)" if late else ""))
            out.append("")
    # The watcher's latency by kind of group.
    out += [
        "By kind of group, the watcher and getmail (median / max delivery → POST of the chat "
        "messages; missed ones excluded):",
        "",
        "| group | watcher | getmail |",
        "|---|---|---|",
    ]
    labels = []
    for _, label in schedule(p, random.Random(17)):
        kind = re.sub(r"\d+ ms", "N ms", label)
        kind = re.sub(r"burst of \d+", "burst", kind)
        if kind not in labels:
            labels.append(kind)
    for kind in labels:
        cells = []
        for k in ("watch", "getmail"):
            vals = [r[2] for r in lat[k] if r[0] == "schedule" and r[2] is not None
                    and r[2] <= MISS and re.sub(r"burst of \d+", "burst",
                                                re.sub(r"\d+ ms", "N ms", r[1])) == kind]
            cells.append(f"{ms(statistics.median(vals))} / {ms(max(vals))}" if vals else "—")
        out.append(f"| {kind} | {cells[0]} | {cells[1]} |")
    out.append("")

    # Resources.
    idle, stream = b.idle, b.stream
    out += [
        "## CPU, memory, wakeups",
        "",
        f"Idle: {idle['took']:.0f} s with no mail, after start-up and first login. Stream: the "
        f"{p['stream']} messages above, from the first delivery to the last POST "
        f"({stream['took']:.0f} s). CPU: utime+stime of the process and of the children it "
        "waited for (getmail's deltapush-mda runs), from `/proc/PID/stat` (10 ms ticks). Peak "
        "RSS: VmHWM, started over (`clear_refs`) at the start of each period; for getmail that "
        "of the Python process, its MDA runs are processes of their own "
        "(`doc/benchmarks.md`: peak RSS of one run).",
        "",
        "| contender | peak RSS at start-up | idle: CPU | idle: peak RSS | idle: wakeups | "
        f"stream: CPU | stream: CPU per message | stream: peak RSS |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for k in ("watch", "getmail"):
        ic = idle["after"][k]["cpu"] - idle["before"][k]["cpu"]
        sc = stream["after"][k]["cpu"] - stream["before"][k]["cpu"]
        out.append(
            f"| {names[k]} | {mib(idle['started'][k]['hwm'])} | {ic:.2f} s | "
            f"{mib(idle['after'][k]['hwm'])} | {len(idle['runs'][k])} | {sc:.2f} s | "
            f"{sc / p['stream'] * 1000:.1f} ms | {mib(stream['after'][k]['hwm'])} |")
    out += [
        "",
        "Wakeups while idle: the moments (0.25 s samples of the voluntary context switches) in "
        "which the process ran at all, seconds into the idle period:",
        "",
    ]
    for k in ("watch", "getmail"):
        v0, i0 = idle["before"][k]["switches"]
        v1, i1 = idle["after"][k]["switches"]
        out.append(f"- {names[k]}: {', '.join(map(str, idle['runs'][k])) or 'none'} "
                   f"({v1 - v0} voluntary and {i1 - i0} involuntary context switches"
                   + (", under strace" if k == "watch" and idle["polls"] is not None else "")
                   + ").")
    polls = idle["polls"]
    own = []
    if polls is not None:
        own_t = [t for t, r in polls if r == 0]
        own = [round(t) for t in own_t]
        replies = [t for t, r in polls if r > 0 and any(0 <= t - o <= 2 for o in own_t)]
        data = [round(t) for t, r in polls if r > 0 and t not in replies]
        out += [
            "",
            f"The watcher under `strace -tt -T -p PID` for the idle period: {len(polls)} returns "
            f"from poll(2) (seconds into the idle period): {len(own)} by its own timeout"
            + (f" (at {', '.join(map(str, own))} s: the IDLE renewal, every 5 minutes, "
               f"and {len(replies)} more for the server's replies to it)" if own else "")
            + f"; {len(data)} because the server said something unasked"
            + (f" (at {', '.join(map(str, data))} s: Dovecot's `* OK Still here` every 2 "
               "minutes)" if data else "")
            + ". The renewal is its only timer; TCP keepalive is the kernel's.",
        ]
    own_ok = polls is not None and all(b2 - a >= OWN_WAKEUP_EVERY for a, b2 in zip(own, own[1:])) \
        and len(own) <= max(1, idle["took"] // OWN_WAKEUP_EVERY)
    out.append("")

    # Targets.
    wlat = [r[2] for r in lat["watch"] if r[2] is not None]
    med = statistics.median(wlat) if wlat else float("inf")
    p99 = percentile(wlat, 0.99) if wlat else float("inf")
    slat = [r[2] for r in lat["watch"] if r[2] is not None and r[0] == "schedule"]
    smed = statistics.median(slat) if slat else float("inf")
    sp99 = percentile(slat, 0.99) if slat else float("inf")
    w_missed = len(missed["watch"])
    idle_hwm = idle["after"]["watch"]["hwm"]
    out += [
        "## Targets (issue 17)",
        "",
        "| target | watcher | result |",
        "|---|---|---|",
        f"| delivery → POST ≤ Dovecot's IDLE notification delay (0.5 s) + 20 ms | the schedule: "
        f"median {ms(smed)}, p99 {ms(sp99)}; every chat message: median {ms(med)}, p99 "
        f"{ms(p99)}, max {ms(max(wlat)) if wlat else '—'} | p99 {verdict(p99 <= LATENCY_TARGET)} |",
        f"| 0 missed | {w_missed} of {n_chat} | {verdict(w_missed == 0)} |",
        f"| idle RSS ≤ 8 MiB | peak {mib(idle_hwm)} over the idle period, "
        f"{mib(idle['started']['watch']['hwm'])} at start-up | "
        f"{verdict(idle_hwm <= RSS_TARGET_KIB)} |",
        f"| no wakeups of its own more often than once a minute while idle | "
        + (f"{len(own)} in {idle['took']:.0f} s" if polls is not None else "not traced")
        + f" | {verdict(own_ok) if polls is not None else '—'} |",
        "",
        f"getmail, for comparison: {len(missed['getmail'])} of {b.chat_count('getmail')} chat "
        "messages missed.",
        "",
    ]
    if b.failures or b.complaints:
        out += ["**Failed:**", ""] + [f"- {f}" for f in b.failures] \
            + [f"- Dovecot's log: {l}" for l in b.complaints[:20]] + [""]
    out += [
        "The watcher's stderr over the run (one line per change of state):",
        "",
        "```",
        b.watch_err.strip() or "(nothing)",
        "```",
        "",
        "getmail's output: " + (f"`{b.getmail_err.strip()[:500]}`" if b.getmail_err.strip()
                                else "nothing") + ".",
    ]
    ok = w_missed == 0 and idle_hwm <= RSS_TARGET_KIB and not b.failures
    summary = (f"watcher median {ms(med)} p99 {ms(p99)} missed {w_missed}/{n_chat}, idle peak RSS "
               f"{mib(idle_hwm)}, own wakeups idle {len(own) if polls is not None else '?'}; "
               f"getmail missed {len(missed['getmail'])}/{b.chat_count('getmail')}")
    return "\n".join(out) + "\n", ok, summary


def main():
    args = sys.argv[1:]
    quick = "--quick" in args
    args = [a for a in args if a != "--quick"]
    if len(args) != 2:
        die("usage: watch.py BINARY OUT.md [--quick]")
    binary, out = args
    for tool in ("openssl", "getmail", "/usr/sbin/dovecot"):
        if not shutil.which(tool):
            die(f"{tool} is missing: run .ci/setup")
    started = time.monotonic()
    work = tempfile.mkdtemp(prefix="deltapush-bench-watch-", dir="/tmp")
    os.chmod(work, 0o755)
    b = Bench(os.path.abspath(binary), work, quick)
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))
    try:
        b.run()
    finally:
        b.cleanup()
        if os.environ.get("DELTAPUSH_BENCH_KEEP"):
            say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    took = time.monotonic() - started
    cmd = os.environ.get("DELTAPUSH_BENCH_CMD") or ("bash bench/watch.sh" + (" --quick" if quick else ""))
    text, ok, summary = report(b, took, quick, cmd)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        f.write(text)
    say(f"wrote {out} ({took:.0f} s): {summary}")
    if not ok:
        die("failed: the watcher missed a message, its idle RSS is above 8 MiB, or a check "
            f"failed (see {out})")


if __name__ == "__main__":
    main()
