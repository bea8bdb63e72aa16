"""An exact endpoint for the probe-load benchmark: every POST to `/{name}/v1/chat/completions`
answers one canned chat completion `--delay` seconds after its request was read, and with
`--record FILE` writes down, per request, how long it really held it.

Why not `monitor.sim.openai`, the simulator the tests drive: it runs a thread per
connection, and under thousands of keep-alive connections its threads wait on the GIL, so
its answers come late by 1.5 ms at the median and 3 ms at p99: more than the 2 ms error
budget the benchmark checks. This one only answers, on one event loop, with the least
HTTP/1.1 the benchmark's clients speak (a request line, headers with Content-Length, a
body), so a slot of simultaneous requests is answered within microseconds of each other.

Even so, a timer wakes a little late, by 0.3 ms and up (the event loop's timers work to the
millisecond). So the record: the benchmark subtracts each request's real hold time, not the
nominal delay, to get the client's own measurement error. The record names the client
(`blackbox` when the User-Agent says `instance blackbox`, else `daemon`), the endpoint (the
first path segment), the wall-clock time the request was read and the hold in ms.

    python benchmarks/responder.py --delay 0.05 --model bench-model --record holds.tsv

It prints its origin on the first line of stdout and serves until stdin closes or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import NamedTuple, cast

# Deep enough that a slot of simultaneous probes never meets a full accept queue.
BACKLOG = 4096


class Hold(NamedTuple):
    client: str
    name: str
    read_at: float  # wall clock, to match the client's own record of when it probed
    hold_ms: float


def completion(model: str) -> bytes:
    """The answer, encoded once: the work per request is the exchange, not building JSON."""
    return json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 0,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "OK"},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 12, "completion_tokens": 1, "total_tokens": 13},
        }
    ).encode()


def response(body: bytes) -> bytes:
    head = (
        "HTTP/1.1 200 OK\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: keep-alive\r\n\r\n"
    )
    return head.encode() + body


class Exchange(asyncio.Protocol):
    """One keep-alive connection: each complete request gets `answer` `delay` s after it
    was read. A general server's per-request work (aiohttp's is about 0.1 ms) would send
    the answers of a slot's simultaneous probes one behind the other: the very error this
    server is here to keep out of the reading."""

    def __init__(self, delay: float, answer: bytes, holds: list[Hold] | None) -> None:
        self.delay = delay
        self.answer = answer
        self.holds = holds
        self.pending = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        read = time.perf_counter()
        self.pending += data
        while (end := self.pending.find(b"\r\n\r\n")) >= 0:
            head = self.pending[:end].lower()
            length = 0
            if (at := head.find(b"\r\ncontent-length:")) >= 0:
                length = int(head[at + 17 :].split(b"\r\n", 1)[0].strip() or 0)
            if len(self.pending) < end + 4 + length:
                return  # the body is still coming
            self.pending = self.pending[end + 4 + length :]
            close = b"\r\nconnection: close" in head
            loop = asyncio.get_running_loop()
            loop.call_at(loop.time() + self.delay, self.respond, head, read, time.time(), close)

    def respond(self, head: bytes, read: float, read_at: float, close: bool) -> None:
        hold_ms = (time.perf_counter() - read) * 1000.0
        if self.transport is None:
            return  # the client went away while it waited
        self.transport.write(self.answer)
        if close:
            self.transport.close()
        if self.holds is not None:
            path = head.split(b" ", 2)[1]
            client = "blackbox" if b"instance blackbox" in head else "daemon"
            self.holds.append(Hold(client, path.split(b"/", 2)[1].decode(), read_at, hold_ms))


def write_holds(path: Path, holds: list[Hold]) -> None:
    with path.open("w") as out:
        out.writelines(f"{h.client}\t{h.name}\t{h.read_at:.6f}\t{h.hold_ms:.4f}\n" for h in holds)


def read_holds(path: Path) -> list[Hold]:
    holds = []
    with path.open() as lines:
        for line in lines:
            client, name, read_at, hold_ms = line.rstrip("\n").split("\t")
            holds.append(Hold(client, name, float(read_at), float(hold_ms)))
    return holds


async def serve(port: int, delay: float, model: str, record: Path | None) -> None:
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)

    def on_stdin() -> None:
        if not os.read(sys.stdin.fileno(), 65536):  # EOF: the benchmark is finished
            loop.remove_reader(sys.stdin.fileno())
            done.set()

    if not sys.stdin.isatty():
        loop.add_reader(sys.stdin.fileno(), on_stdin)
    answer = response(completion(model))
    holds: list[Hold] | None = [] if record is not None else None
    server = await loop.create_server(
        lambda: Exchange(delay, answer, holds), "127.0.0.1", port, backlog=BACKLOG
    )
    host, bound = server.sockets[0].getsockname()[:2]
    print(f"http://{host}:{bound}", flush=True)
    try:
        await done.wait()
    finally:
        server.close()
        if record is not None and holds is not None:
            write_holds(record, holds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    parser.add_argument("--delay", type=float, default=0.05, help="seconds before answering")
    parser.add_argument("--model", default="bench-model", help="the model the answer names")
    parser.add_argument("--record", type=Path, default=None, help="write each request's hold")
    args = parser.parse_args(argv)
    # The standard loop, not uvloop: uvloop's clock is the millisecond its iteration began,
    # so a timer set from it can fire before `delay` has passed since the read.
    asyncio.run(serve(args.port, args.delay, args.model, args.record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
