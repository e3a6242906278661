"""How a gateway process stops: soon, in bounded steps, and with every process it started.

Why (issue 24): a gateway told to stop while Redis was gone kept running for minutes (its refit loop swallowed the
cancellation and polled on, and spawned a worker process after the stop began), and a SIGKILLed gateway left its
refit worker and multiprocessing's resource tracker behind. Here: background work is stopped the moment the stop
signal arrives (before uvicorn drains requests), each stop step runs under a share of `gateway.shutdown_timeout_s`,
a watchdog ends a process that still runs past it, and worker processes end when their parent does.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import threading
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from types import FrameType
from typing import Any

log = logging.getLogger("crowd_gateway")

Step = tuple[str, Callable[[], Awaitable[Any]]]

WATCHDOG_GRACE_S = 2.0
"""Past the shutdown timeout, what the interpreter's own exit may take before the watchdog ends the process."""


async def run_stop_steps(steps: Sequence[Step], timeout_s: float) -> None:
    """Run `steps` in order within `timeout_s` in all, each within an equal share of what is left: a step that
    overruns or fails is logged by name and left behind, so one stuck step never holds the others or the exit."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    for done, (name, step) in enumerate(steps):
        share = (deadline - loop.time()) / (len(steps) - done)
        try:
            async with asyncio.timeout(max(share, 0.0)):
                await step()
        except TimeoutError:
            log.warning("stopping: %s did not finish within %.1f s; left behind", name, share)
        except Exception as exc:  # a failing step must not keep the next ones from running
            log.warning("stopping: %s failed: %s: %s", name, type(exc).__name__, exc)


def on_stop_signal(callback: Callable[[], None], timeout_s: float) -> None:
    """Call `callback` on the event loop when SIGTERM or SIGINT first arrives, and pass each signal on to the
    handler that was there (uvicorn's, which starts draining requests); end the process if it still runs
    `timeout_s` (plus WATCHDOG_GRACE_S) after that first signal.

    uvicorn installs its handlers with signal.signal before the app's startup and restores the previous ones when
    it is done, so chaining onto them here is undone with them. Served from a thread (tests, the tools' embedded
    gateway), there are no signals to chain onto.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    loop = asyncio.get_running_loop()
    begun = False

    def begin() -> None:
        nonlocal begun
        if not begun:
            begun = True
            threading.Thread(target=_end_after, args=(timeout_s + WATCHDOG_GRACE_S,), name="stop-watchdog",
                             daemon=True).start()
            callback()

    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)
        if not callable(previous):  # no server drains on this signal: its default (ending the process) stays
            continue

        def handler(signum: int, frame: FrameType | None, previous: Callable[..., Any] = previous) -> None:
            loop.call_soon_threadsafe(begin)  # the least a signal handler can do: the rest runs on the loop
            previous(signum, frame)

        signal.signal(sig, handler)


def _end_after(after_s: float) -> None:
    threading.Event().wait(after_s)
    log.error("stopping took longer than gateway.shutdown_timeout_s; ending the process now")
    os._exit(1)


def exit_with_parent() -> None:
    """Initializer of worker processes: end this process as soon as its parent ends, however it ended (a SIGKILL
    included), so neither it nor the resource tracker it holds open outlives the gateway."""
    on_parent_exit(lambda: os._exit(1))


def on_parent_exit(action: Callable[[], None]) -> None:
    """Run `action` in a daemon thread when the multiprocessing parent of this process ends (no-op without one).

    The parent's sentinel is a pipe whose writing end only the parent holds: it reads EOF when the parent ends."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        parent.join()
        action()

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def end_workers(pool: ProcessPoolExecutor) -> None:
    """Cancel what waits for `pool` and end its worker processes now, without waiting for a task in progress
    (Python 3.14's ProcessPoolExecutor.terminate_workers(), which 3.11 lacks)."""
    processes = list((pool._processes or {}).values())  # noqa: SLF001 -- what terminate_workers() reads too
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()
