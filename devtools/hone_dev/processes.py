"""Processes as a test sees them through /proc (Linux): children, stopped state, pending signals.

With these a test can freeze a process, act, and only then let it go on, instead of
racing it: e.g. stop the trainer, press Ctrl-C on `hone run`, wait until the SIGTERM
that `hone run` forwards is pending in the trainer, then continue it.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Callable, Iterable

from hone_dev.cluster import wait_for


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may contain spaces
    return text[text.rindex(")") + 2:].split()


def children(pid: int) -> list[int]:
    """Every live descendant of ``pid``, parents before their children."""
    by_parent: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields is not None:
                by_parent.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in sorted(by_parent.get(todo.pop(0), [])):
            found.append(child)
            todo.append(child)
    return found


def stopped(pid: int) -> bool:
    """True when ``pid`` is stopped by a signal (state T), or gone (exited: a zombie not reaped yet counts),
    or cannot run until a stopped child does: a parent in ``vfork`` (Python's subprocess, posix_spawn)
    waits uninterruptibly (state D, in kernel_clone) until its child execs or exits, so a SIGSTOP only
    takes effect after that, and never while the child is stopped before its exec."""
    fields = _stat(pid)
    if fields is None or fields[0] in ("T", "t", "Z", "X"):
        return True
    return fields[0] == "D" and _wchan(pid) == "kernel_clone" and any(
        stopped(child) for child in children(pid) if (_stat(child) or ["", ""])[1] == str(pid))


def _wchan(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/wchan").read_text()
    except OSError:
        return ""


def signal_pending(pid: int, signum: int) -> bool:
    """True when ``signum`` waits for delivery to ``pid`` (sent while it was stopped)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return False
    masks = [int(line.split()[1], 16) for line in lines if line.startswith(("SigPnd:", "ShdPnd:"))]
    return any(mask & (1 << (signum - 1)) for mask in masks)


def describe(pids: list[int]) -> str:
    """One line per pid for a failure message: its state, where the kernel has it waiting, its signals."""
    lines = []
    for pid in pids:
        try:
            status = dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                          if ":\t" in line)
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:120]
            wchan = _wchan(pid)
        except OSError:
            lines.append(f"{pid}: gone")
            continue
        signals = " ".join(f"{k}={status.get(k, '?').strip()}" for k in ("SigPnd", "ShdPnd", "SigBlk", "SigIgn", "SigCgt"))
        lines.append(f"{pid} ppid={status.get('PPid', '?').strip()} state={status.get('State', '?').strip()} "
                     f"wchan={wchan or '-'} {signals} {cmd}")
    return "\n".join(lines)


def stop(pids: Iterable[int]) -> None:
    send(pids, signal.SIGSTOP)


def run_in_slices(pids: list[int], until: Callable[[], bool], slice_seconds: float = 0.02,
                  timeout: float = 180.0) -> None:
    """Let stopped ``pids`` run a few milliseconds at a time until ``until()`` holds; they end stopped.

    Between two slices the processes are stopped, so a condition seen true still holds
    when this returns: e.g. "a checkpoint exists and the run is not over" cannot be
    overtaken by the run finishing, however fast it is.
    """
    deadline = time.monotonic() + timeout
    while not until():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s running {pids} in slices")
        resume(pids)
        time.sleep(slice_seconds)
        stop(pids)
        wait_for(lambda: all(stopped(p) for p in pids), timeout=30, interval=0.001, what=f"{pids} stopped")


def resume(pids: Iterable[int]) -> None:
    send(pids, signal.SIGCONT)


def send(pids: Iterable[int], signum: int) -> None:
    """``signum`` to each of ``pids`` that still exists: one can go before its turn, e.g. every process of a
    PID namespace when its init is SIGKILLed first."""
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass
