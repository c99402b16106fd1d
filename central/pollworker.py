"""Poll workers: the SSH side of polling in processes of their own, so a fleet uses more than one core.

A central's polling ran on its one event loop: every SSH handshake, every packet's encryption
and framing, every agent document's parsing. At 10,000 hosts on a 2-core machine that loop was
the limit (BENCHMARKS.md, "Stop 29": the connect phase took 51-96 s with the central at 0.7-0.9
core and the machine's second core half idle). With `poll.workers = N` the serving process
starts N worker processes (`python -P -m central.pollworker FD`) and gives each a fixed share of
the SSH servers (server id modulo N). A worker holds its share's SSH connections (its own
central.sshpool.SSHPool) and runs exactly what the in-process poll runs, central.poller.poll_once:
the agent's document, its inventory when that changed, parsed and checked there. It sends back
the poll's outcome (central.model.PollOutcome); the serving process keeps everything else: the
schedule, the writer and the database, alerts, the API and the page, remote actions and the
terminal (which open a connection of the serving process's own pool when first asked).

The two talk over a socketpair made for the worker (no port, no file), in frames of a 4-byte
length and a pickle. What the serving process reads from a worker is unpickled with an allowlist
(plain values and PollOutcome only): a worker handles the hosts' documents, and nothing it
sends can name a function to call. A worker asks the serving process for what lives in the
database: a server's agent secret (at each channel open, as in-process) and a bastion's record.
Its log records are sent to the serving process and logged there, under their own logger names.

A worker that exits (a crash, a kill) fails the polls it had under way as central_error, naming
it and its exit status; the next poll of its share starts a new one: at once the first time,
then, while each new one dies within RESTART_MAX of its start, after RESTART_INITIAL doubling up
to RESTART_MAX (its share's polls fail meanwhile, saying when it starts again). A worker that
sent nothing for HUNG_AFTER (it reports its figures every STATS_EVERY) is taken as hung and
killed, and the same follows. A worker ends when the serving process closes it, and when its
socket reaches end of file (the serving process died). Each takes over the garbage collector as the serving process does (central.gcpolicy):
its connections are most of the fleet's long-lived objects.
"""
from __future__ import annotations

import asyncio
import io
import itertools
import logging
import os
import pickle
import signal
import socket
import struct
import sys
import time
import traceback
from typing import Awaitable, Callable

from .config import Config
from .model import CENTRAL_ERROR, PollError, PollOutcome, Server
from .poller import failed_outcome, poll_once

log = logging.getLogger(__name__)

_HEADER = struct.Struct(">I")
# A frame's bound: far above a poll's outcome (its document is at most poll.max_response_bytes,
# 4 MB by default, and escaping its control characters can grow it: frame_bound).
MAX_FRAME = 64 * 1024 * 1024
RESTART_INITIAL = 1.0  # seconds before a worker that died young is started again; doubling...
RESTART_MAX = 30.0  # ...up to this; a worker that lived longer than this restarts at once
STATS_EVERY = 1.0  # seconds between a worker's figures (open connections, connects)
# A worker that sent nothing this long (its figures come every STATS_EVERY) is hung: killed (by
# its pid) and started again. A poll in a worker has no bound of its own beyond the poll's and
# the connect's timeouts, as in-process: one waiting for a connect slot in a fleet's start is
# no failure.
HUNG_AFTER = 30.0
CLOSE_WAIT = 2.0  # seconds a closed worker gets to close its connections before it is killed
# The package's own directory's parent, first on the worker's path: it imports the very code the
# serving process runs, never a `central` of the working directory (-P: not on its path).
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def polling_config(config: Config) -> Config:
    """What a worker is given of the config: [poll], [ssh] and the data directory (the polling
    key's default place); the rest (notifiers, the bot's token file, the database URL, the
    terminal's key, the HTTP settings) stays with the serving process, and a worker gets their defaults."""
    return Config(data_dir=str(config.data_path), poll=config.poll, ssh=config.ssh, source=config.source)


# framing

def frame(message: object) -> bytes:
    """One message as sent: its length, then its pickle."""
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(data)) + data


class _Allowlist(pickle.Unpickler):
    """Unpickles plain values and poll outcomes only: a frame naming anything else is refused."""

    def find_class(self, module: str, name: str):
        if (module, name) == ("central.model", "PollOutcome"):
            return PollOutcome
        raise pickle.UnpicklingError(f"a poll worker sent a frame naming {module}.{name}")


def loads_from_worker(data: bytes) -> object:
    """A worker's frame, unpickled with the allowlist (pickle.UnpicklingError otherwise)."""
    return _Allowlist(io.BytesIO(data)).load()


def frame_bound(config: Config) -> int:
    """The longest frame a worker may send for this config."""
    return max(MAX_FRAME, 8 * config.poll.max_response_bytes)


async def receive(reader: asyncio.StreamReader, loads: Callable[[bytes], object] = pickle.loads,
                  limit: int = MAX_FRAME) -> object:
    """The next message; asyncio.IncompleteReadError at end of file, ValueError on a bad length."""
    size, = _HEADER.unpack(await reader.readexactly(_HEADER.size))
    if size > limit:
        raise ValueError(f"a frame of {size} bytes (at most {limit})")
    return loads(await reader.readexactly(size))


class RemoteError(Exception):
    """A poll raised inside a worker (a bug in the central): remote_text is its type and message
    ("KeyError: 'x'"), and the exception's text goes on with the worker's traceback (so a
    logged traceback shows where in the worker it was raised)."""

    def __init__(self, text: str, remote_traceback: str):
        super().__init__(f"{text}\nraised in the poll worker:\n{remote_traceback.rstrip()}")
        self.remote_text = text


def exit_text(code: int | None) -> str:
    """A process's exit status in words."""
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


# the serving process's side

Asks = dict[str, Callable[[object], Awaitable[object]]]


class PollWorkers:
    """The serving process's poll workers: each polls the SSH servers whose id modulo their
    number is its index."""

    def __init__(self, config: Config, asks: Asks):
        self.config = config
        self.asks = asks  # what a worker may ask: "secret" (server id) and "server" (server id)
        self.workers = [_Worker(self, i) for i in range(config.poll.workers)]
        self.closing = False

    def _of(self, server_id: int) -> "_Worker":
        return self.workers[server_id % len(self.workers)]

    async def poll(self, server: Server) -> PollOutcome:
        """Poll one server in its worker (starting the worker when it is not running)."""
        return await self._of(server.id).poll(server)

    def forget(self, server_id: int) -> None:
        """Close the server's connection in its worker."""
        self._of(server_id).send(("forget", server_id))

    def reset_backoff(self, server_id: int) -> None:
        """Let the server's next poll reconnect at once."""
        self._of(server_id).send(("reset", server_id))

    async def stop_connecting(self) -> None:
        """Every worker gives up its connects under way (the poller is stopping)."""
        for worker in self.workers:
            worker.send(("stop_connecting",))

    async def close(self) -> None:
        """End every worker: each closes its connections, and is killed after CLOSE_WAIT."""
        self.closing = True
        await asyncio.gather(*(w.close() for w in self.workers))

    @property
    def size(self) -> int:
        """Open connections in the workers (as last reported, every STATS_EVERY)."""
        return sum(w.size for w in self.workers)

    @property
    def connects(self) -> int:
        """Successful connects in the workers, the current processes' (as last reported)."""
        return sum(w.connects for w in self.workers)

    def figures(self) -> list[dict]:
        """Each worker: its pid, whether it runs, restarts, open connections and polls under way."""
        return [w.figures() for w in self.workers]


class _Worker:
    def __init__(self, owner: PollWorkers, index: int):
        self.owner = owner
        self.index = index
        self.proc: asyncio.subprocess.Process | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reading: asyncio.Task | None = None
        self._watching: asyncio.Task | None = None
        self._heard = 0.0  # when the worker's last frame came (time.monotonic)
        self.hung = False  # killed for sending nothing for HUNG_AFTER
        self._starting: asyncio.Task | None = None
        self._pending: dict[int, asyncio.Future] = {}
        self._answering: set[asyncio.Task] = set()
        self._ids = itertools.count(1)
        self._started_at = 0.0
        self._retry_at = 0.0
        self._delay = 0.0  # before the next start after a death (0: at once)
        self._young_deaths = 0  # deaths in a row, each within RESTART_MAX of its start
        self.exited: str | None = None  # how the last process ended
        self.restarts = 0
        self.size = 0
        self.connects = 0
        # the worker's collections (central.gcpolicy): the longest pause and the most CPU one
        # took per generation (seconds), how many paused over gcpolicy.LONG_PAUSE (of CPU too)
        self.gc: dict = {}

    def figures(self) -> dict:
        return {"index": self.index, "pid": self.proc.pid if self.proc is not None else None,
                "running": self._writer is not None, "restarts": self.restarts, "connections": self.size,
                "polls_under_way": len(self._pending), "last_exit": self.exited}

    def send(self, message: object) -> None:
        """Send a message when the worker runs (a stopped one has nothing to forget)."""
        if self._writer is not None:
            self._writer.write(frame(message))

    async def poll(self, server: Server) -> PollOutcome:
        """The server's poll in this worker; a worker that cannot poll fails it (central_error)."""
        started = time.time()
        t0 = time.perf_counter()
        try:
            return await self._poll(server)
        except PollError as err:
            return failed_outcome(server, started, t0, err)

    async def _poll(self, server: Server) -> PollOutcome:
        if self._writer is None:
            await self._ensure()
        if self._writer is None:
            raise PollError(CENTRAL_ERROR, f"poll worker {self.index} ended ({self.exited})")
        rid = next(self._ids)
        future = self._pending[rid] = asyncio.get_running_loop().create_future()
        self._writer.write(frame(("poll", rid, server)))
        try:
            return await future
        except asyncio.CancelledError:  # the poller stops: the worker's poll is cancelled too
            if self._pending.pop(rid, None) is not None:
                self.send(("cancel", rid))
            raise

    async def _ensure(self) -> None:
        if self.owner.closing:
            raise PollError(CENTRAL_ERROR, "the poll workers are closing")
        if self._starting is None:
            wait = self._retry_at - time.monotonic()
            if wait > 0:
                raise PollError(CENTRAL_ERROR, f"poll worker {self.index} exited ({self.exited}); "
                                               f"starting it again in {wait:.0f}s")
            self._starting = asyncio.create_task(self._start(), name=f"poll-worker-{self.index}-start")
        task = self._starting
        try:
            await asyncio.shield(task)
        except OSError as exc:
            self._young_deaths += 1
            self._delay = min(RESTART_MAX, RESTART_INITIAL * 2 ** max(0, self._young_deaths - 1))
            self._retry_at = time.monotonic() + self._delay
            self.exited = f"could not start: {exc}"
            log.error("poll worker %d could not start: %s", self.index, exc)
            raise PollError(CENTRAL_ERROR, f"poll worker {self.index} could not start: {exc}") from None
        finally:
            if task.done() and self._starting is task:
                self._starting = None

    async def _start(self) -> None:
        ours, theirs = socket.socketpair()
        try:
            path = os.pathsep.join(p for p in (_ROOT, os.environ.get("PYTHONPATH", "")) if p)
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-P", "-m", "central.pollworker", str(theirs.fileno()), pass_fds=(theirs.fileno(),),
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                env={**os.environ, "PYTHONPATH": path})
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        levels = {name: logging.getLogger(name).getEffectiveLevel() for name in ("", "central", "asyncssh")}
        writer.write(frame(("config", polling_config(self.owner.config), levels)))
        if self._started_at:
            self.restarts += 1
        self._started_at = time.monotonic()
        self._writer = writer
        self._heard = time.monotonic()
        self._reading = asyncio.create_task(self._read(reader, self.proc), name=f"poll-worker-{self.index}")
        self._watching = asyncio.create_task(self._watch(self.proc), name=f"poll-worker-{self.index}-watch")
        log.info("poll worker %d started (pid %d)", self.index, self.proc.pid)

    async def _watch(self, proc: asyncio.subprocess.Process) -> None:
        """Kill the worker when it sent nothing for HUNG_AFTER (its reader then fails its polls)."""
        while proc.returncode is None:
            await asyncio.sleep(min(STATS_EVERY * 5, HUNG_AFTER / 2))
            silent = time.monotonic() - self._heard
            if silent > HUNG_AFTER and proc.returncode is None:
                log.error("poll worker %d (pid %d) sent nothing for %.0fs: killing it", self.index, proc.pid, silent)
                self.hung = True
                proc.kill()  # our own child, by its pid
                return

    async def _read(self, reader: asyncio.StreamReader, proc: asyncio.subprocess.Process) -> None:
        why = ""
        bound = frame_bound(self.owner.config)
        try:
            while True:
                message = await receive(reader, loads_from_worker, bound)
                self._heard = time.monotonic()
                kind = message[0]
                if kind == "outcome":
                    future = self._pending.pop(message[1], None)
                    if future is not None and not future.done():
                        future.set_result(message[2])
                elif kind == "raised":
                    future = self._pending.pop(message[1], None)
                    if future is not None and not future.done():
                        future.set_exception(RemoteError(message[2], message[3]))
                elif kind == "ask":
                    task = asyncio.create_task(self._answer(message[1], message[2], message[3]),
                                               name=f"poll-worker-{self.index}-ask")
                    self._answering.add(task)  # a task only the loop refers to may be collected
                    task.add_done_callback(self._answering.discard)
                elif kind == "log":
                    _emit(message[1], self.index)
                elif kind == "stats":
                    self.size, self.connects, self.gc = message[1], message[2], message[3]
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        except (pickle.UnpicklingError, ValueError, IndexError, TypeError, EOFError, AttributeError) as exc:
            why = f"it sent a bad frame ({exc})"
            log.error("poll worker %d (pid %d) %s: ending it", self.index, proc.pid, why)
        except asyncio.CancelledError:
            why = "closed"
            raise
        finally:
            await self._lost(proc, why)

    async def _answer(self, rid: int, what: str, arg: object) -> None:
        try:
            value = await self.owner.asks[what](arg)
        except Exception as exc:  # noqa: BLE001 - the worker's poll fails with it, not this process
            self.send(("refused", rid, f"{type(exc).__name__}: {exc}"))
            return
        self.send(("reply", rid, value))

    async def _lost(self, proc: asyncio.subprocess.Process, why: str) -> None:
        writer, self._writer = self._writer, None
        if self._watching is not None:
            self._watching.cancel()
        if writer is not None:
            writer.close()
        if proc.returncode is None:
            try:
                await asyncio.wait_for(asyncio.shield(proc.wait()), CLOSE_WAIT)
            except asyncio.TimeoutError:
                proc.kill()  # our own child, by its pid
                await proc.wait()
        self.exited = why or (f"hung, {exit_text(proc.returncode)}" if self.hung else exit_text(proc.returncode))
        self.hung = False
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(PollError(CENTRAL_ERROR, f"poll worker {self.index} (pid {proc.pid}) "
                                                              f"ended during the poll ({self.exited})"))
        self.size = 0
        if self.owner.closing:
            return
        lived = time.monotonic() - self._started_at
        self._young_deaths = 0 if lived > RESTART_MAX else self._young_deaths + 1
        self._delay = 0.0 if self._young_deaths <= 1 else min(RESTART_MAX, RESTART_INITIAL * 2 ** (self._young_deaths - 2))
        self._retry_at = time.monotonic() + self._delay
        log.error("poll worker %d (pid %d) ended (%s) after %.0fs; %s", self.index, proc.pid, self.exited, lived,
                  "the next poll of its servers starts it again" if not self._delay
                  else f"starting it again in {self._delay:.0f}s at the next poll of its servers")

    async def close(self) -> None:
        if self._starting is not None:
            await asyncio.gather(self._starting, return_exceptions=True)
        if self._writer is None:
            return
        self.send(("close",))
        reading = self._reading
        if reading is not None:
            try:
                await asyncio.wait_for(asyncio.shield(reading), CLOSE_WAIT + 1.0)
            except asyncio.TimeoutError:
                reading.cancel()
                await asyncio.gather(reading, return_exceptions=True)


def _emit(fields: dict, index: int) -> None:
    """Log a worker's record in this process, under its own logger's name."""
    record = logging.makeLogRecord(fields)
    record.processName = f"poll-worker-{index}"
    logger = logging.getLogger(record.name)
    if logger.isEnabledFor(record.levelno):
        logger.handle(record)


# the worker's side

class _Forward(logging.Handler):
    """Sends each record to the serving process (its text formatted here: no objects cross)."""

    def __init__(self, send: Callable[[object], None]):
        super().__init__()
        self._send = send

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields = {"name": record.name, "levelno": record.levelno, "levelname": record.levelname,
                      "msg": record.getMessage(), "args": None, "created": record.created,
                      "msecs": record.msecs, "pathname": record.pathname, "filename": record.filename, "lineno": record.lineno,
                      "funcName": record.funcName, "module": record.module}
            if record.exc_info:
                fields["exc_text"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
            self._send(("log", fields))
        except Exception:  # noqa: BLE001 - as logging.Handler does
            self.handleError(record)


class _Serving:
    """One worker process's state: its pool, its polls under way, its questions to the serving process."""

    def __init__(self, writer: asyncio.StreamWriter):
        self.writer = writer
        self.polls: dict[int, asyncio.Task] = {}
        self.asked: dict[int, asyncio.Future] = {}
        self._ids = itertools.count(1)
        self.transport = None

    def send(self, message: object) -> None:
        if not self.writer.is_closing():
            self.writer.write(frame(message))

    async def ask(self, what: str, arg: object) -> object:
        rid = next(self._ids)
        future = self.asked[rid] = asyncio.get_running_loop().create_future()
        self.send(("ask", rid, what, arg))
        try:
            return await future
        finally:
            self.asked.pop(rid, None)

    async def poll(self, rid: int, server: Server) -> None:
        try:
            outcome = await poll_once(self.transport, server)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the serving process logs it as the in-process poll would
            self.send(("raised", rid, f"{type(exc).__name__}: {exc}", traceback.format_exc()))
        else:
            self.send(("outcome", rid, outcome))
        finally:
            self.polls.pop(rid, None)

    async def stats(self, pool, policy) -> None:
        while True:
            self.send(("stats", pool.size, pool.connects,
                       {"pause_max": policy.pause_max, "pause_cpu_max": policy.pause_cpu_max,
                        "long_pauses": policy.long_pauses, "long_pauses_cpu": policy.long_pauses_cpu}))
            await asyncio.sleep(STATS_EVERY)


async def serve(fd: int) -> None:
    """A worker's life: read the config, then poll what is asked until closed or orphaned."""
    from .gcpolicy import GCPolicy
    from .sshpool import SSHPool
    from .transport import SSHTransport

    reader, writer = await asyncio.open_unix_connection(sock=socket.socket(fileno=fd))
    _, config, levels = await receive(reader)
    state = _Serving(writer)
    root = logging.getLogger()
    root.handlers[:] = [_Forward(state.send)]
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    pool = SSHPool(config.ssh, config.key_path)
    pool.agent_secret = lambda server: state.ask("secret", server.id)
    pool.resolve_server = lambda server_id: state.ask("server", server_id)
    state.transport = SSHTransport(config, pool)
    policy = GCPolicy()
    policy.start()

    async def settle() -> None:
        while True:
            await asyncio.sleep(config.poll.reload_interval)
            policy.settle()

    background = [asyncio.create_task(policy.run(), name="gc-young"), asyncio.create_task(settle(), name="gc-settle"),
                  asyncio.create_task(state.stats(pool, policy), name="stats")]
    try:
        while True:
            try:
                message = await receive(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                break  # the serving process is gone
            kind = message[0]
            if kind == "poll":
                state.polls[message[1]] = asyncio.create_task(state.poll(message[1], message[2]))
            elif kind == "cancel":
                task = state.polls.pop(message[1], None)
                if task is not None:
                    task.cancel()
            elif kind in ("reply", "refused"):
                future = state.asked.get(message[1])
                if future is not None and not future.done():
                    if kind == "reply":
                        future.set_result(message[2])
                    else:
                        future.set_exception(RuntimeError(message[2]))
            elif kind == "forget":
                pool.forget(message[1])
            elif kind == "reset":
                pool.reset_backoff(message[1])
            elif kind == "stop_connecting":
                await pool.stop_connecting(wait=0.5)
            elif kind == "close":
                break
    finally:
        tasks = [*state.polls.values(), *background]  # a cancelled poll drops itself from state.polls
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await pool.close()
        policy.stop(unfreeze=False)
        writer.close()


def main(fd: str) -> None:
    """The worker process's entry point (started by PollWorkers with its socket's descriptor)."""
    # A Ctrl-C, a closed terminal or systemd's stop signal (sent to the whole unit) reach the
    # serving process too, and it closes its workers once its polls are stopped: a worker that
    # ended first would fail its polls under way, and the stop would store them as failures.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    asyncio.run(serve(int(fd)))


if __name__ == "__main__":
    main(sys.argv[1])
