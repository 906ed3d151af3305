"""A fixed-capacity webhook receiver for the herd benchmark (asyncio, HTTP/1.1 keep-alive).

It serves at most CAP requests at once, each taking SERVICE_MS; a request arriving while CAP are
being served is answered 429 at once (no Retry-After).  Every request is logged as
(arrival, end, status, requests open at arrival including itself, requests being served at
arrival, path).
On SIGTERM it writes the log as JSON to OUT and exits.

    receiver.py PORT CAP SERVICE_MS OUT
"""
import asyncio
import json
import signal
import sys
import time

port, cap, service_ms, out = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
log = []
open_reqs = 0
serving = 0


async def handle(reader, writer):
    global open_reqs, serving
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ", 2)[1].decode()
            n = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    n = int(line[15:].strip())
            if n:
                await reader.readexactly(n)
            t = time.time()
            open_reqs += 1
            conc = open_reqs
            try:
                if serving >= cap:
                    status = 429
                    served_at_arrival = serving
                else:
                    serving += 1
                    served_at_arrival = serving
                    try:
                        await asyncio.sleep(service_ms / 1000.0)
                    finally:
                        serving -= 1
                    status = 200
                body = b"{}" if status == 200 else b""
                writer.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                             % (status, b"OK" if status == 200 else b"Too Many Requests", len(body), body))
                await writer.drain()
            finally:
                open_reqs -= 1
            log.append((t, time.time(), status, conc, served_at_arrival, path))
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with server:
        await stop.wait()
    with open(out, "w") as f:
        json.dump(log, f)


asyncio.run(main())
