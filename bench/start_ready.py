#!/usr/bin/env python3
"""bench/start_ready.py: one start-to-ready measurement, for bench/run's `ready` scenario.

    start_ready.py --port P [--path /_status] [--tls] [--record FILE] -- COMMAND ARGS...

Starts COMMAND in a new session, polls `GET PATH` on 127.0.0.1:P every 2 ms
until it answers 2xx, then kills the whole session (SIGKILL: how a server stops
is not part of this measurement) and waits for it to exit. Prints the elapsed
milliseconds from the spawn to the first 2xx answer and, with --record, appends
`{"ready_ms": ...}` to FILE as one JSON line. Exits 1 when the server exits or
is not ready within --timeout seconds. bench/run runs it under hyperfine.
"""
import argparse
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time


def answers_2xx(port, path, tls):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as raw:
            sock = raw
            if tls:
                ctx = ssl.create_default_context()
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
                sock = ctx.wrap_socket(raw, server_hostname="localhost")
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
            head = sock.recv(64)
            return head.startswith(b"HTTP/1.1 2") or head.startswith(b"HTTP/1.0 2")
    except (OSError, ssl.SSLError):
        return False


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/_status")
    parser.add_argument("--tls", action="store_true")
    parser.add_argument("--record")
    parser.add_argument("--timeout", type=float, default=20.0)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command")

    started = time.monotonic()
    child = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    ready_ms = None
    try:
        while time.monotonic() - started < args.timeout:
            if answers_2xx(args.port, args.path, args.tls):
                ready_ms = (time.monotonic() - started) * 1e3
                break
            if child.poll() is not None:
                break
            time.sleep(0.002)
    finally:
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        child.wait()
        # Workers re-parented away from the session leader die with the group;
        # wait until the port is free again so the next run can bind it.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", args.port)) != 0:
                    break
            time.sleep(0.01)
    if ready_ms is None:
        print(f"start_ready: {command[0]} not ready on port {args.port}", file=sys.stderr)
        return 1
    print(f"{ready_ms:.1f}")
    if args.record:
        with open(args.record, "a", encoding="utf-8") as f:
            f.write(json.dumps({"ready_ms": round(ready_ms, 2)}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
