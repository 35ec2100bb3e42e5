"""The servers a run measures, made on first use and kept for the run:
frontend, bare-hyper, gunicorn, nginx, edge and Redis, with their configuration
files and certificates; and what a scenario asks them (the admin /metrics
counters, nginx's session log, Redis's command count, the in-harness OTLP sink)."""
import os
import re
import socket
import subprocess
import threading

from .common import BENCH, NGINX_LOG_FLUSH, RESUME_VARIANTS, STATUS_BODY, TLS_ONLY_PATH, BenchError, progress
from .procs import Server, free_port, http_get, server_env

# nginx's access-log line in scenario (10): the fields of frontend's
# `Served request` line, JSON-escaped by nginx.
NGINX_ACCESS_JSON = (
    '{"timestamp":"$time_iso8601","level":"INFO","message":"Served request","method":"$request_method",'
    '"path":"$uri","query":"$args","protocol":"$server_protocol","status":$status,"bytes":$body_bytes_sent,'
    '"duration_ms":$request_time,"request_id":"$http_x_request_id","peer":"$remote_addr:$remote_port",'
    '"user_agent":"$http_user_agent","pid":$pid,"target":"nginx::access"}'
)


class Peers:
    """The servers of a run (a part of `Harness`): `self.server(name)` starts
    one on first use and returns the same one after."""

    def have(self, name):
        """Whether the binary or peer behind `name` is available."""
        s = self.s
        return {
            "bare-hyper": bool(s.hyper_bin),
            "frontend": bool(s.frontend_bin),
            "gunicorn-eventlet": bool(s.gunicorn),
            "gunicorn-sync": bool(s.gunicorn),
            "nginx": bool(s.nginx),
            "edge-ecdsa": bool(s.edge_bin),
            "edge-hs-ecdsa": bool(s.edge_bin),
            "edge-hs-rsa": bool(s.edge_bin),
            **{f"edge-{v}-{k}": bool(s.edge_bin) for v, _ in RESUME_VARIANTS for k in ("ecdsa", "rsa")},
            "frontend-metrics-off": bool(s.frontend_bin),
            "frontend-traces-on": bool(s.frontend_bin),
            "frontend-access-log": bool(s.frontend_bin),
        }[name]

    def server(self, name):
        if name in self.servers and self.servers[name].alive():
            return self.servers[name]
        if name in self.servers:
            raise BenchError(f"{name} has exited:\n{self.servers[name].log_tail()}")
        builders = {
            "bare-hyper": self.make_bare_hyper,
            "frontend": self.make_frontend,
            "gunicorn-eventlet": lambda: self.make_gunicorn("eventlet"),
            "gunicorn-sync": lambda: self.make_gunicorn("sync"),
            "nginx": self.make_nginx,
            "edge-ecdsa": lambda: self.make_edge("ecdsa"),
            "edge-hs-ecdsa": lambda: self.make_edge("ecdsa", resumption=False, name="edge-hs-ecdsa"),
            "edge-hs-rsa": lambda: self.make_edge("rsa", resumption=False, name="edge-hs-rsa"),
            "edge-cache-ecdsa": lambda: self.make_edge("ecdsa", name="edge-cache-ecdsa"),
            "edge-cache-rsa": lambda: self.make_edge("rsa", name="edge-cache-rsa"),
            "edge-tickets-ecdsa": lambda: self.make_edge("ecdsa", resumption=False, tickets=True,
                                                         name="edge-tickets-ecdsa"),
            "edge-tickets-rsa": lambda: self.make_edge("rsa", resumption=False, tickets=True,
                                                       name="edge-tickets-rsa"),
            "frontend-metrics-off": lambda: self.make_frontend("frontend-metrics-off", {"WHARF_METRICS": "false"}),
            # The default sampler (parentbased_always_on: every request without a
            # traceparent, which is every request of the load generator, is sampled).
            "frontend-traces-on": lambda: self.make_frontend("frontend-traces-on", {
                "WHARF_TRACING": "otlp",
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{self.otlp_sink().port}",
            }),
            # frontend's default: the access log on (the harness's other instances have it off).
            "frontend-access-log": lambda: self.make_frontend("frontend-access-log", {"WHARF_ACCESS_LOG": "true"}),
        }
        progress(f"starting {name}")
        server = builders[name]().start(self.tmp, self.s.server_cpus)
        self.servers[name] = server
        server.wait_ready(self.s.ready_timeout)
        return server

    def servers_available(self, names, scenario):
        out = []
        for name in names:
            if self.have(name):
                out.append(name)
            else:
                self.note(scenario, f"{name}: not run ({self.missing_reason(name)})")
        return out

    def missing_reason(self, name):
        return {
            "bare-hyper": "no HYPER_BIN",
            "frontend": "no FRONTEND_BIN",
            "gunicorn-eventlet": "not in --smoke" if self.s.smoke else "gunicorn not installed (bench/.venv)",
            "gunicorn-sync": "not in --smoke" if self.s.smoke else "gunicorn not installed (bench/.venv)",
            "nginx": "not in --smoke" if self.s.smoke else "nginx not installed",
            "edge-ecdsa": "no EDGE_BIN",
            "edge-hs-ecdsa": "no EDGE_BIN",
            "edge-hs-rsa": "no EDGE_BIN",
            **{f"edge-{v}-{k}": "no EDGE_BIN" for v, _ in RESUME_VARIANTS for k in ("ecdsa", "rsa")},
            "frontend-metrics-off": "no FRONTEND_BIN",
            "frontend-traces-on": "no FRONTEND_BIN",
            "frontend-access-log": "no FRONTEND_BIN",
        }[name]

    def make_bare_hyper(self, port=None):
        port = port or free_port()
        return Server("bare-hyper", [self.s.hyper_bin], port, {"PORT": str(port)})

    def frontend_env(self, port, admin=None):
        env = {
            "PORT": str(port), "NOTIFY_ENVIRONMENT": "development", "WHARF_BIND_ADDRESS": "127.0.0.1",
            "WHARF_LOG_FORMAT": "json", "RUST_LOG": "info", "WHARF_ACCESS_LOG": "false",
            "WHARF_DOWNLOAD_LOCAL_DIR": str(self.tmp / f"frontend-local-{port}"),
        }
        if admin:
            env["WHARF_ADMIN_ADDRESS"] = f"127.0.0.1:{admin}"
        env.update(self.frontend_ratelimit_env())
        return env

    def frontend_ratelimit_env(self):
        """Every request of a run comes from 127.0.0.1, so frontend's per-IP
        document rate limit (10 r/s, burst 20 by default) would answer almost
        all landing-page requests with 429. The limiter stays on (its check is
        part of the cost measured) with a rate no run reaches. Only set when
        the binary knows the variables (an unknown WHARF_ variable is fatal)."""
        if not hasattr(self, "_ratelimit_env"):
            try:
                known = subprocess.run([self.s.frontend_bin, "config"], capture_output=True, text=True,
                                       timeout=10, env=server_env({"NOTIFY_ENVIRONMENT": "development"})).stdout
            except (OSError, subprocess.TimeoutExpired):
                known = ""  # not frontend (the noise-floor run puts bare-hyper in its slot)
            env = {}
            for zone in ("DOCUMENT", "CONFIRM"):
                if f"WHARF_RATELIMIT_{zone}_RATE" in known:
                    env[f"WHARF_RATELIMIT_{zone}_RATE"] = "1000000r/s"
                if f"WHARF_RATELIMIT_{zone}_BURST" in known:
                    env[f"WHARF_RATELIMIT_{zone}_BURST"] = "1000000"
            self._ratelimit_env = env
        return self._ratelimit_env

    def make_frontend(self, name="frontend", extra=None):
        port, admin = free_port(), free_port()
        server = Server(name, [self.s.frontend_bin, "serve"], port, {**self.frontend_env(port, admin), **(extra or {})})
        server.admin = admin
        return server

    def make_redis(self):
        port = free_port()
        return Server("redis", ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no"], port, scheme="redis")

    def make_gunicorn(self, kind, port=None):
        port = port or free_port()
        return Server(
            f"gunicorn-{kind}",
            [self.s.gunicorn, "-c", str(BENCH / "peers" / f"gunicorn_{kind}.py"), "--chdir", str(BENCH / "peers"),
             "status_app:application"],
            port, {"BIND": f"127.0.0.1:{port}"},
        )

    def ensure_certs(self):
        if self.certs:
            return self.certs
        certs = {}
        for kind, newkey in (("ecdsa", ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]),
                             ("rsa", ["-newkey", "rsa:2048"])):
            cert, key = self.tmp / f"{kind}.pem", self.tmp / f"{kind}.key"
            out = subprocess.run(
                ["openssl", "req", "-x509", *newkey, "-nodes", "-keyout", str(key), "-out", str(cert),
                 "-days", "2", "-subj", "/CN=localhost",
                 "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                capture_output=True, text=True,
            )
            if out.returncode != 0:
                raise BenchError(f"openssl could not make the {kind} certificate:\n{out.stderr}")
            certs[kind] = (cert, key)
        self.certs = certs
        return certs

    def make_nginx(self):
        """One nginx with every listener the scenarios use: plain `return 200`
        /_status, and the seed's TLS reverse proxy (ECDSA and RSA certificates
        on two ports) in front of bare-hyper; the same proxy without session
        resumption (`hs-`, scenario 4), and with the session cache (`cache-`)
        or session tickets only (`tickets-`), each logging
        `$ssl_session_reused` (scenario 4b)."""
        certs = self.ensure_certs() if self.have("bare-hyper") else None
        prefix = self.tmp / "nginx"
        (prefix / "logs").mkdir(parents=True, exist_ok=True)
        plain, access_port = free_port(), free_port()
        conf = [
            "worker_processes auto;",
            "worker_rlimit_nofile 40000;",
            f"pid {prefix}/nginx.pid;",
            f"error_log {prefix}/logs/error.log warn;",
        ]
        if os.getuid() == 0:
            conf.append("user root;")
        conf += [
            "events { worker_connections 30000; }",
            "http {",
            "  access_log off;",
            # nginx's default (1000) ends every connection after 1000 requests, HTTP/2
            # ones with a GOAWAY; h2load does not reconnect, so its clients would stop
            # and cap nginx at clients × 1000 / duration. edge has no such limit.
            "  keepalive_requests 1000000;",
            *(f"  {d}_temp_path {prefix}/{d};" for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")),
            "  server {",
            f"    listen 127.0.0.1:{plain};",
            "    location = /_status {",
            "      default_type application/json;",
            f"      return 200 '{STATUS_BODY}';",
            "    }",
            "  }",
            # Scenario (10): the same answer with a JSON access log (the fields of
            # frontend's line), written per request as nginx does by default.
            f"  log_format access_json escape=json '{NGINX_ACCESS_JSON}';",
            "  server {",
            f"    listen 127.0.0.1:{access_port};",
            f"    access_log {prefix}/logs/access-json.log access_json;",
            "    location = /_status {",
            "      default_type application/json;",
            f"      return 200 '{STATUS_BODY}';",
            "    }",
            "  }",
        ]
        tls_ports = {}
        if certs:
            hyper = self.server("bare-hyper")
            conf += [
                "  map $http_upgrade $connection_upgrade { default upgrade; '' ''; }",
                "  upstream backend {",
                f"    server 127.0.0.1:{hyper.port};",
                "    keepalive 32;",
                "  }",
                "  ssl_protocols TLSv1.2 TLSv1.3;",
                "  ssl_ciphers ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
                "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384;",
                "  ssl_prefer_server_ciphers off;",
                "  ssl_session_cache shared:SSL:10m;",
                "  ssl_session_timeout 1d;",
                "  ssl_session_tickets off;",
                # Scenario (4b): one character per connection, `r` (resumed) or `.`.
                "  log_format resumed '$ssl_session_reused';",
            ]
            # Per listener: its session settings (the http block's by default).
            sessions = {
                "": [],
                "hs-": ["ssl_session_cache off;", "ssl_session_tickets off;"],
                # The http block's shared cache, tickets off: counted, not changed.
                "cache-": [],
                # nginx's ticket keys (OpenSSL's, made before the fork) are the same in every worker.
                "tickets-": ["ssl_session_tickets on;", "ssl_session_cache off;"],
            }
            for kind, cert_kind, prefix_ in [(f"{p}{k}", k, p) for p in sessions for k in certs]:
                cert, key = certs[cert_kind]
                port = free_port()
                tls_ports[kind] = port
                logged = prefix_ in ("cache-", "tickets-")
                conf += [
                    "  server {",
                    f"    listen 127.0.0.1:{port} ssl http2;",
                    "    server_name localhost;",
                    *(f"    {d}" for d in sessions[prefix_]),
                    *([f"    access_log {prefix}/logs/{kind}.log resumed buffer=64k flush={NGINX_LOG_FLUSH}s;"]
                      if logged else []),
                    f"    ssl_certificate {cert};",
                    f"    ssl_certificate_key {key};",
                    "    add_header X-Frame-Options DENY;",
                    "    add_header X-Content-Type-Options nosniff;",
                    '    add_header Strict-Transport-Security "max-age=63072000; includeSubDomains; preload" always;',
                    "    client_max_body_size 10M;",
                    "    proxy_connect_timeout 30s;",
                    "    proxy_send_timeout 60s;",
                    "    proxy_read_timeout 60s;",
                    # The same answer without proxying: what TLS and HTTP alone cost
                    # (scenario 3's floor); edge has the same location.
                    f"    location = {TLS_ONLY_PATH} {{",
                    "      default_type application/json;",
                    f"      return 200 '{STATUS_BODY}';",
                    "    }",
                    "    location / {",
                    "      proxy_pass http://backend;",
                    "      proxy_http_version 1.1;",
                    "      proxy_set_header Upgrade $http_upgrade;",
                    "      proxy_set_header Connection $connection_upgrade;",
                    "      proxy_set_header Host $host;",
                    "      proxy_set_header X-Real-IP $remote_addr;",
                    "      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
                    "      proxy_set_header X-Forwarded-Proto $scheme;",
                    "    }",
                    "  }",
                ]
        conf.append("}")
        path = prefix / "nginx.conf"
        path.write_text("\n".join(conf) + "\n")
        server = Server("nginx", [self.s.nginx, "-p", str(prefix), "-c", str(path), "-e", "stderr",
                                  "-g", "daemon off;"], plain)
        server.tls_ports = tls_ports
        server.logs = prefix / "logs"
        server.logged_port = access_port
        return server

    def nginx_session_reused(self, kind):
        """Connections logged on nginx's `kind` listener so far, by
        `$ssl_session_reused`: {"r": resumed, ".": full handshakes}."""
        path = self.server("nginx").logs / f"{kind}.log"
        counts = {"r": 0, ".": 0}
        if path.exists():
            for line in path.read_text().split():
                counts[line] = counts.get(line, 0) + 1
        return counts

    def make_edge(self, kind, port=None, admin=True, name=None, resumption=True, tickets=False):
        """edge with the seed's settings; `resumption`: a session cache of
        20480 sessions (else none), `tickets`: session tickets on."""
        cert, key = self.ensure_certs()[kind]
        hyper = self.server("bare-hyper")
        port = port or free_port()
        name = name or f"edge-{kind}"
        admin = free_port() if admin else None
        admin_section = f'address = "127.0.0.1:{admin}"' if admin else "enabled = false"
        toml = f"""
[[listen]]
address = "127.0.0.1:{port}"
ssl = true

[admin]
{admin_section}

[http]
access_log = false
worker_connections = 30000
hsts = "max-age=63072000; includeSubDomains; preload"
x_frame_options = "DENY"
client_max_body_size = "10M"

[tls]
session_tickets = {"true" if tickets else "false"}
session_cache = {20480 if resumption else 0}
watch_interval = "0s"

[proxy]
connect_timeout = "30s"
send_timeout = "60s"
read_timeout = "60s"

[[upstream]]
name = "backend"
keepalive = 32
servers = [{{ address = "127.0.0.1:{hyper.port}" }}]

[[server]]
server_name = ["localhost"]
default_server = true
ssl_certificate = "{cert}"
ssl_certificate_key = "{key}"

# The same answer without proxying (nginx has the same location): scenario 3's floor.
[[server.location]]
path = "{TLS_ONLY_PATH}"
return = {{ status = 200, body = '{STATUS_BODY}' }}

[[server.location]]
path = "/"
proxy_pass = "backend"

# nginx's `worker_processes auto`: a worker process per CPU, one thread each.
[supervisor]
"""
        path = self.tmp / f"{name}.toml"
        path.write_text(toml)
        server = Server(name, [self.s.edge_bin, "--config", str(path)], port, {"RUST_LOG": "info"}, scheme="https")
        server.admin = admin
        return server

    def nginx_tls_url(self, kind, path="/_status"):
        nginx = self.server("nginx")
        if kind not in nginx.tls_ports:
            raise BenchError("nginx has no TLS listener (bare-hyper, the upstream, is missing)")
        return f"https://127.0.0.1:{nginx.tls_ports[kind]}{path}"

    def frontend_worker_requests(self, server):
        answer = http_get(f"http://127.0.0.1:{server.admin}/metrics")
        if not answer or answer[0] != 200:
            return None
        return {m.group(1): int(float(m.group(2))) for m in
                re.finditer(r'^wharf_worker_requests_total\{slot="(\d+)"\}\s+(\S+)', answer[2].decode(), re.M)}

    def frontend_metric_rss(self, server):
        answer = http_get(f"http://127.0.0.1:{server.admin}/metrics")
        if not answer or answer[0] != 200:
            return None
        return {m.group(1): int(float(m.group(2))) for m in
                re.finditer(r'^wharf_worker_rss_bytes\{slot="(\d+)"\}\s+(\S+)', answer[2].decode(), re.M)}

    def otlp_sink(self):
        """An OTLP/HTTP sink in this process: answers 200 to every POST and
        counts requests and bytes (what frontend-traces-on exports)."""
        if getattr(self, "_otlp_sink", None):
            return self._otlp_sink
        import http.server

        class Sink(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            counts = {"requests": 0, "bytes": 0}

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                Sink.counts["requests"] += 1
                Sink.counts["bytes"] += len(body)
                self.send_response(200)
                self.send_header("Content-Type", self.headers.get("Content-Type") or "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Sink)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        server.port = server.server_address[1]
        server.counts = Sink.counts
        self._otlp_sink = server
        return server

    def edge_tls_metrics(self, server):
        answer = http_get(f"http://127.0.0.1:{server.admin}/metrics")
        if not answer or answer[0] != 200:
            return {}
        out = {}
        for m in re.finditer(r"^(edge_tls_handshakes_total|edge_tls_resumed_total)(?:\{[^}]*\})?\s+(\S+)",
                             answer[2].decode(), re.M):
            out[m.group(1)] = out.get(m.group(1), 0) + int(float(m.group(2)))
        return out


def redis_commands(port):
    """Redis's total_commands_processed, or None."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(b"INFO stats\r\n")
            data = b""
            while b"total_commands_processed" not in data or not data.endswith(b"\r\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        m = re.search(rb"total_commands_processed:(\d+)", data)
        return int(m.group(1)) if m else None
    except OSError:
        return None
