#!/usr/bin/env python3
"""What instant push costs and gives on your own Dovecot (issue 13), measured with the files of
examples/dovecot/ as shipped (paths and the relay URL changed, nothing else) in a Dovecot of its
own on 127.0.0.1, started and stopped here. Run through bench/dovecot.sh.

Measured:
  - delivery to POST: from the end of an LMTP DATA to the stand-in relay's receipt of the token,
    for the Sieve route and for the getmail IDLE route (examples/getmail, as the unit runs it);
  - LMTP deliveries per second, with and without the Sieve setup, over 1 and 4 connections.
Each case first checks that the relay got exactly the posts it should.

usage: dovecot.py BINARY OUT.md [--quick]
"""

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
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = "/etc/dovecot/sieve/deltapush.sieve"
EXEC_DIR = "/usr/lib/dovecot/sieve-execute"
RELAY = "https://notifications.delta.chat/notify"
# LMTP deliveries over 1 connection, and over 4 at once.
CONNS = (1, 4)
# What the Sieve plugin costs by itself, for comparison: loaded, with no script to run.
SIEVE_ONLY = "protocol lmtp {\n  mail_plugins = $mail_plugins sieve\n}\n"


def die(msg):
    print(f"bench/dovecot.py: {msg}", file=sys.stderr)
    sys.exit(1)


# Clients and the relay run as processes of their own, as a mail server and the real relay
# would: threads of this one would wait on each other for Python's interpreter lock.
MP = multiprocessing.get_context("fork")


class Relay:
    """The stand-in relay, a process of its own: answers 200 to every POST and notes when each
    body arrived (CLOCK_MONOTONIC, the same clock in every process)."""

    def __init__(self):
        self.cond = threading.Condition()
        self.posts = []  # (monotonic time, body)
        queue, ready = MP.Queue(), MP.Queue()
        self.proc = MP.Process(target=serve_relay, args=(queue, ready), daemon=True)
        self.proc.start()
        self.url = f"http://127.0.0.1:{ready.get(timeout=10)}/notify"
        threading.Thread(target=self.collect, args=(queue,), daemon=True).start()

    def collect(self, queue):
        while True:
            post = queue.get()
            with self.cond:
                self.posts.append(post)
                self.cond.notify_all()

    def stop(self):
        self.proc.terminate()
        self.proc.join()

    def count(self, body=None):
        with self.cond:
            return sum(1 for _, b in self.posts if body is None or b == body)

    def wait_for(self, body, n, limit=15):
        """Waits until the relay holds n posts of `body`; returns the time the n-th came."""
        with self.cond:
            times = lambda: [t for t, b in self.posts if b == body]
            if not self.cond.wait_for(lambda: len(times()) >= n, timeout=limit):
                die(f"the relay got {len(times())} posts of a token, expected {n} within {limit} s")
            return times()[n - 1]


def serve_relay(queue, ready):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            queue.put((time.monotonic(), body.decode()))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    ready.put(server.server_address[1])
    server.serve_forever()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mail_user():
    """Under root the mail programs run as nobody (getmail refuses root), else as the caller."""
    if os.geteuid() != 0:
        pw = pwd.getpwuid(os.geteuid())
        return pw.pw_uid, pw.pw_gid, pw.pw_name, False
    pw = pwd.getpwnam("nobody")
    return pw.pw_uid, pw.pw_gid, pw.pw_name, True


def chown_tree(path, uid, gid):
    for dirpath, dirnames, filenames in os.walk(path):
        os.chown(dirpath, uid, gid)
        for name in dirnames + filenames:
            os.lchown(os.path.join(dirpath, name), uid, gid)


def render(example, subs):
    """An example file with values replaced; each must occur exactly as often as given."""
    with open(os.path.join(ROOT, "examples", example)) as f:
        text = f.read()
    for old, count, new in subs:
        if text.count(old) != count:
            die(f"examples/{example} should contain `{old}` {count} time(s)")
        text = text.replace(old, new)
    return text


def message(n, to):
    return (
        f"From: alice@example.net\r\nTo: {to}\r\nSubject: bench {n}\r\n"
        f"Message-ID: <{n}.{os.getpid()}.{time.time_ns()}@example.net>\r\n"
        f"Chat-Version: 1.0\r\n\r\nHello number {n}\r\n"
    )


class Dovecot:
    def __init__(self, work, name, users, conf_d, ca):
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
        with open(os.path.join(self.dir, "passwd"), "w") as f:
            f.writelines(lines)
        self.imaps_port, self.lmtp_port = free_port(), free_port()
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
        d = self.dir
        self.conf = os.path.join(d, "dovecot.conf")
        with open(self.conf, "w") as f:
            f.write(
                f"base_dir = {d}/run\nstate_dir = {d}/state\nlog_path = {d}/dovecot.log\n"
                "protocols = imap lmtp\nlisten = 127.0.0.1\n"
                f"ssl = required\nssl_cert = <{ca}/server.crt\nssl_key = <{ca}/server.key\n"
                "auth_mechanisms = plain login\n"
                f"first_valid_uid = {uid}\n"
                f"passdb {{\n  driver = passwd-file\n  args = {d}/passwd\n}}\n"
                f"userdb {{\n  driver = passwd-file\n  args = {d}/passwd\n}}\n"
                "mail_location = maildir:~/Maildir\n"
                # The process title says IDLE while a client idles: the getmail route waits on it.
                "verbose_proctitle = yes\n"
                "plugin {\n  sieve = file:~/sieve;active=~/.dovecot.sieve\n}\n"
                + unprivileged
                + f"service imap-login {{\n{login_chroot}  inet_listener imap {{\n    port = 0\n  }}\n"
                f"  inet_listener imaps {{\n    address = 127.0.0.1\n    port = {self.imaps_port}\n"
                "    ssl = yes\n  }\n}\n"
                f"service lmtp {{\n  inet_listener lmtp {{\n    address = 127.0.0.1\n"
                f"    port = {self.lmtp_port}\n  }}\n}}\n"
                f"!include_try {d}/conf.d/*.conf\n"
            )
        self.proc = subprocess.Popen(
            ["dovecot", "-F", "-c", self.conf], start_new_session=True, stdin=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        for port in (self.imaps_port, self.lmtp_port):
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port)).close()
                    break
                except OSError:
                    if self.proc.poll() is not None or time.monotonic() > deadline:
                        die(f"dovecot did not start: {self.log()}")
                    time.sleep(0.02)

    def tool(self, *args, stdin=None):
        out = subprocess.run(
            [args[0], "-c", self.conf, *args[1:]], input=stdin, capture_output=True, text=True
        )
        if out.returncode != 0 or out.stderr:
            die(f"{' '.join(args)}: exit {out.returncode}: {out.stderr}")
        return out.stdout

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
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def lmtp(self):
        return smtplib.LMTP("127.0.0.1", self.lmtp_port)

    def deliver(self, conn, n, user):
        """One message over an open LMTP connection; returns (end of data, reply) times."""
        to = f"{user}@example.org"
        code, _ = conn.mail("alice@example.net")
        code2, _ = conn.rcpt(to)
        if (code, code2) != (250, 250):
            die(f"LMTP refused {to}: {code} {code2}")
        start = time.monotonic()
        code, reply = conn.data(message(n, to))
        if code != 250:
            die(f"LMTP DATA for {to}: {code} {reply}")
        return start, time.monotonic()

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

    def stored(self, user):
        maildir = os.path.join(self.homes[user], "Maildir")
        dirs = [os.path.join(maildir, s) for s in ("new", "cur")]
        return sum(len(os.listdir(d)) for d in dirs if os.path.isdir(d))


def make_ca(dir):
    os.makedirs(dir)
    p = lambda n: os.path.join(dir, n)
    with open(p("server.ext"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for args in (
        ["req", "-x509", *ec, "-keyout", p("ca.key"), "-out", p("ca.crt"), "-days", "2",
         "-subj", "/CN=deltapush-mda bench CA"],
        ["req", *ec, "-keyout", p("server.key"), "-out", p("server.csr"), "-subj", "/CN=localhost"],
        ["x509", "-req", "-in", p("server.csr"), "-CA", p("ca.crt"), "-CAkey", p("ca.key"),
         "-CAcreateserial", "-out", p("server.crt"), "-days", "2", "-extfile", p("server.ext")],
    ):
        subprocess.run(["openssl", *args], check=True, capture_output=True)
    for n in ("ca.crt", "server.crt", "server.key"):
        os.chmod(p(n), 0o644)
    return dir


def percentile(values, q):
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q * (len(v) - 1))))]


def fmt_ms(seconds):
    return f"{seconds * 1000:.1f} ms"


def rate(dovecot, users, per_conn, conns):
    """Deliveries per second: `per_conn` messages on each of `conns` connections at once, each
    connection a process, round robin over `users`; checks that every one was stored."""
    stored_before = {u: dovecot.stored(u) for u in set(users)}
    barrier = MP.Barrier(conns + 1)

    def worker(k):
        conn = dovecot.lmtp()
        barrier.wait(30)
        for i in range(per_conn):
            dovecot.deliver(conn, i, users[(k * per_conn + i) % len(users)])
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
        die(f"a delivering process failed (exit {failed[0]})")
    total = per_conn * conns
    stored = sum(dovecot.stored(u) - stored_before[u] for u in set(users))
    if stored != total:
        die(f"{stored} of {total} messages stored")
    return total / took


def prewarm(dovecot, users):
    """One message to each of `users`, over 4 connections."""
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
        die(f"the first message did not reach {len(missing)} users")


def token(n):
    """A device token shaped like Delta Chat's: `openpgp:` and base64, 908 characters."""
    t = f"openpgp:wcFMA{n:04}QzPd+/" + "hQIMA8Kx0Rq3c2vJARAAl9+/Zq" * 35
    return t[:907] + "="


def expect(relay, body, want, what):
    got = relay.count(body)
    if got != want:
        die(f"{what}: the relay got {got} posts, expected {want}")


def main():
    args = sys.argv[1:]
    quick = "--quick" in args
    args = [a for a in args if a != "--quick"]
    if len(args) != 2:
        die("usage: dovecot.py BINARY OUT.md [--quick]")
    binary, out = args
    samples, idle_samples, per_conn, rounds = (5, 3, 30, 2) if quick else (30, 15, 60, 9)
    uid, gid, _, switch = mail_user()
    for tool in ("dovecot", "doveadm", "sievec", "getmail", "openssl"):
        if not shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin"):
            die(f"{tool} is missing: run .ci/setup")

    work = tempfile.mkdtemp(prefix="deltapush-bench-dovecot-")
    os.chmod(work, 0o755)
    servers = []
    getmail = relay = None
    try:
        relay = Relay()
        ca = make_ca(os.path.join(work, "ca"))
        os.makedirs(os.path.join(work, "bin"))
        bin_copy = os.path.join(work, "bin", "deltapush-mda")
        shutil.copy(binary, bin_copy)
        os.chmod(bin_copy, 0o755)
        exec_dir = os.path.join(work, "sieve-execute")
        os.makedirs(exec_dir)
        os.symlink(bin_copy, os.path.join(exec_dir, "deltapush-mda"))
        script = os.path.join(work, "sieve", "deltapush.sieve")
        os.makedirs(os.path.dirname(script))
        with open(script, "w") as f:
            f.write(render("dovecot/deltapush.sieve", [(RELAY, 1, relay.url)]))
        fragment = render(
            "dovecot/2.3/90-deltapush.conf", [(SCRIPT, 3, script), (EXEC_DIR, 3, exec_dir)]
        )
        # For comparison, what Dovecot's execute costs by itself: the same script running, in
        # place of deltapush-mda, a program that only reads the message.
        drain = os.path.join(work, "bin", "drain")
        with open(drain, "w") as f:
            f.write("#!/bin/sh\nexec cat >/dev/null\n")
        os.chmod(drain, 0o755)
        os.symlink(drain, os.path.join(exec_dir, "drain"))
        drain_script = os.path.join(work, "sieve", "drain.sieve")
        text, n = re.subn(r'"deltapush-mda" \[[^]]*\]', '"drain"', open(script).read())
        if n != 1:
            die("examples/dovecot/deltapush.sieve: the execute line is not where it was")
        with open(drain_script, "w") as f:
            f.write(text)

        # Three servers side by side, measured in turns so that the load of a shared machine
        # falls on all of them alike: stock, Sieve without any script, and this setup.
        every_users = [f"t{i}" for i in range(samples + rounds * per_conn * sum(CONNS))]
        burst_users = [f"b{i}" for i in range(rounds * len(CONNS))]
        stock = Dovecot(work, "stock", ["plain"], [], ca)
        servers.append(stock)
        sieve_only = Dovecot(work, "sieve", ["plain"], [("90-sieve.conf", SIEVE_ONLY)], ca)
        servers.append(sieve_only)
        dc = Dovecot(
            work,
            "deltapush",
            ["plain", "idle", *every_users, *burst_users],
            [("90-deltapush.conf", fragment)],
            ca,
        )
        servers.append(dc)
        dc.tool("sievec", script)
        drain_conf = fragment.replace(script, drain_script)
        drainer = Dovecot(work, "drain", ["plain"], [("90-deltapush.conf", drain_conf)], ca)
        servers.append(drainer)
        drainer.tool("sievec", drain_script)
        # Every mailbox has had mail before, as a real one has: a first delivery also creates
        # the Maildir and its index, which is not what is measured.
        for server in servers:
            rate(server, ["plain"], 20, 1)
        prewarm(dc, every_users + burst_users)
        # One token for many users: each has a cache dir of its own, so each posts on its own.
        every, burst, idle = token(1), token(2), token(3)
        drainer.tool("doveadm", "mailbox", "metadata", "set", "-u", "plain@example.org",
                     "INBOX", "/private/devicetoken", every)
        for pattern, t in (("t*", every), ("b*", burst)):
            dc.tool("doveadm", "mailbox", "metadata", "set", "-u", f"{pattern}@example.org",
                    "INBOX", "/private/devicetoken", t)
        # The Sieve route: each delivery the first for its token (its own user), as shipped.
        # In turns with a delivery to the stock server, whose reply is the baseline.
        lat, replies, stock_replies = [], [], []
        conn, stock_conn = dc.lmtp(), stock.lmtp()
        for i in range(samples):
            start, replied = dc.deliver(conn, i, every_users[i])
            lat.append(relay.wait_for(every, i + 1) - start)
            replies.append(replied - start)
            start, replied = stock.deliver(stock_conn, i, "plain")
            stock_replies.append(replied - start)
        conn.quit()
        stock_conn.quit()
        expect(relay, every, samples, "the Sieve route")

        fresh = iter(every_users[samples:])
        bursts = iter(burst_users)
        cases = [
            ("stock Dovecot (no Sieve)", lambda c: rate(stock, ["plain"], per_conn, c)),
            ("Sieve for LMTP, no script at all", lambda c: rate(sieve_only, ["plain"], per_conn, c)),
            ("this setup, user without a token", lambda c: rate(dc, ["plain"], per_conn, c)),
            (
                "this setup, every delivery posts (a user each)",
                lambda c: rate(dc, [next(fresh) for _ in range(per_conn * c)], per_conn, c),
            ),
            (
                "this setup, a burst to one user (1 POST, 1 deferred wakeup)",
                lambda c: rate(dc, [next(bursts)], per_conn, c),
            ),
            (
                "this setup running `cat >/dev/null` instead (for comparison)",
                lambda c: rate(drainer, ["plain"], per_conn, c),
            ),
        ]
        rates = {name: {c: [] for c in CONNS} for name, _ in cases}
        for _ in range(rounds):
            for name, measure in cases:
                for c in CONNS:
                    rates[name][c].append(measure(c))
        burst_done = time.monotonic()
        expect(relay, every, samples + rounds * per_conn * sum(CONNS), "every delivery posts")

        # The getmail route, as the unit runs it, for the user "idle" (no token on the server).
        home = dc.homes["idle"]
        os.makedirs(os.path.join(home, ".config/getmail"))
        os.makedirs(os.path.join(home, ".config/deltapush-mda"))
        with open(os.path.join(home, ".config/deltapush-mda/tokens"), "w") as f:
            f.write(idle + "\n")
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
        idle_lat = []
        for i in range(idle_samples):
            dc.wait_idle("idle")
            conn = dc.lmtp()
            start, _ = dc.deliver(conn, 1000 + i, "idle")
            conn.quit()
            idle_lat.append(relay.wait_for(idle, i + 1) - start)
            expect(relay, idle, i + 1, "getmail --idle")
        if getmail.poll() is not None:
            die("getmail --idle ended: " + open(os.path.join(work, "getmail.err")).read())

        time.sleep(max(0, burst_done + 11 - time.monotonic()))
        expect(relay, burst, 2 * len(burst_users), "the bursts, with their deferred wakeups")
        expect(relay, None, relay.count(every) + relay.count(burst) + relay.count(idle), "all")
        complaints = dc.complaints()
        if complaints:
            die("the Dovecot log complains:\n" + "\n".join(complaints))
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
        if relay is not None:
            relay.stop()
        shutil.rmtree(work, ignore_errors=True)

    def row(name, values):
        return (
            f"| {name} | {fmt_ms(statistics.median(values))} | {fmt_ms(percentile(values, 0.9))} "
            f"| {fmt_ms(min(values))} | {fmt_ms(max(values))} | {len(values)} |"
        )

    stock_rates = rates[cases[0][0]]

    def rate_row(name):
        cells = []
        for c in CONNS:
            r = statistics.median(rates[name][c])
            # Against the stock rate of the same round: the load of a shared machine changes
            # from one minute to the next.
            ratio = statistics.median(x / y for x, y in zip(rates[name][c], stock_rates[c]))
            cells.append(f"{r:.0f} ({ratio:.2f}×)")
        return f"| {name} | {' | '.join(cells)} |"

    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    version = subprocess.run(["dovecot", "--version"], capture_output=True, text=True)
    version = version.stdout.split()[0]
    with open(out, "w") as f:
        f.write(
            f"""# Instant push on your own Dovecot: measurements

Generated by `bash bench/dovecot.sh{' --quick' if quick else ''}` on {when}, with the files of
`examples/dovecot/` as shipped (paths and the relay URL changed) in Dovecot {version}, a release
build, a stand-in relay on 127.0.0.1, and a local LMTP client in place of the mail server. Each
case is checked: every message stored, and exactly the posts expected.

## Delivery to POST

From the end of the LMTP DATA to the relay holding the token; every mailbox has had mail before.

| route | median | 90th percentile | min | max | samples |
|---|---|---|---|---|---|
{row("Sieve (`examples/dovecot`), each the first message of its interval", lat)}
{row("getmail `--idle` (`examples/getmail`), every message posting", idle_lat)}

With the Sieve route the mail server's LMTP reply waits for the program: median
{fmt_ms(statistics.median(replies))} after the end of the data, against {fmt_ms(statistics.median(stock_replies))} from a stock
Dovecot in the same turns (both include storing the message). The getmail route does not hold
delivery up, but learns of the message through IMAP IDLE, which Dovecot reports in batches of
about half a second.

## LMTP deliveries per second

A small message, {per_conn} deliveries one after the other on each connection, each connection a
client process of its own; the median of {rounds} rounds in which the servers take turns. In
brackets: the median share of the stock rate of the same round. "Sieve for LMTP, no script at
all" and "`cat >/dev/null` instead" are not setups to use, they show where the cost comes from:
Sieve itself, the metadata lookup, and Dovecot starting a program for each delivery.

| server | 1 connection | 4 connections at once |
|---|---|---|
{chr(10).join(rate_row(name) for name, _ in cases)}

Machine: {machine()}.
"""
        )
    print(f"bench/dovecot.py: wrote {out}", file=sys.stderr)


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
    load = open("/proc/loadavg").read().split()[:3]
    return f"{cpu}, {os.cpu_count()} cores, Linux {os.uname().release}, load average {' '.join(load)}"


if __name__ == "__main__":
    main()
