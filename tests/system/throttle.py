#!/usr/bin/env python3
"""A TCP proxy on loopback that limits each connection's server-to-client
rate (stdlib only), for tests/system/cluster.sh: it makes a real upstream
registry slow enough that a replica can be killed in the middle of a fill.

    throttle.py --listen PORT --to HOST:PORT --rate-file FILE

FILE holds the rate in bytes per second; it is re-read five times a second
and each new value is printed as `rate N`, so a test can change it between
steps and wait until it applies. Client-to-server bytes pass unthrottled. For every connection it prints
`conn N: M MiB, total T MiB` to stdout (flushed) each time another MiB has
passed towards that client (T counts every connection), so that a test can
wait for "M more MiB have passed" instead of sleeping.
"""

import argparse
import asyncio
import sys
import time

MiB = 1 << 20
CHUNK = 64 * 1024
total = 0  # bytes sent towards the clients, every connection


class Rate:
    """The rate in FILE (bytes per second)."""

    def __init__(self, path):
        self.path = path
        self.value = 1 << 20
        self.read()

    def read(self):
        try:
            with open(self.path) as f:
                value = max(1, int(f.read().strip()))
        except (OSError, ValueError):
            return
        if value != self.value:
            self.value = value
            print("rate %d" % value, flush=True)

    async def watch(self):
        while True:
            await asyncio.sleep(0.2)
            self.read()


async def pump(reader, writer, rate=None, conn=None):
    global total
    sent = 0
    due = time.monotonic()  # when the bytes sent so far may have been sent
    reported = 0
    try:
        while True:
            data = await reader.read(CHUNK)
            if not data:
                break
            writer.write(data)
            await writer.drain()
            sent += len(data)
            if rate:
                total += len(data)
                now = time.monotonic()
                due = max(due, now - 0.1) + len(data) / rate.value
                if due > now:
                    await asyncio.sleep(due - now)
                if sent // MiB > reported:
                    reported = sent // MiB
                    print("conn %d: %d MiB, total %d MiB" % (conn, reported, total // MiB),
                          flush=True)
    except (ConnectionError, OSError):
        pass
    finally:
        try:
            writer.close()
        except (ConnectionError, OSError):
            pass


async def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listen", type=int, required=True)
    ap.add_argument("--to", required=True, help="HOST:PORT")
    ap.add_argument("--rate-file", required=True, help="holds the bytes per second towards the client")
    args = ap.parse_args()
    host, port = args.to.rsplit(":", 1)
    rate = Rate(args.rate_file)
    count = 0

    async def handle(creader, cwriter):
        nonlocal count
        count += 1
        conn = count
        try:
            sreader, swriter = await asyncio.open_connection(host, int(port))
        except OSError as e:
            print("conn %d: upstream refused: %s" % (conn, e), flush=True)
            cwriter.close()
            return
        await asyncio.gather(pump(creader, swriter),
                             pump(sreader, cwriter, rate, conn))

    server = await asyncio.start_server(handle, "127.0.0.1", args.listen)
    print("listening on 127.0.0.1:%d -> %s at %d B/s" % (args.listen, args.to, rate.value),
          flush=True)
    watcher = asyncio.create_task(rate.watch())
    async with server:
        await server.serve_forever()
    watcher.cancel()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
