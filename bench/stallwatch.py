"""Runs `central serve` (or any `central` command) with a watchdog that explains event-loop stalls.

    python3 bench/stallwatch.py OUT.jsonl serve --port 9083

A coroutine ticks every 5 ms on the serving loop; a thread checks the tick every 5 ms and, when
the loop has not ticked for STALL seconds, samples the main thread's stack every 5 ms until it
ticks again. Each stall becomes one JSON line in OUT.jsonl: its length, whether the cyclic GC
was running (gc.callbacks), and the stack seen most often during it (innermost frames last).
bench/bench_api.py --stallwatch uses it to say where the API's tail latency comes from.
"""
from __future__ import annotations

import asyncio
import collections
import gc
import json
import os
import sys
import threading
import time
import traceback

STALL = 0.04  # seconds without a tick that count as a stall
TICK = 0.005

_tick = time.monotonic()
_in_gc = [False, 0.0, 0]  # running, started at, generation
_gc_pauses: list[tuple[float, int]] = []


def _gc_callback(phase, info):
    if phase == "start":
        _in_gc[0], _in_gc[1], _in_gc[2] = True, time.perf_counter(), info.get("generation", 2)
    else:
        _in_gc[0] = False
        took = time.perf_counter() - _in_gc[1]
        if took >= STALL:
            _gc_pauses.append((took, info.get("generation", 2)))


def _frames(frame) -> list[str]:
    out = []
    for fs in traceback.extract_stack(frame)[-12:]:
        path = fs.filename
        for marker in ("/site-packages/", "/central/", "/lib/python3"):
            if marker in path:
                path = path[path.index(marker) + 1:]
                break
        out.append(f"{path}:{fs.lineno} {fs.name}")
    return out


def _watch(main_id: int, out_path: str) -> None:
    with open(out_path, "a") as out:
        while True:
            time.sleep(TICK)
            if time.monotonic() - _tick < STALL:
                continue
            started = _tick
            stacks: collections.Counter = collections.Counter()
            gc_seen = False
            while time.monotonic() - started >= STALL and _tick == started:
                frame = sys._current_frames().get(main_id)  # noqa: SLF001
                gc_seen = gc_seen or _in_gc[0]
                if frame is not None:
                    stacks[tuple(_frames(frame))] += 1
                time.sleep(TICK)
            length = time.monotonic() - started
            top = stacks.most_common(1)[0][0] if stacks else ()
            out.write(json.dumps({"t": time.time(), "stall_s": round(length, 3), "gc": gc_seen,
                                  "gc_generation": _in_gc[2] if gc_seen else None,
                                  "samples": sum(stacks.values()), "stack": list(top)}) + "\n")
            out.flush()


async def _ticker() -> None:
    global _tick
    while True:
        _tick = time.monotonic()
        await asyncio.sleep(TICK)


def main() -> None:
    out_path = sys.argv[1]
    sys.argv = ["central", *sys.argv[2:]]
    gc.callbacks.append(_gc_callback)
    threading.Thread(target=_watch, args=(threading.get_ident(), out_path), daemon=True).start()
    from aiohttp import web

    from central.cli import cli

    real_create_app = None
    import central.web.app as app_module

    real_create_app = app_module.create_app

    def create_app(config):
        app = real_create_app(config)

        async def ticking(app):
            task = asyncio.create_task(_ticker())
            yield
            task.cancel()

        app.cleanup_ctx.append(ticking)
        return app

    app_module.create_app = create_app
    assert web  # the app module imports it; kept for clarity of what is patched
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    cli()


if __name__ == "__main__":
    main()
