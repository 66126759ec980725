"""Past sessions from the therapy log folder, for the dashboard's history.

Only folders directly under the log folder whose names look like session ids are listed,
and every file is opened by a fixed name inside such a folder: a request cannot name a path.
Files are read only up to a size limit, so a huge or damaged log cannot stall the server.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from pathlib import Path

from fer_ros.therapy.log import EVENTS_FILE, SUMMARY_FILE, TIMELINE_FILE, TRIALS_FILE, read_events, summarize, \
    trial_rows

#: Session folder names written by SessionLog (`session_YYYYmmdd_HHMMSS[_N]`).
SESSION_ID = re.compile(r"^session_[0-9]{8}_[0-9]{6}(_[0-9]{1,4})?$")
MAX_SESSIONS = 100          # newest first; older ones stay on disk
MAX_FILE_BYTES = 2_000_000  # summary/trials files larger than this are not read
MAX_EVENTS_BYTES = 20_000_000  # rebuilding an interrupted session's summary from its events
MAX_TRIALS = 500


def _read_small(path: Path, limit: int) -> str | None:
    try:
        if not path.is_file() or path.stat().st_size > limit:
            return None
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def session_folder(root: str | os.PathLike, session_id: str) -> Path | None:
    """The folder of `session_id` under `root`, or None for a name that is not a session id
    or a folder that does not exist (symlinks leading outside `root` included)."""
    if not isinstance(session_id, str) or not SESSION_ID.match(session_id):
        return None
    base = Path(os.path.expanduser(str(root))).resolve()
    folder = (base / session_id).resolve()
    if folder.parent != base or not folder.is_dir():
        return None
    return folder


def timeline_path(root: str | os.PathLike, session_id: str) -> Path | None:
    folder = session_folder(root, session_id)
    if folder is None:
        return None
    path = folder / TIMELINE_FILE
    return path if path.is_file() and path.resolve().parent == folder else None


def session_record(folder: Path) -> dict:
    """Score, summary and trials table of one session folder (rebuilt from the events of an
    interrupted session, which has no summary yet)."""
    summary, rows = None, None
    text = _read_small(folder / SUMMARY_FILE, MAX_FILE_BYTES)
    if text:
        try:
            summary = json.loads(text)
        except json.JSONDecodeError:
            summary = None
    text = _read_small(folder / TRIALS_FILE, MAX_FILE_BYTES)
    if text is not None:
        rows = list(csv.DictReader(io.StringIO(text)))
    if summary is None or rows is None:
        events_path = folder / EVENTS_FILE
        try:
            small = events_path.is_file() and events_path.stat().st_size <= MAX_EVENTS_BYTES
            events = read_events(events_path) if small else []
        except (OSError, ValueError, KeyError):
            events = []
        if summary is None:
            summary = summarize(events) if events else {"session_id": folder.name, "end_reason": "no readable log"}
        if rows is None:
            rows = trial_rows(events) if events else []
    summary = summary if isinstance(summary, dict) else {}
    correct, attempted = summary.get("practice_correct"), summary.get("practice_attempted")
    return {
        "session_id": folder.name,
        "started": summary.get("started", ""),
        "end_reason": summary.get("end_reason", ""),
        "duration_s": summary.get("duration_s"),
        "score": f"{correct}/{attempted}" if correct is not None and attempted is not None else "",
        "alerts": list(summary.get("alerts") or [])[:20],
        "trials": rows[:MAX_TRIALS],
        "has_timeline": (folder / TIMELINE_FILE).is_file(),
    }


def list_sessions(root: str | os.PathLike, limit: int = MAX_SESSIONS) -> list[dict]:
    """Newest sessions first (session ids sort by start time)."""
    base = Path(os.path.expanduser(str(root)))
    try:
        names = sorted((p.name for p in base.iterdir() if SESSION_ID.match(p.name)), reverse=True)
    except OSError:  # no sessions yet (folder not created) or not readable
        return []
    out = []
    for name in names[:max(0, int(limit))]:
        folder = session_folder(base, name)
        if folder is not None:
            out.append(session_record(folder))
    return out
