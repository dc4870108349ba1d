"""slow_link.py LISTEN_PORT TARGET_PORT MBPS: a loopback TCP proxy to
127.0.0.1:TARGET_PORT whose client-to-server bytes, over all connections,
share one token bucket of MBPS megabytes a second: a registry behind an
uplink of that speed, for benches/dockerfile_compare.sh. Prints a line a
new connection and, every half second while bytes move, the megabytes
sent so far (seconds are wall clock mod 1000)."""

import asyncio
import sys
import time

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


UP = Bucket()


async def report():
    last = -1
    while True:
        await asyncio.sleep(0.5)
        if UP.sent != last:
            last = UP.sent
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


async def handle(client_r, client_w):
    print("conn", round(time.time() % 1000, 2), flush=True)
    server_r, server_w = await asyncio.open_connection("127.0.0.1", TARGET)
    await asyncio.gather(pipe(client_r, server_w, UP), pipe(server_r, client_w, None))


async def main():
    asyncio.ensure_future(report())
    server = await asyncio.start_server(handle, "127.0.0.1", LISTEN)
    async with server:
        await server.serve_forever()


asyncio.run(main())
