"""TLS scenarios, edge beside nginx in front of bare-hyper: (3) edge-tls,
keep-alive HTTP/1.1 and HTTP/2 with what a proxied request costs each process;
(4) handshakes, full handshakes per second; (4b) resume, returning clients."""
import resource
import shutil
import statistics
import time

from ..common import NGINX_LOG_FLUSH, RESUME_VARIANTS, TLS_ONLY_PATH, BenchError
from ..procs import tcp_time_wait


def cpu_per_request(rows):
    """{name: {"user", "system", "total"}}: the median over each server's runs
    of its CPU microseconds per request."""
    out = {}
    for row in rows:
        runs = [x["cpu_us_per_request"] for x in row["runs"] if x.get("cpu_us_per_request")]
        if runs:
            user = statistics.median(x["user"] for x in runs)
            system = statistics.median(x["system"] for x in runs)
            out[row["name"]] = {"user": round(user, 2), "system": round(system, 2), "total": round(user + system, 2)}
    return out


def cpu_budget(proxied, tls_only):
    """{name: µs per proxied request}: the proxy, its upstream and the load
    generator (medians over the runs), their sum (what one request costs the
    machine), and the proxy's cost of proxying: its CPU per proxied request
    less its CPU per request it answers itself (`tls_only`, same TLS, same
    client)."""
    def med(row, key):
        values = [x[key] for x in row["runs"] if key in x]
        return round(statistics.median(values), 2) if values else None
    floor = cpu_per_request(tls_only)
    out = {}
    for name, c in cpu_per_request(proxied).items():
        row = next(r for r in proxied if r["name"] == name)
        upstream, load = med(row, "upstream_cpu_us_per_request"), med(row, "load_generator_cpu_us_per_request")
        entry = {"proxy": c["total"], "upstream": upstream, "load_generator": load}
        if upstream is not None and load is not None:
            entry["machine"] = round(c["total"] + upstream + load, 2)
        if name in floor:
            entry["proxy_without_proxying"] = floor[name]["total"]
            entry["proxying_user"] = round(c["user"] - floor[name]["user"], 2)
            entry["proxying_system"] = round(c["system"] - floor[name]["system"], 2)
        out[name] = entry
    return out


class EdgeTls:
    """Scenarios (3) edge-tls, (4) handshakes and (4b) resume: a part of `Harness`."""

    def scenario_edge_tls(self):
        if not (self.have("edge-ecdsa") and self.have("nginx") and self.have("bare-hyper")):
            raise BenchError("needs edge, nginx and bare-hyper (the upstream)")
        if self.s.load_tool != "wrk":
            raise BenchError("needs wrk")
        edge = self.server("edge-ecdsa")
        upstream = self.server("bare-hyper")
        nginx_url = self.nginx_tls_url("ecdsa")
        tls_only = {"edge": edge.url(TLS_ONLY_PATH), "nginx": self.nginx_tls_url("ecdsa", TLS_ONLY_PATH)}
        subjects = [("edge", edge.url()), ("nginx", nginx_url)]
        by_url = {edge.url(): edge, nginx_url: self.server("nginx"),
                  tls_only["edge"]: edge, tls_only["nginx"]: self.server("nginx")}

        def measured(run_load):
            # The proxy's own CPU per request (all its processes, user and
            # kernel): steadier than req/s on a shared 2-CPU machine, and it
            # says where a difference comes from. The upstream's and the load
            # generator's too: the three share the machine's CPUs, so what
            # one request costs them all together bounds the req/s.
            def runner(url, seconds):
                time_wait = tcp_time_wait()
                before = by_url[url].cpu()
                up_before = upstream.cpu()
                load_before = resource.getrusage(resource.RUSAGE_CHILDREN)
                run = run_load(url, seconds)
                load_after = resource.getrusage(resource.RUSAGE_CHILDREN)
                up_after = upstream.cpu()
                after = by_url[url].cpu()
                n = run.get("requests")
                # Connections closed recently on this machine (TIME_WAIT):
                # a proxy that opens and closes upstream connections leaves
                # them, and they slow every later connect() for a minute.
                run["tcp_time_wait"] = {"before": time_wait, "after": tcp_time_wait()}
                if n:
                    run["cpu_us_per_request"] = {
                        "user": round((after[0] - before[0]) * 1e6 / n, 2),
                        "system": round((after[1] - before[1]) * 1e6 / n, 2),
                    }
                    run["upstream_cpu_us_per_request"] = round(
                        (sum(up_after) - sum(up_before)) * 1e6 / n, 2)
                    run["load_generator_cpu_us_per_request"] = round(
                        (load_after.ru_utime + load_after.ru_stime - load_before.ru_utime
                         - load_before.ru_stime) * 1e6 / n, 2)
                return run
            return runner

        h1 = self.compare("edge-tls h1", subjects, measured(self.load.wrk))
        floor = self.compare("edge-tls h1 without proxying", list(tls_only.items()), measured(self.load.wrk))
        out = {"upstream": "bare-hyper (keep-alive pool of 32 from each proxy)", "certificate": "ECDSA P-256",
               "http1": {**h1, "tool": self.tool_line()}}
        out["http1"]["cpu_us_per_request"] = cpu_per_request(h1["rows"])
        out["http1"]["budget"] = cpu_budget(h1["rows"], floor["rows"])
        floor["cpu_us_per_request"] = cpu_per_request(floor["rows"])
        floor["path"] = TLS_ONLY_PATH
        out["tls_only"] = floor
        rows = {r["name"]: r for r in h1["rows"]}
        ratio = round(rows["edge"]["rps"] / rows["nginx"]["rps"], 3) if rows["nginx"]["rps"] else None
        out["http1"]["ratios"] = {"edge/nginx": ratio}
        self.target("tls-rps", "edge TLS keep-alive ≥ 1.1× nginx (HTTP/1.1)", ratio, 1.1, ">=", "×")
        p99e, p99n = rows["edge"]["latency_ms"].get("p99"), rows["nginx"]["latency_ms"].get("p99")
        self.target("tls-p99", "edge TLS keep-alive p99 ≤ nginx p99", p99e, p99n, "<=", "ms",
                    f"nginx p99 {p99n} ms")
        if shutil.which("h2load"):
            h2 = self.compare("edge-tls h2", subjects, measured(lambda url, d: self.load.h2load(url, d, self.tmp)))
            h2["cpu_us_per_request"] = cpu_per_request(h2["rows"])
            rows2 = {r["name"]: r for r in h2["rows"]}
            h2["ratios"] = {"edge/nginx": round(rows2["edge"]["rps"] / rows2["nginx"]["rps"], 3)
                            if rows2["nginx"]["rps"] else None}
            h2["tool"] = (f"h2load -t{self.s.wrk_threads} -c{self.s.h2_clients} -m{self.s.h2_streams} "
                          "(HTTP/2 over TLS 1.3)")
            out["http2"] = h2
        else:
            self.note("edge-tls", "HTTP/2: not run (h2load missing; apt-get install nghttp2-client)")
        return out

    def scenario_handshakes(self):
        if not (self.have("edge-ecdsa") and self.have("nginx") and self.have("bare-hyper")):
            raise BenchError("needs edge, nginx and bare-hyper (the upstream)")
        if self.s.load_tool != "wrk":
            raise BenchError("needs wrk")
        out = {"method": "wrk with `Connection: close`: every request is a new TCP connection and a new TLS 1.3 "
                         "handshake, so req/s = handshakes/s. wrk resumes sessions when the server allows it, so "
                         "this scenario uses listeners with session resumption off on both servers (edge "
                         "`session_cache = 0`, `session_tickets = false`; nginx `ssl_session_cache off; "
                         "ssl_session_tickets off;`): every handshake is a full one (edge's "
                         "edge_tls_resumed_total is checked to stay 0)"}
        for kind in ("ecdsa", "rsa"):
            edge = self.server(f"edge-hs-{kind}")
            before = self.edge_tls_metrics(edge)

            def runner(url, seconds):
                return self.load.wrk(url, seconds, headers=("Connection: close",))

            result = self.compare(f"handshakes {kind}",
                                  [("edge", edge.url()), ("nginx", self.nginx_tls_url(f"hs-{kind}"))], runner)
            after = self.edge_tls_metrics(edge)
            result["edge_metrics_delta"] = {k: after.get(k, 0) - before.get(k, 0) for k in after}
            if result["edge_metrics_delta"].get("edge_tls_resumed_total"):
                self.warnings.append(f"handshakes {kind}: edge resumed "
                                     f"{result['edge_metrics_delta']['edge_tls_resumed_total']} sessions")
            rows = {r["name"]: r for r in result["rows"]}
            ratio = round(rows["edge"]["rps"] / rows["nginx"]["rps"], 3) if rows["nginx"]["rps"] else None
            result["ratios"] = {"edge/nginx": ratio}
            self.target(f"handshakes-{kind}", f"edge handshakes/s ≥ nginx ({kind.upper()})", ratio, 1.0, ">=", "×")
            out[kind] = result
        return out

    def scenario_resume(self):
        if not (self.have("edge-ecdsa") and self.have("nginx") and self.have("bare-hyper")):
            raise BenchError("needs edge, nginx and bare-hyper (the upstream)")
        if self.s.load_tool != "wrk":
            raise BenchError("needs wrk")
        out = {"method": "wrk with `Connection: close`: every request is a new TCP connection and a new TLS 1.3 "
                         "handshake, and each wrk connection offers the session of its previous one, as a "
                         "returning browser does; both servers run a worker process per CPU. Two ways to "
                         "resume: the session cache (edge `session_cache = 20480`, `session_tickets = false`; "
                         "nginx `ssl_session_cache shared:SSL:10m; ssl_session_tickets off;`, the seed's) and "
                         "session tickets alone (edge `session_tickets = true`, `session_cache = 0`; nginx "
                         "`ssl_session_tickets on; ssl_session_cache off;`, whose ticket keys every worker "
                         "shares). Resumed share of the handshakes: edge's edge_tls_resumed_total / "
                         "edge_tls_handshakes_total on its admin /metrics, nginx's `$ssl_session_reused` "
                         "(`r` or `.`) in an access log on these listeners only (one character per "
                         "connection, buffered), both over the warm-up and every round. Each wrk run's first "
                         f"handshake on each of its {self.s.connections} connections has no session to offer: "
                         "`resumed %` counts every handshake, `of offered` leaves those out (the share of the "
                         "sessions offered that the server resumed; the target is on it)"}
        wrk_runs = self.s.rounds + (1 if self.s.warmup > 0 else 0)
        first = self.s.connections * wrk_runs  # handshakes per server that offered no session

        def pct(part, whole):
            return round(100 * part / whole, 2) if whole and whole > 0 else None

        def runner(url, seconds):
            return self.load.wrk(url, seconds, headers=("Connection: close",))

        for variant, label in RESUME_VARIANTS:
            out[variant] = {}
            for kind in ("ecdsa", "rsa"):
                edge = self.server(f"edge-{variant}-{kind}")
                nginx_kind = f"{variant}-{kind}"
                nginx_url = self.nginx_tls_url(nginx_kind)
                before, logged_before = self.edge_tls_metrics(edge), self.nginx_session_reused(nginx_kind)
                result = self.compare(f"resume {variant} {kind}", [("edge", edge.url()), ("nginx", nginx_url)],
                                      runner)
                time.sleep(NGINX_LOG_FLUSH + 1)  # nginx's workers flush their log buffers
                after, logged_after = self.edge_tls_metrics(edge), self.nginx_session_reused(nginx_kind)
                delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
                reused = {k: logged_after.get(k, 0) - logged_before.get(k, 0) for k in ("r", ".")}
                result["edge_metrics_delta"] = delta
                result["nginx_session_reused"] = reused
                hs, n = delta.get("edge_tls_handshakes_total", 0), reused["r"] + reused["."]
                resumed = {"edge": delta.get("edge_tls_resumed_total", 0), "nginx": reused["r"]}
                result["resumed_pct"] = {"edge": pct(resumed["edge"], hs), "nginx": pct(resumed["nginx"], n)}
                result["handshakes_without_session"] = first
                result["resumed_pct_of_offered"] = {"edge": pct(resumed["edge"], hs - first),
                                                    "nginx": pct(resumed["nginx"], n - first)}
                rows = {r["name"]: r for r in result["rows"]}
                ratio = round(rows["edge"]["rps"] / rows["nginx"]["rps"], 3) if rows["nginx"]["rps"] else None
                result["ratios"] = {"edge/nginx": ratio}
                offered = result["resumed_pct_of_offered"]
                if offered["nginx"] is None or offered["nginx"] < 90:
                    self.warnings.append(f"resume {variant} {kind}: nginx resumed {offered['nginx']} % of the "
                                         f"sessions offered ({reused}): the comparison is not of returning clients")
                self.target(f"resume-{variant}-{kind}",
                            f"edge returning clients/s ≥ nginx ({label}, {kind.upper()})", ratio, 1.0, ">=", "×",
                            f"resumed of offered: edge {offered['edge']} %, nginx {offered['nginx']} %; p99 edge "
                            f"{rows['edge']['latency_ms'].get('p99')} ms, nginx "
                            f"{rows['nginx']['latency_ms'].get('p99')} ms")
                out[variant][kind] = result
            rates = {k: out[variant][k]["resumed_pct_of_offered"] for k in ("ecdsa", "rsa")}
            edge_rates = [r["edge"] for r in rates.values()]
            self.target(f"resume-{variant}-rate",
                        f"edge resumes ≥ 99 % of the sessions returning clients offer ({label})",
                        None if None in edge_rates else min(edge_rates), 99, ">=", "%",
                        "of the sessions offered; " + "; ".join(f"{k.upper()}: edge {r['edge']} %, nginx {r['nginx']} %"
                                                                for k, r in rates.items()))
        return out
