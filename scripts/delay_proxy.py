"""A TCP forwarder that delays each direction: a Redis a network hop away, on loopback.

    python scripts/delay_proxy.py LISTEN_PORT TARGET_PORT ROUND_TRIP_MS

Forwards 127.0.0.1:LISTEN_PORT to 127.0.0.1:TARGET_PORT, holding every chunk for half of
ROUND_TRIP_MS in each direction. For benchmarks only (``BENCH_REDIS_URL`` pointing at it,
docs/scaling.md session 17): it runs on the machine's own cores, so its CPU is part of what is
measured, alike for whatever is compared through it.
"""

from __future__ import annotations

import asyncio
import sys


async def _forward(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float
) -> None:
    loop = asyncio.get_running_loop()
    try:
        while data := await reader.read(65536):
            loop.call_later(delay, writer.write, data)
    except OSError:
        pass
    finally:
        loop.call_later(delay, writer.close)


async def main(listen: int, target: int, delay: float) -> None:
    async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", target)
        await asyncio.gather(
            _forward(reader, upstream_writer, delay), _forward(upstream_reader, writer, delay)
        )

    server = await asyncio.start_server(connected, "127.0.0.1", listen)
    await server.serve_forever()


if __name__ == "__main__":
    listen_port, target_port, round_trip_ms = sys.argv[1:4]
    asyncio.run(main(int(listen_port), int(target_port), float(round_trip_ms) / 2000))
