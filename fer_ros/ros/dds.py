"""The Fast DDS transport setting for fer_ros' image topics between processes.

LARGE_DATA keeps UDP for discovery only and carries data over shared memory (same host) or TCP,
so a 640x480 image is not cut into 64 kB UDP fragments that a busy reader loses.
`non_blocking=true`: a TCP send that would block on a full socket is dropped instead of stalling
the writer. Images are best effort (the next frame replaces a dropped one) and reliable topics
are resent by DDS; a blocking send waits on the slowest reader and holds the writer (and a
node's Ctrl-C, when the publish is in its main thread) for as long as that reader lags.
"""

from __future__ import annotations

import os

ENV_VAR = "FASTDDS_BUILTIN_TRANSPORTS"
TRANSPORTS = "LARGE_DATA?non_blocking=true"


def large_data_env(env: dict | None = None) -> dict:
    """`env` (default: this process' os.environ, changed in place) with FASTDDS_BUILTIN_TRANSPORTS
    set to TRANSPORTS unless the user chose a value."""
    env = os.environ if env is None else env
    env.setdefault(ENV_VAR, TRANSPORTS)
    return env


def clean_zombie_shm(folder: str | os.PathLike = "/dev/shm") -> int:
    """Remove Fast DDS shared-memory files left by processes that died without closing them
    (a crash, SIGKILL, or a teardown cut short by `fer_ros.ros.teardown`); returns how many.

    What `fastdds shm clean` does, without its psutil dependency: every segment and port has a
    lock file (`..._el` / `..._sl`) that its owner holds for as long as it is alive, so a file
    whose lock can be taken belongs to nobody. Left alone these pile up in /dev/shm (memory)
    with every node that dies, and a new participant can open a dead port of the same number.
    """
    import fcntl
    import re
    from pathlib import Path

    root = Path(folder)
    try:
        names = os.listdir(root)
    except OSError:
        return 0
    removed = 0
    for name in names:
        m = re.fullmatch(r"(fastdds_(?:[0-9a-z]{16}|port\d{1,5}))_(el|sl)", name)
        if not m:
            continue
        try:
            with open(root / name, "ab") as fd:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released on close
        except OSError:
            continue  # locked: its owner is alive
        base = m.group(1)
        for stale in (name, base, f"sem.{base}_mutex"):
            try:
                (root / stale).unlink()
                removed += 1
            except OSError:
                pass
    return removed


class QuietReader:
    """When to make a subscription anew that hears nothing while a publisher is known.

    Fast DDS (3.2, LARGE_DATA) now and then leaves a reader matched to a live writer with no
    sample ever delivered (eProsima/Fast-DDS#5758); a new reader is matched afresh. A publisher
    that is merely quiet (a paused bag) gets ever longer waits, doubled after each try, up to 64x.
    The caller owns the subscription; this only keeps the times (all `time.monotonic()`).
    """

    def __init__(self, after: float):
        self.after = after
        self.since = self.last = 0.0
        self.streak = 0  # tries in a row with nothing received since
        self.count = 0   # tries in all

    def subscribed(self, now: float) -> None:
        self.since = now

    def received(self, now: float) -> None:
        self.last = now

    @property
    def heard(self) -> bool:
        """Something arrived since the subscription was (re)made."""
        return self.last > self.since

    def quiet(self, now: float) -> float:
        """Seconds quiet, when that is long enough for a new try; else 0. Having heard
        something since the last try brings the wait back to `after`."""
        if self.heard:
            self.streak = 0
        quiet = now - max(self.last, self.since)
        return quiet if self.after > 0 and quiet >= self.after * 2 ** min(self.streak, 6) else 0.0

    def renewed(self, now: float) -> None:
        self.streak += 1
        self.count += 1
        self.since = now
