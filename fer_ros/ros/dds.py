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
