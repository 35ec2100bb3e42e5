#!/usr/bin/env python3
"""bench/idle_conns.py: hold N idle keep-alive TLS connections, for bench/run's `idle` scenario.

    idle_conns.py --port P --connections N [--path /_status] [--parallel 256]

Opens N TLS connections to 127.0.0.1:P (SNI `localhost`, certificate not
verified), sends one keep-alive `GET PATH` on each and reads the whole answer,
so every connection has completed a handshake and served a request, the way a
browser leaves one behind. Then prints one JSON line
`{"open": n, "failed": f, "seconds": s}` and holds every connection open, idle,
until its standard input closes (or a line arrives), then closes them and exits.
"""
import argparse
import asyncio
import json
import resource
import ssl
import sys
import time


async def open_one(port, path, ctx, gate, held, failures):
    async with gate:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="localhost"), 30
            )
            writer.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if length:
                await asyncio.wait_for(reader.readexactly(length), 30)
            if not head.startswith(b"HTTP/1.1 2"):
                failures.append(head.split(b"\r\n", 1)[0].decode(errors="replace"))
            held.append(writer)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ssl.SSLError, ValueError) as e:
            failures.append(type(e).__name__)


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, required=True)
    parser.add_argument("--path", default="/_status")
    parser.add_argument("--parallel", type=int, default=256)
    args = parser.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    gate = asyncio.Semaphore(args.parallel)
    held, failures = [], []
    started = time.monotonic()
    await asyncio.gather(
        *(open_one(args.port, args.path, ctx, gate, held, failures) for _ in range(args.connections))
    )
    report = {
        "open": len(held),
        "failed": len(failures),
        "failures_sample": sorted(set(failures))[:5],
        "seconds": round(time.monotonic() - started, 2),
    }
    print(json.dumps(report), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    for writer in held:
        writer.close()


if __name__ == "__main__":
    asyncio.run(main())
