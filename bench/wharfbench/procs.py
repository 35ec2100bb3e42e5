"""Processes: the process table and a process's descendants, the memory and
CPU time of one, the servers a run starts (`Server`, each in its own session),
`stop_all` (every server still running), and `http_get`, the one-request probe."""
import http.client
import os
import re
import signal
import socket
import ssl
import subprocess
import time
from urllib.parse import urlsplit

from .common import ROOT, BenchError


RUNNING = []


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_table():
    """pid -> ppid for every process."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        table[int(entry)] = int(fields[1])
    return table


def descendants(pid):
    table = process_table()
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        for child, ppid in table.items():
            if ppid == parent:
                found.append(child)
                frontier.append(child)
    return found


def group_master(pgid):
    """The process of process group `pgid` whose parent is outside the group
    (after a binary upgrade, the new master; before, the original one)."""
    table, group = process_table(), set()
    for pid in table:
        try:
            with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            group.add(pid)
    roots = sorted(pid for pid in group if table.get(pid) not in group)
    return roots[0] if roots else pgid


def tcp_time_wait():
    """TCP sockets in TIME_WAIT on this machine (/proc/net/sockstat), or None."""
    try:
        with open("/proc/net/sockstat", encoding="ascii") as f:
            for line in f:
                if line.startswith("TCP:"):
                    fields = line.split()
                    return int(fields[fields.index("tw") + 1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def children(pid):
    return [child for child, ppid in process_table().items() if ppid == pid]


def memory_of(pid):
    """{"rss": bytes, "pss": bytes} of one process, or None once it has gone."""
    try:
        rss = pss = None
        with open(f"/proc/{pid}/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
        try:
            with open(f"/proc/{pid}/smaps_rollup", encoding="utf-8") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        pss = int(line.split()[1]) * 1024
        except OSError:
            pass
        return {"rss": rss, "pss": pss}
    except OSError:
        return None


def cpu_of(pid):
    """(user, system) CPU seconds one process has used, or None once it has gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            # Fields after the command (which may hold spaces), from field 3 on.
            fields = f.read().rsplit(")", 1)[1].split()
        tick = os.sysconf("SC_CLK_TCK")
        return int(fields[11]) / tick, int(fields[12]) / tick
    except (OSError, IndexError, ValueError):
        return None


# Configuration the servers would otherwise inherit from whoever runs the
# harness (a developer's shell): every server gets exactly the configuration
# set here.
INHERITED_CONFIG = re.compile(
    r"^(WHARF_.*|NOTIFY_ENVIRONMENT|PORT|WEB_CONCURRENCY|RUST_LOG|REDIS_.*|API_HOST_NAME|SECRET_KEY|"
    r"DANGEROUS_SALT|ADMIN_CLIENT_SECRET|DOCUMENT_DOWNLOAD_.*|HTTP_PROTOCOL|HTTP_SERVE_TIMEOUT_SECONDS|"
    r"GUNICORN_.*|BIND)$")


def server_env(extra=None):
    env = {k: v for k, v in os.environ.items() if not INHERITED_CONFIG.match(k)}
    env.update(extra or {})
    return env


class Server:
    """One server process (and whatever it spawns), in its own session."""

    def __init__(self, name, argv, port, env=None, scheme="http", path="/_status", cwd=None):
        self.name, self.argv, self.port = name, argv, port
        self.env = server_env(env)
        self.scheme, self.path, self.cwd = scheme, path, cwd or ROOT
        self.proc = None
        self.log_path = None
        self.ready_s = None

    def start(self, tmp, pin=None):
        self.log_path = tmp / f"{self.name}.log"
        log = open(self.log_path, "wb")
        argv = (["taskset", "-c", pin] if pin else []) + self.argv
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            argv, env=self.env, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        log.close()
        RUNNING.append(self)
        return self

    @property
    def pid(self):
        return self.proc.pid

    def url(self, path=None):
        return f"{self.scheme}://127.0.0.1:{self.port}{path or self.path}"

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def log_text(self):
        try:
            return self.log_path.read_text(errors="replace")
        except (OSError, AttributeError):
            return ""

    def log_tail(self, lines=15):
        return "\n".join(self.log_text().splitlines()[-lines:])

    def probe(self, path=None, timeout=2.0):
        """(status, headers, body) of one GET, or None when it fails; for
        Redis, (200, {}, b"+PONG") when it answers PING."""
        if self.scheme == "redis":
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
                    sock.sendall(b"PING\r\n")
                    answer = sock.recv(64)
                return (200, {}, answer) if answer.startswith(b"+PONG") else None
            except OSError:
                return None
        return http_get(self.url(path), timeout)

    def wait_ready(self, timeout=30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            answer = self.probe(timeout=1.0)
            if answer and 200 <= answer[0] < 300:
                self.ready_s = time.monotonic() - self.started
                return answer
            if not self.alive():
                raise BenchError(f"{self.name} exited (status {self.proc.returncode}) before answering "
                                 f"{self.url()}; its output:\n{self.log_tail()}")
            time.sleep(0.05)
        raise BenchError(f"{self.name} did not answer {self.url()} within {timeout:.0f}s:\n{self.log_tail()}")

    def memory(self):
        """Per process of the tree: [{"pid", "role", "rss", "pss"}]."""
        out = []
        for pid, role in [(self.pid, "main")] + [(p, "child") for p in descendants(self.pid)]:
            m = memory_of(pid)
            if m:
                out.append({"pid": pid, "role": role, **m})
        return out

    def cpu(self):
        """(user, system) CPU seconds used by every process of the tree."""
        user = system = 0.0
        for pid in [self.pid] + descendants(self.pid):
            used = cpu_of(pid)
            if used:
                user, system = user + used[0], system + used[1]
        return user, system

    def signal(self, sig):
        os.kill(self.pid, sig)

    def stop(self):
        if self.proc is None:
            return
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            if self.proc.poll() is None:
                try:
                    os.killpg(self.pid, sig)
                except ProcessLookupError:
                    pass
                try:
                    self.proc.wait(timeout=wait)
                except subprocess.TimeoutExpired:
                    continue
        # Anything left in the session (a worker that outlived its master).
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self in RUNNING:
            RUNNING.remove(self)


def stop_all():
    for server in list(RUNNING):
        server.stop()


def http_get(url, timeout=2.0, headers=None):
    parts = urlsplit(url)
    if parts.scheme == "https":
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=timeout, context=ctx)
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""),
                     headers={"Host": "localhost", **(headers or {})})
        response = conn.getresponse()
        body = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    except (OSError, http.client.HTTPException, ssl.SSLError):
        return None
    finally:
        conn.close()
