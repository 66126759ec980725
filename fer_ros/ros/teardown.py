"""A time bound on a node's teardown (destroy_node and rclpy shutdown).

Fast DDS can block for good while deleting a participant whose TCP channels (the LARGE_DATA
transport, see dds.py) are stuck (eProsima/Fast-DDS#2010), and rclpy holds Python's GIL while it
waits: Ctrl-C then leaves the node running until launch escalates to SIGTERM (also caught by
rclpy) and SIGKILL. `bounded(seconds)` arms two timers that run without the GIL: faulthandler's
watchdog prints every thread's stack (where it hung) and a C-library timer then ends the process
with exit code 0. The node's own cleanup (session logs, files) runs first in destroy_node and
takes a small part of the bound; only the middleware's goodbye is cut short, as a kill would.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import faulthandler
import sys

SIGEV_THREAD = 2
CLOCK_MONOTONIC = 1
GRACE_S = 0.5  # between the stack dump and the exit, so the dump reaches the log


class _SigEvent(ctypes.Structure):
    """struct sigevent (glibc, 64 bytes) for SIGEV_THREAD: notify(value) runs in a new C thread."""
    _fields_ = [("value", ctypes.c_void_p), ("signo", ctypes.c_int), ("notify", ctypes.c_int),
                ("function", ctypes.c_void_p), ("attribute", ctypes.c_void_p), ("_pad", ctypes.c_int * 8)]


class _TimeSpec(ctypes.Structure):
    _fields_ = [("sec", ctypes.c_long), ("nsec", ctypes.c_long)]


class _ITimerSpec(ctypes.Structure):
    _fields_ = [("interval", _TimeSpec), ("value", _TimeSpec)]


def _exit_timer(seconds: float):
    """A POSIX timer that calls the C library's _exit(0) after `seconds` (None where the C
    library has no timer_create)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    rt = libc if hasattr(libc, "timer_create") else ctypes.CDLL(ctypes.util.find_library("rt") or "librt.so.1")
    # _exit's argument is the sigval, a null pointer here: exit code 0.
    event = _SigEvent(value=None, notify=SIGEV_THREAD, function=ctypes.cast(libc._exit, ctypes.c_void_p).value)
    timer = ctypes.c_void_p()
    if rt.timer_create(CLOCK_MONOTONIC, ctypes.byref(event), ctypes.byref(timer)) != 0:
        return None
    whole = int(seconds)
    spec = _ITimerSpec(value=_TimeSpec(whole, int((seconds - whole) * 1e9)))
    if rt.timer_settime(timer, 0, ctypes.byref(spec), None) != 0:
        rt.timer_delete(timer)
        return None
    return lambda: rt.timer_delete(timer)


@contextlib.contextmanager
def bounded(seconds: float, through_exit: bool = False):
    """Run the block; if it has not returned after `seconds`, print every thread's stack to
    stderr and exit with code 0 (exit code 1 where no C timer is available).

    through_exit: the exit timer stays armed after the block, over the interpreter's
    finalisation, where rclpy's context (and with it the Fast DDS participant) is deleted by
    the garbage collector and can hang the same way (seen 3 Dec: "Garbage-collecting", no
    Python frame). The stack dump ends with the block: Python cancels it while finalising."""
    try:
        cancel = _exit_timer(seconds + GRACE_S) if sys.platform.startswith("linux") else None
    except (OSError, AttributeError):
        cancel = None
    faulthandler.dump_traceback_later(seconds, exit=cancel is None)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
        if cancel is not None and not through_exit:
            cancel()
