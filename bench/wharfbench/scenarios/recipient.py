"""(11) recipient: the production path. The seed stack (nginx with TLS and
`limit_req` → gunicorn with 10 eventlet workers → a Flask app doing what the
Document Download Frontend's views do, bench/peers/ddf_app.py) against the wharf
stack (edge with TLS → frontend with 2 workers, its rate limiter in Redis), both
calling the same stub of the Notify and document APIs (bench/hello's
`stub-apis`), driven through a recipient's walk by wrk over TLS.

Two variants: the mix (the stub answering at once, the run's connections), and
a slow dependency (the stub's `/check` 200 ms late, 1000 connections)."""
import base64
import http.client
import os
import re
import secrets
import shutil
import ssl
import time
import uuid
from urllib.parse import urlencode, urlsplit

from ..common import BENCH, BenchError, mb, progress
from ..procs import Server, free_port

# The stub's documents: one that needs email confirmation (its id starts with
# `c`, see bench/hello/src/stub_apis.rs) and one that does not.
SERVICE_ID = "5e3a2a1c-9f3c-4b1e-8a2c-1d3e5f7a9b0c"
CONFIRM_DOC = "c0f1e2d3-a4b5-4c6d-8e7f-0a1b2c3d4e5f"
PLAIN_DOC = "9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d"
KEY = "8BzVyH5fGA_3qMbVnOhXxk0WJz8K0jnwhN7mYQ3pV0c"
EMAIL = "recipient@example.gov.uk"
# Out of any run's reach: the limiters stay on (their checks are part of the
# cost measured), every request passes. The seed's own values (10r/s burst 20 per
# client IP; the confirm POST 1r/s burst 5) would refuse nearly every request of
# a load generator that is one client.
UNREACHED_RATE, UNREACHED_BURST = "1000000r/s", 1000000
SLOW_DELAY_MS = 200
SLOW_CONNECTIONS = 1000
SLOW_MIN_DURATION = 8


def b64(uuid_text):
    """A UUID as the frontend's URLs carry it: URL-safe base64, no padding."""
    return base64.urlsafe_b64encode(uuid.UUID(uuid_text).bytes).decode().rstrip("=")


def walk():
    """The recipient's walk, as (label, method, path, is_form_post): the
    document that needs confirmation (landing, confirm form, confirm POST,
    download page), then the one that does not (landing, download page)."""
    conf = f"/d/{b64(SERVICE_ID)}/{b64(CONFIRM_DOC)}"
    plain = f"/d/{b64(SERVICE_ID)}/{b64(PLAIN_DOC)}"
    q = f"?key={KEY}"
    return [
        ("landing (confirm)", "GET", f"{conf}{q}", False),
        ("confirm form", "GET", f"{conf}/confirm-email-address{q}", False),
        ("confirm POST", "POST", f"{conf}/confirm-email-address{q}", True),
        ("download (confirmed)", "GET", f"{conf}/download{q}", False),
        ("landing (no confirm)", "GET", f"{plain}{q}", False),
        ("download (no confirm)", "GET", f"{plain}/download{q}", False),
    ]


def tls_request(url, method="GET", headers=None, body=None, timeout=10.0):
    """(status, [(header, value)], body) of one request over TLS (any certificate)."""
    parts = urlsplit(url)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=timeout, context=ctx)
    try:
        conn.request(method, parts.path + (f"?{parts.query}" if parts.query else ""), body=body,
                     headers={"Host": "localhost", **(headers or {})})
        response = conn.getresponse()
        return response.status, response.getheaders(), response.read()
    except (OSError, http.client.HTTPException) as e:
        raise BenchError(f"{method} {url}: {e}") from e
    finally:
        conn.close()


def lua_quote(text):
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def pss(servers):
    """PSS summed over every process of `servers` (bytes), and the process count."""
    procs = [p for s in servers for p in s.memory()]
    return sum(p["pss"] or 0 for p in procs), len(procs)


class Recipient:
    """Scenario (11) recipient: a part of `Harness`."""

    def recipient_needs(self):
        s = self.s
        missing = []
        if s.load_tool != "wrk":
            missing.append("wrk")
        for attr, what in (("edge_bin", "EDGE_BIN"), ("stub_bin", "STUB_BIN (stub-apis)"), ("nginx", "nginx"),
                           ("gunicorn", "gunicorn (bench/.venv)")):
            if not getattr(s, attr, None):
                missing.append(what)
        if not shutil.which("redis-server"):
            missing.append("redis-server")
        if s.gunicorn and not os.path.exists(os.path.join(os.path.dirname(s.gunicorn), "python")):
            missing.append("bench/.venv's python")
        if missing:
            raise BenchError(f"needs {', '.join(missing)}")

    def start_named(self, server):
        progress(f"starting {server.name}")
        server.start(self.tmp, self.s.server_cpus)
        self.servers[server.name] = server
        server.wait_ready(self.s.ready_timeout)
        return server

    def make_stub(self, port, delay_ms=0):
        argv = [self.s.stub_bin] + (["--delay-ms", str(delay_ms)] if delay_ms else [])
        return Server("stub-apis" if not delay_ms else f"stub-apis-{delay_ms}ms", argv, port, {"PORT": str(port)})

    def make_seed_app(self, stub_url):
        port = free_port()
        return Server(
            "seed-gunicorn",
            [self.s.gunicorn, "-c", str(BENCH / "peers" / "gunicorn_eventlet.py"), "--chdir", str(BENCH / "peers"),
             "ddf_app:application"],
            port, {"BIND": f"127.0.0.1:{port}", "NOTIFY_ENVIRONMENT": "production", "API_HOST_NAME": stub_url,
                   "DOCUMENT_DOWNLOAD_API_HOST_NAME": stub_url, "DOCUMENT_DOWNLOAD_API_HOST_NAME_INTERNAL": stub_url,
                   "SECRET_KEY": secrets.token_urlsafe(48), "ADMIN_CLIENT_SECRET": secrets.token_urlsafe(48),
                   "HTTP_PROTOCOL": "https"},
        )

    def make_seed_nginx(self, app_port):
        """The seed's nginx (seeds 001/004): TLS 1.2/1.3 with its ciphers and
        session cache, its headers, `limit_req` on the document routes (the
        confirm POST in a second zone), `keepalive 32` to gunicorn, an access log."""
        cert, key = self.ensure_certs()["ecdsa"]
        prefix = self.tmp / "seed-nginx"
        (prefix / "logs").mkdir(parents=True, exist_ok=True)
        port = free_port()
        conf = [
            "worker_processes auto;",
            "worker_rlimit_nofile 40000;",
            f"pid {prefix}/nginx.pid;",
            f"error_log {prefix}/logs/error.log warn;",
            *(["user root;"] if os.getuid() == 0 else []),
            "events { worker_connections 30000; }",
            "http {",
            f"  access_log {prefix}/logs/access.log;",
            "  keepalive_requests 1000000;",
            *(f"  {d}_temp_path {prefix}/{d};" for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")),
            "  map $http_upgrade $connection_upgrade { default upgrade; '' ''; }",
            "  map $request_method $confirm_key { POST $binary_remote_addr; default ''; }",
            f"  limit_req_zone $binary_remote_addr zone=document:10m rate={UNREACHED_RATE};",
            f"  limit_req_zone $confirm_key zone=confirm:10m rate={UNREACHED_RATE};",
            "  upstream backend {",
            f"    server 127.0.0.1:{app_port};",
            "    keepalive 32;",
            "  }",
            "  ssl_protocols TLSv1.2 TLSv1.3;",
            "  ssl_ciphers ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
            "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384;",
            "  ssl_prefer_server_ciphers off;",
            "  ssl_session_cache shared:SSL:10m;",
            "  ssl_session_timeout 1d;",
            "  ssl_session_tickets off;",
            "  server {",
            f"    listen 127.0.0.1:{port} ssl http2;",
            "    server_name localhost;",
            f"    ssl_certificate {cert};",
            f"    ssl_certificate_key {key};",
            "    add_header X-Frame-Options DENY;",
            "    add_header X-Content-Type-Options nosniff;",
            '    add_header X-XSS-Protection "1; mode=block";',
            '    add_header Strict-Transport-Security "max-age=63072000; includeSubDomains; preload" always;',
            "    client_max_body_size 10M;",
            "    proxy_connect_timeout 30s;",
            "    proxy_send_timeout 60s;",
            "    proxy_read_timeout 60s;",
            "    proxy_http_version 1.1;",
            "    proxy_set_header Upgrade $http_upgrade;",
            "    proxy_set_header Connection $connection_upgrade;",
            "    proxy_set_header Host $host;",
            "    proxy_set_header X-Real-IP $remote_addr;",
            "    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
            "    proxy_set_header X-Forwarded-Proto $scheme;",
            "    location /d/ {",
            f"      limit_req zone=document burst={UNREACHED_BURST} nodelay;",
            f"      limit_req zone=confirm burst={UNREACHED_BURST} nodelay;",
            "      proxy_pass http://backend;",
            "    }",
            "    location / {",
            "      proxy_pass http://backend;",
            "    }",
            "  }",
            "}",
        ]
        path = prefix / "nginx.conf"
        path.write_text("\n".join(conf) + "\n")
        return Server("seed-nginx", [self.s.nginx, "-p", str(prefix), "-c", str(path), "-e", "stderr",
                                     "-g", "daemon off;"], port, scheme="https")

    def make_wharf_frontend(self, stub_url, redis_port):
        port = free_port()
        env = self.frontend_env(port)
        env.pop("WHARF_DOWNLOAD_LOCAL_DIR", None)
        env.update({
            # Deployed: every required variable set, strong keys, no local APIs.
            "NOTIFY_ENVIRONMENT": "production", "WHARF_BIND_ADDRESS": "127.0.0.1", "WEB_CONCURRENCY": "2",
            "WHARF_ACCESS_LOG": "true", "REDIS_ENABLED": "true", "REDIS_URL": f"redis://127.0.0.1:{redis_port}",
            "API_HOST_NAME": stub_url, "DOCUMENT_DOWNLOAD_API_HOST_NAME": stub_url,
            "DOCUMENT_DOWNLOAD_API_HOST_NAME_INTERNAL": stub_url, "HTTP_PROTOCOL": "https",
            "SECRET_KEY": secrets.token_urlsafe(48), "DANGEROUS_SALT": secrets.token_urlsafe(48),
            "ADMIN_CLIENT_SECRET": secrets.token_urlsafe(48),
        })
        return Server("wharf-frontend", [self.s.frontend_bin, "serve"], port, env)

    def make_wharf_edge(self, frontend_port):
        cert, key = self.ensure_certs()["ecdsa"]
        port = free_port()
        toml = f"""
[[listen]]
address = "127.0.0.1:{port}"
ssl = true

[admin]
enabled = false

[http]
access_log = true
worker_connections = 30000
hsts = "max-age=63072000; includeSubDomains; preload"
x_frame_options = "DENY"
client_max_body_size = "10M"

[tls]
session_tickets = false
session_cache = 20480
watch_interval = "0s"

[proxy]
connect_timeout = "30s"
send_timeout = "60s"
read_timeout = "60s"

[[upstream]]
name = "frontend"
keepalive = 32
servers = [{{ address = "127.0.0.1:{frontend_port}" }}]

[[server]]
server_name = ["localhost"]
default_server = true
ssl_certificate = "{cert}"
ssl_certificate_key = "{key}"

[[server.location]]
path = "/"
proxy_pass = "frontend"

# A worker process per CPU, as nginx's `worker_processes auto`.
[supervisor]
"""
        path = self.tmp / "wharf-edge.toml"
        path.write_text(toml)
        return Server("wharf-edge", [self.s.edge_bin, "--config", str(path)], port, {"RUST_LOG": "info"},
                      scheme="https")

    def prepare_walk(self, name, base):
        """Walks each step once over TLS (checking each answer), takes the CSRF
        cookie and token a browser would carry into the confirm POST, and writes
        the wrk Lua script that cycles the walk. Returns (script, page sizes)."""
        steps = walk()
        status, headers, body = tls_request(base + steps[1][2])
        if status != 200:
            raise BenchError(f"{name}: the confirm form answered {status}: {body[:300]!r}")
        cookies = "; ".join(v.split(";", 1)[0] for k, v in headers if k.lower() == "set-cookie")
        m = re.search(rb'name="csrf_token"[^>]*value="([^"]*)"', body)
        if not cookies or not m:
            raise BenchError(f"{name}: no session cookie or CSRF token on the confirm form")
        form = urlencode({"csrf_token": m.group(1).decode(), "email_address": EMAIL})
        post_headers = {"Cookie": cookies, "Content-Type": "application/x-www-form-urlencoded"}
        sizes, expected = {}, {"POST": 302, "GET": 200}
        for label, method, path, is_post in steps:
            status, headers, body = tls_request(base + path, method, post_headers if is_post else None,
                                                form if is_post else None)
            if status != expected[method]:
                raise BenchError(f"{name}: {label} answered {status} (expected {expected[method]}): {body[:300]!r}")
            if is_post and not any(k.lower() == "set-cookie" and v.startswith("document_access_signed_data=")
                                   for k, v in headers):
                raise BenchError(f"{name}: the confirm POST set no document_access_signed_data cookie")
            sizes[label] = len(body)
        lines = ["-- wrk: a recipient's walk, cycled (written by bench/wharfbench/scenarios/recipient.py)",
                 "local steps = {"]
        for label, method, path, is_post in steps:
            hdrs = "{" + ", ".join(f"[{lua_quote(k)}] = {lua_quote(v)}" for k, v in post_headers.items()) + "}" \
                if is_post else "{}"
            lines.append(f"  {{{lua_quote(method)}, {lua_quote(path)}, {hdrs}, "
                         f"{lua_quote(form) if is_post else 'nil'}}},  -- {label}")
        lines += ["}", "local i = 0", "request = function()", "  i = i % #steps + 1", "  local s = steps[i]",
                  "  return wrk.format(s[1], s[2], s[3], s[4])", "end", ""]
        script = self.tmp / f"walk-{name}.lua"
        script.write_text("\n".join(lines))
        return script, sizes

    def scenario_recipient(self):
        self.recipient_needs()
        nproc = os.cpu_count() or 1
        stub_port = free_port()
        stub = self.start_named(self.make_stub(stub_port))
        stub_url = f"http://127.0.0.1:{stub_port}"
        redis = self.make_redis()
        redis.name = "wharf-redis"
        redis = self.start_named(redis)
        seed_app = self.start_named(self.make_seed_app(stub_url))
        seed_proxy = self.start_named(self.make_seed_nginx(seed_app.port))
        front = self.start_named(self.make_wharf_frontend(stub_url, redis.port))
        edge = self.start_named(self.make_wharf_edge(front.port))
        stacks = {"wharf": [edge, front, redis], "seed": [seed_proxy, seed_app]}
        bases = {"wharf": f"https://127.0.0.1:{edge.port}", "seed": f"https://127.0.0.1:{seed_proxy.port}"}
        scripts, sizes = {}, {}
        for name, base in bases.items():
            scripts[base], sizes[name] = self.prepare_walk(name, base)
        idle = {name: pss(servers) for name, servers in stacks.items()}
        by_base = {base: name for name, base in bases.items()}
        current_stub = [stub]

        def runner(connections):
            def run(base, seconds):
                servers = stacks[by_base[base]]
                stub_before = sum(current_stub[0].cpu())
                stack_before = sum(sum(s.cpu()) for s in servers)
                started = time.monotonic()
                result = self.load.wrk(base + "/", seconds, connections=connections, script=scripts[base])
                elapsed = time.monotonic() - started
                stub_cpu = sum(current_stub[0].cpu()) - stub_before
                stack_cpu = sum(sum(s.cpu()) for s in servers) - stack_before
                result["stub_cpu_s"] = round(stub_cpu, 3)
                result["stub_cpu_pct_of_machine"] = round(100 * stub_cpu / (elapsed * nproc), 1)
                result["stack_cpu_pct_of_machine"] = round(100 * stack_cpu / (elapsed * nproc), 1)
                if result.get("requests"):
                    result["stub_cpu_us_per_request"] = round(stub_cpu * 1e6 / result["requests"], 1)
                    result["stack_cpu_us_per_request"] = round(stack_cpu * 1e6 / result["requests"], 1)
                return result
            return run

        subjects = [("wharf", bases["wharf"]), ("seed", bases["seed"])]
        mix = self.compare("recipient mix", subjects, runner(self.s.connections))
        after = {name: pss(servers) for name, servers in stacks.items()}
        rows = {r["name"]: r for r in mix["rows"]}
        for r in mix["rows"]:
            best = max(r["runs"], key=lambda x: x["rps"])
            for k in ("stub_cpu_pct_of_machine", "stack_cpu_pct_of_machine", "stub_cpu_us_per_request",
                      "stack_cpu_us_per_request"):
                r[k] = best.get(k)
        wharf, seed = rows["wharf"], rows["seed"]
        ratio = round(wharf["rps"] / seed["rps"], 3) if seed["rps"] else None
        mix["ratios"] = {"wharf/seed": ratio}
        mix["tool"] = f"wrk -t{self.s.wrk_threads} -c{self.s.connections} --latency -s <walk>.lua (HTTP/1.1 over TLS 1.3)"
        memory = {name: {"idle_pss_mb": mb(idle[name][0]), "after_pss_mb": mb(after[name][0]),
                         "processes": after[name][1]} for name in stacks}
        stub_mem = pss([stub])[0]
        mem_ratio = round(after["wharf"][0] / after["seed"][0], 4) if after["seed"][0] else None

        # Variant 2: the document API 200 ms late, 1000 connections.
        progress(f"recipient: restarting the stub with --delay-ms {SLOW_DELAY_MS}")
        stub.stop()
        slow_stub = self.start_named(self.make_stub(stub_port, SLOW_DELAY_MS))
        current_stub[0] = slow_stub
        # 1000 new TLS connections take a few seconds to open on 2 shared CPUs:
        # runs shorter than SLOW_MIN_DURATION measure little but the ramp.
        slow = self.compare("recipient slow API", subjects, runner(SLOW_CONNECTIONS),
                            duration=max(self.s.duration, SLOW_MIN_DURATION), rounds=1)
        slow_rows = {r["name"]: r for r in slow["rows"]}
        for r in slow["rows"]:
            best = max(r["runs"], key=lambda x: x["rps"])
            r["errors"] = best.get("errors")
            r["stub_cpu_pct_of_machine"] = best.get("stub_cpu_pct_of_machine")
        slow["tool"] = (f"wrk -t{self.s.wrk_threads} -c{SLOW_CONNECTIONS} --timeout 5s --latency -s <walk>.lua; "
                        f"stub /check delayed {SLOW_DELAY_MS} ms")
        after_slow = {name: pss(servers) for name, servers in stacks.items()}
        memory_slow = {name: mb(after_slow[name][0]) for name in stacks}

        self.target("recipient-rps", "production path: wharf stack ≥ 20× the seed stack (recipient's walk, req/s)",
                    ratio, 20, ">=", "×", f"wharf {wharf['rps']:.0f} req/s, seed {seed['rps']:.0f} req/s")
        p99w, p99s = wharf["latency_ms"].get("p99"), seed["latency_ms"].get("p99")
        self.target("recipient-p99", "production path: wharf stack p99 ≤ the seed stack's", p99w, p99s, "<=", "ms",
                    f"seed p99 {p99s} ms")
        self.target("recipient-memory", "production path: wharf stack memory ≤ 1/10 of the seed stack's (PSS, "
                    "every process, after load)", mem_ratio, 0.1, "<=", "×",
                    f"wharf {memory['wharf']['after_pss_mb']} MB, seed {memory['seed']['after_pss_mb']} MB")
        sw = slow_rows["wharf"]
        self.target("recipient-slow-errors", f"API {SLOW_DELAY_MS} ms late: wharf serves {SLOW_CONNECTIONS} "
                    "connections with no error", sw.get("errors_total"), 0, "==", "errors",
                    f"seed {slow_rows['seed'].get('errors_total')} errors")
        self.target("recipient-slow-p99", f"API {SLOW_DELAY_MS} ms late, {SLOW_CONNECTIONS} connections: wharf "
                    "p99 ≤ 250 ms", sw["latency_ms"].get("p99"), 250, "<=", "ms",
                    f"seed p99 {slow_rows['seed']['latency_ms'].get('p99')} ms")
        return {
            "method": (
                "Both stacks over TLS 1.3 on loopback, each calling the same stub-apis (bench/hello) for the Notify "
                "API and the document API. Seed: nginx (seeds 001/004: TLS, headers, limit_req, keepalive 32) → "
                "gunicorn 23, 10 eventlet workers (gunicorn_eventlet.py, the seed's settings) → "
                "bench/peers/ddf_app.py (Flask + Jinja2 + requests, a new connection per API call). wharf: edge → "
                "frontend (2 workers, NOTIFY_ENVIRONMENT=production, access log and metrics on, rate limiter in "
                "Redis) → the stub over its pooled client. Both limiters on with a rate no run reaches. The walk "
                "(one wrk Lua script per stack, cycled by each wrk thread): " +
                ", ".join(label for label, *_ in walk()) + "; the confirm POST carries the CSRF cookie and token "
                "of one confirm form fetched before the run (valid an hour)"),
            "walk": [{"step": label, "method": method, "bytes": {n: sizes[n][label] for n in sizes}}
                     for label, method, _, _ in walk()],
            "mix": mix,
            "memory": memory,
            "memory_after_slow_mb": memory_slow,
            "memory_ratio_wharf_over_seed": mem_ratio,
            "stub_pss_mb": mb(stub_mem),
            "slow": slow,
            "slow_delay_ms": SLOW_DELAY_MS,
        }
