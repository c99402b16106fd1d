"""Top functions of a py-spy raw profile (`py-spy record -t -f raw`, as bench_core.py --profile
py-spy writes it), without the samples of idle threads (waiting in a queue or in epoll).

    python3 bench/pyspy_top.py PROFILE.txt [--top 15] [--by-process]

Prints two lists: by self time (the innermost frame) and by inclusive time for central's own
functions (any frame of a central/ module), each as a percentage of the busy samples.
"""
from __future__ import annotations

import argparse
import collections

# innermost frames that mean the thread was waiting, not working
IDLE = ("_worker (concurrent/futures/thread.py:81)", "_connection_worker_thread (aiosqlite/core.py:59)",
        "select (selectors.py:", "wait (threading.py:", "_wait_for_tstate_lock",
        "_do_waitpid (asyncio/unix_events.py")  # asyncio's thread waiting for a child (a poll worker) to end


def _function(frame: str) -> str:
    """'name (path:line)' -> 'name (path)': a function's samples together, whatever the line."""
    head, _, tail = frame.rpartition(":")
    return head + ")" if tail.endswith(")") and tail[:-1].isdigit() else frame


def processes(path: str) -> list[str]:
    """The processes of a profile recorded with --subprocesses (its stacks start 'process N:...'),
    in the order first seen; [] for one process."""
    seen: dict[str, None] = {}
    for line in open(path):
        label, _ = _process_of(line.split(";"))
        if label is not None:
            seen.setdefault(label)
    return list(seen)


def _process_of(frames: list[str]) -> tuple[str | None, list[str]]:
    """('process N', the stack's own frames): a child's stack starts with its parents' 'process' frames."""
    k = 0
    while k < len(frames) and frames[k].startswith("process "):
        k += 1
    return (frames[k - 1].split(":", 1)[0] if k else None), frames[k:]


def top(path: str, n: int, process: str | None = None) -> str:
    self_time: collections.Counter = collections.Counter()
    inclusive: collections.Counter = collections.Counter()
    busy = idle = 0
    for line in open(path):
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not stack:
            continue
        label, frames = _process_of(stack.split(";"))
        if process is not None and label != process:
            continue
        k = int(count)
        if any(frames[-1].startswith(i) or i in frames[-1] for i in IDLE):
            idle += k
            continue
        busy += k
        self_time[_function(frames[-1])] += k
        for f in {_function(f) for f in frames}:
            if "central/" in f:
                inclusive[f] += k
    out = [f"busy samples {busy}, idle {idle} (idle threads' samples left out)", "by self time:"]
    out += [f"  {100 * c / busy:5.1f} %  {f}" for f, c in self_time.most_common(n)]
    out.append("central functions, inclusive:")
    out += [f"  {100 * c / busy:5.1f} %  {f}" for f, c in inclusive.most_common(n)]
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("profile")
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--by-process", action="store_true",
                   help="a profile of several processes (py-spy --subprocesses: a central and its poll workers): each apart")
    args = p.parse_args()
    if args.by_process:
        for process in processes(args.profile):
            print(f"{process}:\n{top(args.profile, args.top, process)}\n")
    else:
        print(top(args.profile, args.top))


if __name__ == "__main__":
    main()
