"""What a run reports: the targets it checks, the results section of
docs/benchmarks.md (Markdown tables and hand-written SVG plots), and the console
summary."""
from .common import MB, RESUME_VARIANTS, ROOT, TITLES


# Every target the report lists (id, text, threshold, op, unit); one that a run
# did not measure is listed as "not measured".
TARGETS = [
    ("status-hyper", "frontend /_status ≥ 0.85× bare hyper", 0.85, ">=", "×"),
    ("status-gunicorn", "frontend /_status ≥ 20× gunicorn (eventlet, the seed's)", 20, ">=", "×"),
    ("accept-reuseport", "reuseport ≥ 1.1× shared socket (2 workers, keep-alive)", 1.1, ">=", "×"),
    ("tls-rps", "edge TLS keep-alive ≥ 1.1× nginx (HTTP/1.1)", 1.1, ">=", "×"),
    ("tls-p99", "edge TLS keep-alive p99 ≤ nginx p99", None, "<=", "ms"),
    ("handshakes-ecdsa", "edge handshakes/s ≥ nginx (ECDSA)", 1.0, ">=", "×"),
    ("handshakes-rsa", "edge handshakes/s ≥ nginx (RSA)", 1.0, ">=", "×"),
    ("resume-cache-ecdsa", "edge returning clients/s ≥ nginx (session cache, ECDSA)", 1.0, ">=", "×"),
    ("resume-cache-rsa", "edge returning clients/s ≥ nginx (session cache, RSA)", 1.0, ">=", "×"),
    ("resume-cache-rate", "edge resumes ≥ 99 % of the sessions returning clients offer (session cache)", 99, ">=",
     "%"),
    ("resume-tickets-ecdsa", "edge returning clients/s ≥ nginx (session tickets, ECDSA)", 1.0, ">=", "×"),
    ("resume-tickets-rsa", "edge returning clients/s ≥ nginx (session tickets, RSA)", 1.0, ">=", "×"),
    ("resume-tickets-rate", "edge resumes ≥ 99 % of the sessions returning clients offer (session tickets)", 99, ">=",
     "%"),
    ("idle", "edge memory holding idle TLS connections ≤ nginx (PSS, all processes)", None, "<=", "MB"),
    ("redis-p99", "Redis rate-limit check p99 ≤ 0.5 ms", 0.5, "<=", "ms"),
    ("redis-limiter", "landing page with the Redis limiter ≥ 0.85× no limiter (≤ 15 % cost)", 0.85, ">=", "×"),
    ("redis-p99-load", "Redis check p99 under the landing load ≤ 0.5 ms (frontend's histogram)", 0.5, "<=", "ms"),
    ("rss", "≤ 12 MB RSS per frontend worker (after load)", 12, "<=", "MB"),
    ("ready", "frontend start to ready < 200 ms", 200, "<", "ms"),
    ("reload", "zero errors during reloads (frontend HUP and USR2, edge HUP)", 0, "==", "errors"),
    ("metrics-overhead", "frontend /_status with metrics ≥ 0.95× without (≤ 5 % cost)", 0.95, ">=", "×"),
    ("traces-overhead", "frontend with traces at the default sampler ≥ 0.95× without (≤ 5 % cost)", 0.95, ">=",
     "×"),
    ("access-log", "frontend /_status with the access log ≥ 0.90× without (≤ 10 % cost)", 0.90, ">=", "×"),
    ("access-log-nginx", "frontend's access-log cost < nginx's, same run (%)", None, "<", "%"),
    ("recipient-rps", "production path: wharf stack ≥ 20× the seed stack (recipient's walk, req/s)", 20, ">=", "×"),
    ("recipient-p99", "production path: wharf stack p99 ≤ the seed stack's", None, "<=", "ms"),
    ("recipient-memory", "production path: wharf stack memory ≤ 1/10 of the seed stack's (PSS, every process, "
     "after load)", 0.1, "<=", "×"),
    ("recipient-slow-errors", "API 200 ms late: wharf serves 1000 connections with no error", 0, "==", "errors"),
    ("recipient-slow-p99", "API 200 ms late, 1000 connections: wharf p99 ≤ 250 ms", 250, "<=", "ms"),
]


def fmt(v, digits=1):
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def esc(text):
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def svg_panels(title, panels):
    """Horizontal grouped bar charts, one panel under the other.
    panel = (subtitle, unit, series names, [(label, [value per series])])."""
    colours = ["#1d70b8", "#f47738", "#00703c", "#912b88", "#d4351c"]
    width, label_w, right = 760, 230, 110
    plot_w = width - label_w - right
    y = 34
    parts = [f'<text x="10" y="22" font-size="15" font-weight="bold">{esc(title)}</text>']
    for subtitle, unit, series, rows in panels:
        rows = [(label, values) for label, values in rows if any(v is not None for v in values)]
        if not rows:
            continue
        top = max((v for _, values in rows for v in values if v is not None), default=0) or 1
        parts.append(f'<text x="10" y="{y + 16}" font-size="13" fill="#333">{esc(subtitle)}</text>')
        y += 24
        if len(series) > 1:
            lx = label_w
            for i, name in enumerate(series):
                parts.append(f'<rect x="{lx}" y="{y - 4}" width="10" height="10" fill="{colours[i % 5]}"/>'
                             f'<text x="{lx + 14}" y="{y + 5}" font-size="11">{esc(name)}</text>')
                lx += 24 + 7 * len(name)
            y += 16
        bar_h = 12
        for label, values in rows:
            group_h = bar_h * len(series) + 8
            parts.append(f'<text x="{label_w - 8}" y="{y + group_h / 2 + 2}" font-size="12" '
                         f'text-anchor="end">{esc(label)}</text>')
            for i, v in enumerate(values):
                if v is None:
                    continue
                w = max(1.0, plot_w * v / top)
                by = y + i * bar_h
                parts.append(f'<rect x="{label_w}" y="{by}" width="{w:.1f}" height="{bar_h - 2}" '
                             f'fill="{colours[i % 5]}"/>')
                parts.append(f'<text x="{label_w + w + 4:.1f}" y="{by + bar_h - 3}" font-size="10">'
                             f'{esc(fmt(v, 2 if v < 10 else 0))} {esc(unit)}</text>')
            y += group_h + 4
        y += 10
    height = y + 6
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family="Helvetica, Arial, sans-serif">'
            f'<rect width="100%" height="100%" fill="white"/>{"".join(parts)}</svg>\n')


def throughput_panels(rows, what="req/s"):
    return [
        (f"throughput ({what}, best run, higher is better)", what, [what],
         [(r["name"], [r.get("rps")]) for r in rows]),
        ("latency percentiles (ms, lower is better)", "ms", ["p50", "p90", "p99"],
         [(r["name"], [r.get("latency_ms", {}).get(p) for p in ("p50", "p90", "p99")]) for r in rows]),
    ]


def throughput_table(rows, label="req/s"):
    lines = [f"| Server | {label} | p50 ms | p90 ms | p99 ms | errors | all runs |", "|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lat = r.get("latency_ms", {})
        lines.append(f"| {r['name']} | {fmt(r['rps'])} | {fmt(lat.get('p50'), 3)} | {fmt(lat.get('p90'), 3)} | "
                     f"{fmt(lat.get('p99'), 3)} | {r.get('errors_total', 0)} | "
                     f"{', '.join(f'{x:.0f}' for x in r.get('all_rps', []))} |")
    return lines


def render(report, svg_dir, svg_rel):
    """The Markdown results section; writes the SVGs into svg_dir."""
    res = report["scenarios"]
    m = report["machine"]
    out = [
        f"Run **{report['timestamp_utc']}** (`{report['mode']}` mode), git `{(report['git']['revision'] or '?')[:10]}`"
        f"{' (dirty tree)' if report['git']['dirty'] else ''}; {m['nproc']} CPUs ({m['cpu_model'] or '?'}), "
        f"Linux {m['kernel']}; load average before {' '.join(m['loadavg_start'] or [])}, "
        f"after {' '.join(m['loadavg_end'] or [])}; CPU busy with other work before the run: "
        f"{m['cpu_busy_pct_before']} %. Results file: `bench/results/{report['file']}`.",
        "",
        "### Targets",
        "",
        "| Target | Measured | Threshold | Met |",
        "|---|---:|---:|:---:|",
    ]
    for t in report["targets"]:
        met = {True: "✅ met", False: "❌ not met", None: "— not measured"}[t["met"]]
        out.append(f"| {t['target']} | {fmt(t['value'], 3)} {t['unit']} | {t['op']} {fmt(t['threshold'], 3)} | {met} |")
    out.append("")

    def header(sid):
        r = res.get(sid)
        if r is None:
            return None
        out.extend([f"### {TITLES[sid]}", ""])
        if r["status"] != "ok":
            out.extend([f"Not measured: {r['status']} — {r.get('reason', '').splitlines()[0] if r.get('reason') else ''}", ""])
            return None
        return r

    def plot(sid, title, panels):
        svg_dir.mkdir(parents=True, exist_ok=True)
        (svg_dir / f"{sid}.svg").write_text(svg_panels(title, panels))
        out.extend([f"![{title}]({svg_rel}/{sid}.svg)", ""])

    def notes(r):
        for n in r.get("notes", []):
            out.append(f"- {n}")
        if r.get("notes"):
            out.append("")

    r = header("status")
    if r:
        out.extend([f"{r['tool']}, {r['duration_s']} s × {r['rounds']} round(s) per server, best run shown.", ""])
        plot("status", "GET /_status, plain HTTP/1.1", throughput_panels(r["rows"]))
        out.extend(throughput_table(r["rows"]))
        out.extend(["", "Ratios (best runs): " + ", ".join(f"{k} **{v}**" for k, v in r["ratios"].items()), ""])
        if any(x is not None for x in r.get("frontend_busiest_worker_share", [])):
            out.extend(["Share of each frontend run's requests served by its busiest worker (from "
                        "`wharf_worker_requests_total`; 0.5 is an even split between 2 workers): " +
                        ", ".join(fmt(x, 2) for x in r["frontend_busiest_worker_share"]) + ".", ""])
        if r.get("frontend_over_bare_hyper_median_of_rounds") is not None:
            out.extend([f"frontend/bare-hyper as the median of the per-round ratios (each round's frontend run over "
                        f"the same round's bare-hyper run): {r['frontend_over_bare_hyper_median_of_rounds']}.", ""])
        notes(r)
    r = header("metrics-overhead")
    if r:
        out.extend([f"{r['tool']}, {r['status_runs']['duration_s']} s × {r['status_runs']['rounds']} round(s) per instance, "
                    "order mirrored every round; two frontend instances side by side, one with `WHARF_METRICS=false`.",
                    ""])
        rows = r["status_runs"]["rows"] + [dict(row, name=f"{row['name']} {r['traces']['path']}")
                                       for row in r["traces"]["runs"]["rows"]]
        plot("metrics-overhead", "Instrumentation cost (frontend)", throughput_panels(rows))
        out.extend(throughput_table(rows))
        out.extend(["", f"`/_status` metrics on / off, median of the per-round ratios: "
                        f"**{r['on_over_off_median_of_rounds']}** (cost {r['cost_pct']} %; best runs "
                        f"{r['on_over_off_best_runs']}); server CPU per request (median of the runs, µs): "
                        f"{', '.join(f'{k} {fmt(v)}' for k, v in r['cpu_us_per_request'].items())} ({r['cpu_cost_pct']} %). Through the app (`{r['traces']['path']}`), traces on "
                        f"(the default sampler, parentbased_always_on: every request without a traceparent sampled; "
                        f"OTLP/HTTP to an in-harness sink: {r['traces']['exports']} exports, "
                        f"{fmt(r['traces']['exported_bytes'] / MB)} MB) / off: **{r['traces']['on_over_off_median_of_rounds']}** "
                        f"(cost {r['traces']['cost_pct']} %); server CPU per request (µs): "
                        f"{', '.join(f'{k} {fmt(v)}' for k, v in r['traces']['cpu_us_per_request'].items())} "
                        f"({r['traces']['cpu_cost_pct']} %).", ""])
        a = r.get("access_log")
        if a:
            out.extend(["Access log on vs off, `/_status`: frontend (its default, `WHARF_ACCESS_LOG=true`, against "
                        "an instance with it off) and nginx (a listener with a JSON access log of the same fields "
                        "against its plain one), four subjects in one comparison, order mirrored every round.", ""])
            out.extend(throughput_table(a["runs"]["rows"]))
            out.extend(["", "| Server | on / off (median of rounds) | cost % | best runs | CPU µs/request off → on "
                            "| CPU cost % | log bytes per request |", "|---|---:|---:|---:|---|---:|---:|"])
            for server, x in a["servers"].items():
                c = x["cpu_us_per_request"]
                out.append(f"| {server} | **{x['on_over_off_median_of_rounds']}** | {x['cost_pct']} | "
                           f"{x['on_over_off_best_runs']} | {fmt(c['off'])} → {fmt(c['on'])} | {x['cpu_cost_pct']} | "
                           f"{a['log_bytes_per_request'].get(server + ' access-log-on')} |")
            out.append("")
        notes(r)
    r = header("accept")
    if r:
        out.extend([f"{r['tool']}, {r['duration_s']} s × {r['rounds']} round(s) per layout, best run shown. "
                    "`reuseport N×T` = `WHARF_ACCEPT=reuseport`, N workers of T tokio threads.", ""])
        plot("accept", "frontend worker layouts, GET /_status", throughput_panels(r["rows"]))
        out.extend(throughput_table(r["rows"]))
        out.extend(["", "Ratios (best runs): " + ", ".join(f"{k} **{v}**" for k, v in r["ratios"].items()), "",
                    "| Layout | busiest worker's share of requests, per run (0.5 = even over 2) |", "|---|---|"])
        for row in r["rows"]:
            if row.get("busiest_worker_share"):
                out.append(f"| {row['name']} | {', '.join(fmt(x, 2) for x in row['busiest_worker_share'])} |")
        out.append("")
        if r.get("worker_kill"):
            out.extend(["One worker SIGKILLed halfway through a run of new connections (wrk, 16 connections, "
                        "`Connection: close`):", "",
                        "| Layout | requests | errors | p99 ms | max ms |", "|---|---:|---:|---:|---:|"])
            for k in r["worker_kill"]:
                lat = k.get("latency_ms") or {}
                out.append(f"| {k['name']} | {k.get('requests')} | {k.get('errors_total')} | "
                           f"{fmt(lat.get('p99'))} | {fmt(lat.get('max'))} |")
            out.append("")
        notes(r)
    r = header("landing")
    if r:
        out.extend([f"`{r['path']}` ({r['page_bytes']} bytes of HTML), {r['tool']}.", ""])
        plot("landing", "Landing page vs /_status (frontend)", throughput_panels(r["rows"]))
        out.extend(throughput_table(r["rows"]))
        out.extend(["", f"Landing page / `/_status`: **{r['ratios']['landing/_status']}**", ""])
    r = header("edge-tls")
    if r:
        out.extend([f"Both proxies in front of {r['upstream']}; {r['certificate']} certificate.", "",
                    f"HTTP/1.1: {r['http1']['tool']}; ratio edge/nginx **{r['http1']['ratios']['edge/nginx']}**.", ""])
        panels = throughput_panels(r["http1"]["rows"])
        panels[0] = ("HTTP/1.1 " + panels[0][0], *panels[0][1:])
        panels[1] = ("HTTP/1.1 " + panels[1][0], *panels[1][1:])
        if "http2" in r:
            p2 = throughput_panels(r["http2"]["rows"])
            panels += [("HTTP/2 " + p2[0][0], *p2[0][1:]), ("HTTP/2 " + p2[1][0], *p2[1][1:])]
        plot("edge-tls", "TLS 1.3 reverse proxy: edge vs nginx", panels)
        out.extend(throughput_table(r["http1"]["rows"]))
        if "http2" in r:
            out.extend(["", f"HTTP/2: {r['http2']['tool']}; ratio edge/nginx **{r['http2']['ratios']['edge/nginx']}**.",
                        ""])
            out.extend(throughput_table(r["http2"]["rows"]))
        cpu_rows = [(proto, name, c) for proto in ("http1", "http2")
                    for name, c in r.get(proto, {}).get("cpu_us_per_request", {}).items()]
        if cpu_rows:
            out.extend(["", "The proxy's own CPU time per request (all its processes; median of the runs), "
                            "from /proc/<pid>/stat before and after each run:", "",
                        "| Protocol | Server | user µs | kernel µs | total µs |", "|---|---|---:|---:|---:|"])
            for proto, name, c in cpu_rows:
                label = "HTTP/1.1" if proto == "http1" else "HTTP/2"
                out.append(f"| {label} | {name} | {c['user']} | {c['system']} | {c['total']} |")
        out.append("")
        if "tls_only" in r:
            t = r["tls_only"]
            out.extend([f"Without proxying: both answer `{t['path']}` themselves (same body, same TLS, same wrk "
                        "command), which is what TLS and HTTP alone cost each proxy:", ""])
            out.extend(throughput_table(t["rows"]))
            out.append("")
        budget = r["http1"].get("budget")
        if budget:
            out.extend(["What one proxied HTTP/1.1 request costs the machine (CPU µs, medians of the runs): the "
                        "proxy, the upstream and the load generator share its 2 CPUs, so their sum bounds "
                        "req/s. *Proxying* is the proxy's CPU per proxied request less its CPU per request it "
                        "answers itself (above):", "",
                        "| Server | proxy | upstream | load generator | machine | proxy, answering itself | "
                        "proxying: user | proxying: kernel |",
                        "|---|---:|---:|---:|---:|---:|---:|---:|"])
            for name, b in budget.items():
                out.append(f"| {name} | {b['proxy']} | {b.get('upstream')} | {b.get('load_generator')} | "
                           f"{b.get('machine')} | {b.get('proxy_without_proxying')} | {b.get('proxying_user')} | "
                           f"{b.get('proxying_system')} |")
            out.append("")
        notes(r)
    r = header("handshakes")
    if r:
        out.extend([r["method"] + ".", ""])
        panels = []
        for kind in ("ecdsa", "rsa"):
            panels.append((f"{kind.upper()}: new handshakes/s (higher is better)", "/s", ["handshakes/s"],
                           [(row["name"], [row["rps"]]) for row in r[kind]["rows"]]))
        plot("handshakes", "New TLS 1.3 handshakes per second", panels)
        out.extend(["| Certificate | Server | handshakes/s | p99 ms | errors | edge/nginx |", "|---|---|---:|---:|---:|---:|"])
        for kind in ("ecdsa", "rsa"):
            for row in r[kind]["rows"]:
                out.append(f"| {kind.upper()} | {row['name']} | {fmt(row['rps'])} | "
                           f"{fmt(row['latency_ms'].get('p99'), 3)} | {row['errors_total']} | "
                           f"{r[kind]['ratios']['edge/nginx'] if row['name'] == 'edge' else ''} |")
        out.append("")
    r = header("resume")
    if r:
        out.extend([r["method"] + ".", ""])
        variants = [(v, label) for v, label in RESUME_VARIANTS if v in r]
        panels = [(f"{label}, {kind.upper()}: req/s (higher is better)", "/s", ["req/s"],
                   [(row["name"], [row["rps"]]) for row in r[v][kind]["rows"]])
                  for v, label in variants for kind in ("ecdsa", "rsa")]
        plot("resume", "Returning clients: a new TLS connection per request, resumption on", panels)
        out.extend(["| Resumption | Certificate | Server | req/s | p99 ms | errors | resumed % | of offered % | "
                    "edge/nginx |", "|---|---|---|---:|---:|---:|---:|---:|---:|"])
        for v, label in variants:
            for kind in ("ecdsa", "rsa"):
                # Not `res`: `header` reads the scenarios through that name.
                run = r[v][kind]
                for row in run["rows"]:
                    out.append(f"| {label} | {kind.upper()} | {row['name']} | {fmt(row['rps'])} | "
                               f"{fmt(row['latency_ms'].get('p99'), 3)} | {row['errors_total']} | "
                               f"{fmt(run['resumed_pct'].get(row['name']), 2)} | "
                               f"{fmt(run['resumed_pct_of_offered'].get(row['name']), 2)} | "
                               f"{run['ratios']['edge/nginx'] if row['name'] == 'edge' else ''} |")
        out.append("")
        notes(r)
    r = header("idle")
    if r:
        out.extend([r["method"] + ".", ""])
        plot("idle", f"Memory holding {r['connections']} idle TLS connections",
             [("PSS, all processes (MB, lower is better)", "MB", ["baseline", "holding"],
               [(row["name"], [row["baseline_pss_mb"], row["held_pss_mb"]]) for row in r["rows"]])])
        out.extend(["| Server | open | failed | processes | PSS before MB | PSS holding MB | RSS holding MB | KB per connection |",
                    "|---|---:|---:|---:|---:|---:|---:|---:|"])
        for row in r["rows"]:
            out.append(f"| {row['name']} | {row['connections_open']} | {row['connections_failed']} | {row['processes']} | "
                       f"{fmt(row['baseline_pss_mb'])} | {fmt(row['held_pss_mb'])} | {fmt(row['held_rss_mb'])} | "
                       f"{fmt(row['per_connection_kb'])} |")
        out.append("")
    r = header("ratelimit")
    if r:
        notes(r)
        land = r.get("landing")
        if land:
            out.extend([f"The landing page on three frontends, {land['tool']}: the document zone checked in memory, "
                        f"in Redis (a redis-server of its own on loopback; {land['redis_commands_during_runs']} "
                        "Redis commands during the runs), and no limiter; the rate is out of reach, so every "
                        "check passes and only its cost shows.", ""])
            plot("ratelimit", "Landing page: rate-limit check in memory / Redis / off",
                 throughput_panels(land["rows"]))
            out.extend(throughput_table(land["rows"]))
            out.extend(["", "Ratios: " + ", ".join(f"{k} **{v}**" for k, v in land["ratios"].items()), ""])
            lat = land.get("redis_check_latency") or {}
            if land.get("redis_over_none_median_of_rounds") is not None:
                out.extend([f"Limiter in Redis / no limiter, median of the per-round ratios: "
                            f"**{land['redis_over_none_median_of_rounds']}**. redis-server CPU (utime + stime): "
                            f"{land.get('redis_cpu_us_per_check')} µs per check ({land.get('redis_requests')} checks, "
                            f"warm-up included), {land.get('redis_cpu_us_per_command')} µs per command (Redis counts the "
                            f"commands the check's script runs: {land.get('redis_commands_per_check')} per check). "
                            f"Redis round "
                            f"trip under this load (frontend's `wharf_ratelimit_redis_seconds`, {lat.get('checks')} "
                            f"checks, interpolated within buckets {lat.get('buckets_ms')} ms): p50 "
                            f"{lat.get('p50_ms')} ms, p99 {lat.get('p99_ms')} ms; "
                            f"{lat.get('share_le_0_5ms')} of checks within 0.5 ms.", ""])
        if r.get("script"):
            out.extend(["`bench/ratelimit.sh` (wharf-ratelimit's cargo bench and its HTTP example):", "",
                        "| Figure | Value |", "|---|---:|"])
            for key, label in (("in_memory_checks_per_s", "in-memory checks/s (1 core)"),
                               ("redis_check_p50_ms", "Redis check p50 ms (1 in flight)"),
                               ("redis_check_p99_ms", "Redis check p99 ms (1 in flight)"),
                               ("redis_checks_per_s", "Redis checks/s (64 in flight)"),
                               ("redis_benchmark_set_per_s", "redis-benchmark SET/s (64 clients)"),
                               ("redis_checks_over_set", "Redis checks / redis-benchmark SET"),
                               ("http_limiter_on_rps", "HTTP req/s, in-memory limiter on"),
                               ("http_limiter_off_rps", "HTTP req/s, no limiter"),
                               ("http_on_over_off", "limiter on / off")):
                out.append(f"| {label} | {fmt(r.get(key), 3)} |")
            out.append("")
    r = header("rss")
    if r:
        plot("rss", "Resident memory per worker (largest worker)",
             [("RSS of the largest worker (MB, lower is better)", "MB", ["idle", "after load"],
               [(row["name"], [row["idle_max_worker_rss_mb"], row["after_max_worker_rss_mb"]]) for row in r["rows"]])])
        out.extend([f"After load = after {r['load']}.", "",
                    "| Server | workers | largest worker RSS idle MB | after load MB | all PSS idle MB | after load MB |",
                    "|---|---:|---:|---:|---:|---:|"])
        for row in r["rows"]:
            out.append(f"| {row['name']} | {row['workers']} | {fmt(row['idle_max_worker_rss_mb'], 2)} | "
                       f"{fmt(row['after_max_worker_rss_mb'], 2)} | {fmt(row['idle_total_pss_mb'])} | "
                       f"{fmt(row['after_total_pss_mb'])} |")
        out.append("")
    r = header("ready")
    if r:
        plot("ready", "Start to ready (median ms, lower is better)",
             [("spawn to first 2xx on /_status (ms)", "ms", ["median"], [(row["name"], [row["median_ms"]]) for row in r["rows"]])])
        out.extend([f"{r['definition']}; {r['runs']} runs each.", "",
                    "| Server | median ms | min ms | max ms | hyperfine cycle mean ms |", "|---|---:|---:|---:|---:|"])
        for row in r["rows"]:
            hf = row.get("hyperfine_cycle_ms")
            out.append(f"| {row['name']} | {fmt(row['median_ms'])} | {fmt(row['min_ms'])} | {fmt(row['max_ms'])} | "
                       f"{fmt(hf['mean']) + ' ± ' + fmt(hf['stddev']) if hf else '—'} |")
        if r.get("frontend_master_all_workers_ready_ms") is not None:
            out.extend(["", f"frontend's master logged `All workers ready` after "
                            f"**{r['frontend_master_all_workers_ready_ms']} ms** (the scenario (1) instance)."])
        out.append("")
    r = header("reload")
    if r:
        out.extend([f"{r['tool']}, {r['duration_s']} s per run, {r['reloads_per_run']} reload(s) per run, "
                    "evenly spaced.", "",
                    "| Server (signal) | reloads | requests | req/s | errors | non-2xx | socket errors (connect/read/write/timeout) |",
                    "|---|---:|---:|---:|---:|---:|---|"])
        for row in r["rows"]:
            if row.get("status") == "not supported":
                out.append(f"| {row['name']} | — | — | — | not supported | — | {row['note']} |")
                continue
            e = row["errors"]
            out.append(f"| {row['name']} | {row['reloads']} | {fmt(row['requests'])} | {fmt(row['rps'])} | "
                       f"{row['errors_total']} | {e['non_2xx']} | {e['connect']}/{e['read']}/{e['write']}/{e['timeout']} |")
        out.append("")
    r = header("recipient")
    if r:
        mix, slow = r["mix"], r["slow"]
        out.extend([r["method"] + ".", "",
                    f"The mix: {mix['tool']}, {mix['duration_s']} s × {mix['rounds']} round(s) per stack, best run "
                    f"shown; ratio wharf/seed **{mix['ratios']['wharf/seed']}**.", ""])
        panels = throughput_panels(mix["rows"])
        slow_panels = throughput_panels(slow["rows"])
        panels += [(f"API {r.get('slow_delay_ms', 200)} ms late, 1000 connections: " + slow_panels[1][0],
                    *slow_panels[1][1:])]
        panels.append(("memory after the mix (PSS, every process, MB, lower is better)", "MB", ["PSS"],
                       [(name, [m["after_pss_mb"]]) for name, m in r["memory"].items()]))
        plot("recipient", "Production path: seed stack vs wharf stack", panels)
        out.extend(throughput_table(mix["rows"]))
        out.extend(["", "| Stack | processes | PSS idle MB | PSS after the mix MB | PSS after 1000 connections MB | "
                        "stack CPU % of machine | stub CPU % of machine | stub CPU µs per request |",
                    "|---|---:|---:|---:|---:|---:|---:|---:|"])
        rows = {row["name"]: row for row in mix["rows"]}
        for name, m in r["memory"].items():
            row = rows.get(name, {})
            out.append(f"| {name} | {m['processes']} | {fmt(m['idle_pss_mb'])} | {fmt(m['after_pss_mb'])} | "
                       f"{fmt(r['memory_after_slow_mb'].get(name))} | {fmt(row.get('stack_cpu_pct_of_machine'))} | "
                       f"{fmt(row.get('stub_cpu_pct_of_machine'))} | {fmt(row.get('stub_cpu_us_per_request'))} |")
        out.extend(["", f"Memory wharf/seed: **{r['memory_ratio_wharf_over_seed']}** (the stub itself: "
                        f"{fmt(r['stub_pss_mb'])} MB, in neither). Page sizes (bytes, wharf / seed): " +
                    "; ".join(f"{w['step']} {w['bytes'].get('wharf')} / {w['bytes'].get('seed')}" for w in r["walk"]) +
                    ".", "", f"The slow dependency: {slow['tool']}.", ""])
        out.extend(throughput_table(slow["rows"]))
        out.append("")
        notes(r)
    if report["warnings"]:
        out.extend(["### Warnings", ""] + [f"- {w}" for w in report["warnings"]] + [""])
    return "\n".join(out)


START, END = "<!-- bench:results:start -->", "<!-- bench:results:end -->"


def write_docs(report):
    doc = ROOT / "docs" / "benchmarks.md"
    section = render(report, ROOT / "docs" / "benchmarks", "benchmarks")
    text = doc.read_text() if doc.exists() else f"# Benchmarks\n\n## Latest results\n\n{START}\n{END}\n"
    if START not in text or END not in text:
        text += f"\n## Latest results\n\n{START}\n{END}\n"
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    doc.write_text(f"{head}{START}\n{section}\n{END}{tail}")
    return doc


def console_summary(report):
    lines = ["", "Targets:"]
    for t in report["targets"]:
        met = {True: "MET", False: "NOT MET", None: "not measured"}[t["met"]]
        lines.append(f"  {met:<13} {t['target']}: {fmt(t['value'], 3)} {t['unit']} "
                     f"(needs {t['op']} {fmt(t['threshold'], 3)})")
    for sid, r in report["scenarios"].items():
        if r["status"] != "ok":
            lines.append(f"  {sid}: {r['status']}: {r.get('reason', '').splitlines()[0] if r.get('reason') else ''}")
    status = report["scenarios"].get("status")
    if status and status["status"] == "ok":
        lines += ["", "(1) /_status:"] + [f"  {row['name']:<20} {row['rps']:>11.1f} req/s   p50 "
                                          f"{row['latency_ms'].get('p50', float('nan')):.3f} ms   p99 "
                                          f"{row['latency_ms'].get('p99', float('nan')):.3f} ms"
                                          for row in status["rows"]]
    overhead = report["scenarios"].get("metrics-overhead")
    if overhead and overhead["status"] == "ok":
        lines += ["", "(10) instrumentation cost (on / off, median of the per-round ratios):",
                  f"  metrics {overhead['on_over_off_median_of_rounds']} (cost {overhead['cost_pct']} %)",
                  f"  traces, default sampler {overhead['traces']['on_over_off_median_of_rounds']} "
                  f"(cost {overhead['traces']['cost_pct']} %)"]
        for server, x in overhead.get("access_log", {}).get("servers", {}).items():
            lines.append(f"  access log, {server:<8} {x['on_over_off_median_of_rounds']} (cost {x['cost_pct']} %; "
                         f"CPU µs/request {x['cpu_us_per_request']['off']} → {x['cpu_us_per_request']['on']})")
    resume = report["scenarios"].get("resume")
    if resume and resume["status"] == "ok":
        lines += ["", "(4b) returning clients (Connection: close, resumption on):"]
        for v, label in RESUME_VARIANTS:
            for kind in ("ecdsa", "rsa"):
                res = resume.get(v, {}).get(kind)
                if not res:
                    continue
                for row in res["rows"]:
                    lines.append(f"  {label + ' ' + kind.upper():<22} {row['name']:<6} {row['rps']:>9.1f} req/s   "
                                 f"p99 {row['latency_ms'].get('p99', float('nan')):.3f} ms   resumed "
                                 f"{fmt(res['resumed_pct'].get(row['name']), 2)} % (of offered "
                                 f"{fmt(res['resumed_pct_of_offered'].get(row['name']), 2)} %)"
                                 + (f"   edge/nginx {res['ratios']['edge/nginx']}" if row["name"] == "edge" else ""))
    recipient = report["scenarios"].get("recipient")
    if recipient and recipient["status"] == "ok":
        lines += ["", "(11) production path, a recipient's walk (wharf stack vs seed stack):"]
        for label, part in (("mix", recipient["mix"]), ("API 200 ms late, 1000 conns", recipient["slow"])):
            for row in part["rows"]:
                lines.append(f"  {label:<28} {row['name']:<6} {row['rps']:>9.1f} req/s   p50 "
                             f"{row['latency_ms'].get('p50', float('nan')):.3f} ms   p99 "
                             f"{row['latency_ms'].get('p99', float('nan')):.3f} ms   errors {row.get('errors_total')}"
                             f"   stub CPU {row.get('stub_cpu_pct_of_machine')} %")
        lines.append("  memory after the mix (PSS): " + ", ".join(
            f"{n} {m['after_pss_mb']} MB ({m['processes']} processes)" for n, m in recipient["memory"].items()) +
            f"; wharf/seed {recipient['memory_ratio_wharf_over_seed']}; "
            f"req/s wharf/seed {recipient['mix']['ratios']['wharf/seed']}")
    for w in report["warnings"]:
        lines.append(f"WARNING: {w}")
    print("\n".join(lines))
