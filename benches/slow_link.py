"""A throttled loopback link, for benches/dockerfile_compare.sh. Every
connection's bytes in the throttled direction share one token bucket of
MBPS megabytes a second. Prints a line a new connection and, every half
second while bytes move, the megabytes through so far (seconds are wall
clock mod 1000).

slow_link.py LISTEN_PORT TARGET_PORT MBPS: a TCP proxy to
127.0.0.1:TARGET_PORT throttling client-to-server bytes: a registry
behind an uplink of that speed.

slow_link.py proxy LISTEN_PORT MBPS: a forward proxy (CONNECT for https,
absolute-form requests for http) throttling server-to-client bytes:
package mirrors behind a downlink of that speed. Clients find it through
HTTPS_PROXY/HTTP_PROXY, as they would a site's proxy."""

import asyncio
import sys
import time

PROXY = sys.argv[1] == "proxy"
if PROXY:
    LISTEN, TARGET, RATE = int(sys.argv[2]), None, float(sys.argv[3]) * 1e6
else:
    LISTEN, TARGET, RATE = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]) * 1e6
READ = 1 << 16
# The most the bucket holds: 50 ms of the link, and at least one read.
BURST = max(RATE * 0.05, READ)


class Bucket:
    def __init__(self):
        self.at = time.monotonic()
        self.tokens = 0.0
        self.sent = 0

    async def take(self, n):
        while True:
            now = time.monotonic()
            self.tokens = min(self.tokens + (now - self.at) * RATE, BURST)
            self.at = now
            if self.tokens >= n:
                self.tokens -= n
                self.sent += n
                return
            await asyncio.sleep((n - self.tokens) / RATE)


LINK = Bucket()


async def report():
    last = -1
    while True:
        await asyncio.sleep(0.5)
        if LINK.sent != last:
            last = LINK.sent
            print("t", round(time.time() % 1000, 1), last // 1_000_000, flush=True)


async def pipe(reader, writer, bucket):
    try:
        while data := await reader.read(READ):
            if bucket:
                await bucket.take(len(data))
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


async def forward(client_r, client_w):
    print("conn", round(time.time() % 1000, 2), flush=True)
    server_r, server_w = await asyncio.open_connection("127.0.0.1", TARGET)
    await asyncio.gather(pipe(client_r, server_w, LINK), pipe(server_r, client_w, None))


def split_target(authority, default_port):
    host, _, port = authority.rpartition(":")
    if not host or not port.isdigit():
        return authority, default_port
    return host.strip("[]"), int(port)


async def proxy(client_r, client_w):
    try:
        head = await client_r.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
        client_w.close()
        return
    line, _, rest = head.partition(b"\r\n")
    method, target, version = line.decode("latin-1").split(" ", 2)
    if method == "CONNECT":
        host, port = split_target(target, 443)
        first = b""
    else:
        # http://host[:port]/path: the origin gets the path (later requests
        # on the connection stay absolute-form, which HTTP/1.1 servers take).
        without = target.split("://", 1)[-1]
        authority, slash, path = without.partition("/")
        host, port = split_target(authority, 80)
        first = f"{method} {slash}{path} {version}\r\n".encode("latin-1") + rest
    print("conn", round(time.time() % 1000, 2), method, flush=True)
    try:
        server_r, server_w = await asyncio.open_connection(host, port)
    except OSError:
        client_w.write(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
        client_w.close()
        return
    if method == "CONNECT":
        client_w.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await client_w.drain()
    else:
        server_w.write(first)
        await server_w.drain()
    await asyncio.gather(pipe(client_r, server_w, None), pipe(server_r, client_w, LINK))


async def main():
    asyncio.ensure_future(report())
    server = await asyncio.start_server(proxy if PROXY else forward, "127.0.0.1", LISTEN)
    async with server:
        await server.serve_forever()


asyncio.run(main())
