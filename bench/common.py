"""What bench/dovecot.py and bench/watch.py both need: a CA of their own, the mail user, a
server stopped with its process group."""

import os
import pwd
import signal
import subprocess


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


def chown_tree(path, uid, gid):
    for dirpath, dirnames, filenames in os.walk(path):
        os.chown(dirpath, uid, gid)
        for name in dirnames + filenames:
            os.lchown(os.path.join(dirpath, name), uid, gid)


def mail_user():
    """Under root the mail programs run as nobody (getmail refuses root), else as the caller."""
    if os.geteuid() != 0:
        pw = pwd.getpwuid(os.geteuid())
        return pw.pw_uid, pw.pw_gid, pw.pw_name, False
    pw = pwd.getpwnam("nobody")
    return pw.pw_uid, pw.pw_gid, pw.pw_name, True


def stop_group(proc):
    """Asks a server to stop, then kills whatever is left of its process group."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
