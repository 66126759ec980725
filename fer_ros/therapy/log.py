"""Therapy session log: one JSON line per event, a per-trial CSV, a summary and a PNG timeline.

The JSON-lines file is the record of truth. Every event is written, flushed and fsynced
before the call returns, so a crash, SIGKILL or power loss keeps every event already
logged (at worst the one line being written is cut, and `read_events` skips it). The CSV,
summary and PNG are derived from the events at the end of a session, and can be rebuilt from the
events file of an interrupted session with `python -m fer_ros.therapy.log EVENTS.jsonl`.

ROS-free (matplotlib with the Agg backend; no display needed).
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import math
import os
import sys
from pathlib import Path

from fer_ros import LABELS

EVENTS_FILE = "events.jsonl"
TRIALS_FILE = "trials.csv"
TIMELINE_FILE = "timeline.png"
SUMMARY_FILE = "summary.json"

TRIAL_COLUMNS = ("session_id", "stage", "trial", "emotion", "attempts", "outcome", "answer",
                 "response_time_s", "start_t", "end_t", "max_target_confidence")


def new_session_id(now: _dt.datetime | None = None) -> str:
    """Sortable, filesystem-safe id from the wall clock, e.g. ``session_20261127_203015``."""
    now = now or _dt.datetime.now()
    return now.strftime("session_%Y%m%d_%H%M%S")


def _jsonable(value):
    """Floats rounded (logs stay readable), numpy scalars/arrays turned into plain values."""
    if isinstance(value, float):
        return round(value, 4) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist"):  # numpy
        return _jsonable(value.tolist())
    return value


class SessionLog:
    """Folder ``<root>/<session_id>/`` holding events.jsonl, then trials.csv and timeline.png.

    `event()` returns only once the line is on disk (flush + fsync), which is what makes the
    log survive a crash; set ``fsync=False`` only for throwaway runs on slow media.
    """

    def __init__(self, root: str | os.PathLike, session_id: str | None = None, fsync: bool = True):
        base = Path(os.path.expanduser(str(root)))
        session_id = session_id or new_session_id()
        folder = base / session_id
        suffix = 1
        while folder.exists():  # two sessions started within one second
            suffix += 1
            folder = base / f"{session_id}_{suffix}"
        folder.mkdir(parents=True)
        self.session_id = folder.name
        self.folder = folder
        self.events_path = folder / EVENTS_FILE
        self.fsync = fsync
        self._seq = 0
        self._file = open(self.events_path, "a", encoding="utf-8")
        self.closed = False
        self.error: OSError | None = None  # the first failed write; the file takes no more after it

    def event(self, kind: str, t: float, **fields) -> dict:
        """Append one event (``t`` = session clock in seconds) and make it durable.

        Raises OSError when the line cannot be written (disk full, medium gone). After that the
        file is closed and every later event raises at once: appending after a half-written line
        would corrupt the log in its middle, while a cut last line is skipped by `read_events`."""
        if self.error is not None:
            raise OSError(self.error.errno, f"session log unavailable since: {self.error}")
        if self.closed:
            raise RuntimeError(f"session log {self.events_path} is closed")
        self._seq += 1
        record = {"seq": self._seq, "t": t, "wall": _dt.datetime.now().isoformat(timespec="milliseconds"),
                  "event": kind}
        record.update(fields)
        record = _jsonable(record)
        try:
            self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
            self._file.flush()
            if self.fsync:
                os.fsync(self._file.fileno())
        except OSError as exc:
            self.error = exc
            self.close()
            raise
        return record

    def finish(self, plot: bool = True, events: list | None = None) -> dict:
        """Close the events file and write trials.csv (+ timeline.png). Returns the paths.
        `events`: build the reports from these instead of the file (the session's own copy, when
        the file missed events because writing failed)."""
        self.close()
        return write_reports(self.events_path, plot=plot, events=events)

    def discard(self) -> None:
        """Close, and remove the folder if nothing got into it (a session refused at its start)."""
        self.close()
        try:
            if self.events_path.stat().st_size == 0:
                self.events_path.unlink()
                self.folder.rmdir()
        except OSError:
            pass

    def close(self) -> None:
        """Close the events file; a failing close (its last flush) still leaves it closed."""
        if not self.closed:
            self.closed = True
            try:
                self._file.close()
            except OSError as exc:
                self.error = self.error or exc


def read_events(path: str | os.PathLike) -> list[dict]:
    """All complete events of an events.jsonl; a cut last line (crash mid-write) is skipped."""
    events = []
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            if i < len(lines) - 1 and any(l.strip() for l in lines[i + 1:]):
                raise ValueError(f"{path}: corrupt line {i + 1} in the middle of the log")
    return events


def trial_rows(events: list[dict]) -> list[dict]:
    """One row per finished trial (``trial_end`` events), columns `TRIAL_COLUMNS`."""
    session_id = next((e.get("session_id", "") for e in events if e["event"] == "session_start"), "")
    rows = []
    for e in events:
        if e["event"] != "trial_end":
            continue
        row = {c: e.get(c, "") for c in TRIAL_COLUMNS}
        row["session_id"] = session_id
        row["emotion"] = e.get("emotion", "")
        rows.append({k: ("" if v is None else v) for k, v in row.items()})
    return rows


def write_trials_csv(events: list[dict], path: str | os.PathLike) -> Path:
    path = Path(path)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=TRIAL_COLUMNS)
        writer.writeheader()
        writer.writerows(trial_rows(events))
    return path


def summarize(events: list[dict]) -> dict:
    """Session totals for a study table: per-emotion outcomes, score, pauses, alerts, duration."""
    start = next((e for e in events if e["event"] == "session_start"), {})
    end = next((e for e in reversed(events) if e["event"] == "session_end"), None)
    per_emotion: dict = {}
    for e in events:
        if e["event"] == "trial_end":
            row = per_emotion.setdefault(e.get("emotion", ""), {})
            key = f"{e.get('stage')}_{e.get('outcome')}"
            row[key] = row.get(key, 0) + 1
    pauses: dict = {}
    for e in events:
        if e["event"] == "pause":
            pauses[e.get("reason", "")] = pauses.get(e.get("reason", ""), 0) + 1
    samples = [e for e in events if e["event"] == "child_expression"]
    seen = [e for e in samples if e.get("face_id") is not None]
    return {
        "session_id": start.get("session_id", ""),
        "started": start.get("wall", ""),
        "ended": end.get("wall", "") if end else "",
        "end_reason": end.get("reason", "") if end else "interrupted (no session_end event)",
        "duration_s": events[-1]["t"] if events else 0.0,
        "practice_correct": end.get("correct") if end else None,
        "practice_attempted": end.get("attempted") if end else None,
        "trials": sum(e["event"] == "trial_end" for e in events),
        "per_emotion": per_emotion,
        "pauses": pauses,
        "alerts": [e.get("text", "") for e in events if e["event"] == "alert"],
        "face_seen_fraction": round(len(seen) / len(samples), 3) if samples else None,
    }


_STAGES = ("introduction", "teaching", "practice")
_COLORS = {"angry": "#d62728", "disgust": "#8c564b", "fear": "#9467bd", "happy": "#f2b705",
           "sad": "#1f77b4", "surprise": "#e377c2", "neutral": "#7f7f7f"}
_OUTCOME_MARK = {"success": ("o", "green"), "right": ("o", "green"), "wrong": ("x", "red"),
                 "timeout": ("v", "orange"), "skipped": (">", "grey"), "stopped": ("s", "black")}


def plot_timeline(events: list[dict], path: str | os.PathLike) -> Path:
    """PNG with one panel per stage: the child's expression probabilities over session time,
    trials shaded and labelled with their target emotion and outcome, pauses hatched, gaps
    where the child's face was not seen."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = [s for s in _STAGES if any(e.get("stage") == s for e in events)] or ["introduction"]
    fig, axes = plt.subplots(len(stages), 1, figsize=(11, 2.8 * len(stages) + 0.6), squeeze=False)
    end_t = max((e["t"] for e in events), default=0.0)
    for ax, stage in zip(axes[:, 0], stages):
        samples = [e for e in events if e["event"] == "child_expression" and e.get("stage") == stage]
        ts = [e["t"] for e in samples]
        for k, label in enumerate(LABELS):
            ys = [(e["scores"][k] if e.get("scores") else float("nan")) for e in samples]
            ax.plot(ts, ys, color=_COLORS[label], lw=1.4, label=label)
        starts = {}
        for e in events:
            if e.get("stage") != stage:
                continue
            if e["event"] == "trial_start":
                starts[e.get("trial")] = e
            elif e["event"] == "trial_end" and e.get("trial") in starts:
                t0 = starts.pop(e.get("trial"))["t"]
                ax.axvspan(t0, e["t"], color=_COLORS.get(e.get("emotion"), "grey"), alpha=0.12)
                ax.text(t0, 1.04, e.get("emotion", ""), fontsize=8, va="bottom")
                marker, color = _OUTCOME_MARK.get(e.get("outcome"), ("d", "black"))
                ax.plot([e["t"]], [1.0], marker=marker, color=color, ms=8, clip_on=False)
        paused_at = None
        for e in events:
            if e["event"] == "pause" and e.get("stage") == stage:
                paused_at = e["t"]
            elif e["event"] == "resume" and paused_at is not None:
                ax.axvspan(paused_at, e["t"], facecolor="none", edgecolor="grey", hatch="//", lw=0)
                paused_at = None
        if paused_at is not None:
            ax.axvspan(paused_at, end_t, facecolor="none", edgecolor="grey", hatch="//", lw=0)
        ax.set_ylim(0, 1.12)
        ax.set_ylabel(f"{stage}\nprobability")
        ax.grid(alpha=0.3)
        if not samples:
            ax.text(0.5, 0.5, "no expression samples", transform=ax.transAxes, ha="center")
    axes[-1, 0].set_xlabel("session time (s)")
    axes[0, 0].legend(loc="upper right", ncol=7, fontsize=7, bbox_to_anchor=(1.0, 1.32))
    end = next((e for e in reversed(events) if e["event"] == "session_end"), None)
    title = events[0].get("session_id", "") if events else ""
    if end is not None:
        title += f"   practice score {end.get('correct', 0)}/{end.get('attempted', 0)}"
    fig.suptitle(f"Child's expressions  {title}", fontsize=10, y=0.995)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_reports(events_path: str | os.PathLike, plot: bool = True, events: list | None = None) -> dict:
    """trials.csv, summary.json and timeline.png next to an events.jsonl (from `events` when
    given, else read from it); returns their paths."""
    events_path = Path(events_path)
    events = read_events(events_path) if events is None else events
    out = {"events": events_path, "trials": write_trials_csv(events, events_path.parent / TRIALS_FILE)}
    summary_path = events_path.parent / SUMMARY_FILE
    summary_path.write_text(json.dumps(_jsonable(summarize(events)), indent=2) + "\n")
    out["summary"] = summary_path
    if plot:
        out["timeline"] = plot_timeline(events, events_path.parent / TIMELINE_FILE)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Rebuild trials.csv, summary.json and timeline.png from a session's "
                                                 "events.jsonl "
                                                 "(e.g. after a crash).")
    parser.add_argument("events", help="path to events.jsonl (or its session folder)")
    parser.add_argument("--no-plot", action="store_true", help="write only the CSV")
    args = parser.parse_args(argv)
    path = Path(args.events)
    if path.is_dir():
        path = path / EVENTS_FILE
    if not path.is_file():
        print(f"error: {path} not found", file=sys.stderr)
        return 2
    for kind, p in write_reports(path, plot=not args.no_plot).items():
        print(f"{kind}: {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
