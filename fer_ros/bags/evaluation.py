"""Score expression outputs against ground truth (ROS-free; reads bags through fer_ros.bags.io).

Matching: a ground-truth label (bag log time T) belongs to the output whose header.stamp
is T, since outputs copy the image header and labels are written at the image stamp. When
a frame has several faces, the largest box is taken as the labelled person (the child in
front of the robot); frames without an output (dropped by a busy node) are counted
separately and not scored, frames whose output has no face are detection misses.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fer_ros import LABELS
from fer_ros.bags.messages import stamp_to_ns
from fer_ros.perception.metrics import confusion, per_class


@dataclass
class Output:
    """One FaceExpressionArray reduced to what scoring needs."""

    stamp: int  # header stamp, ns (= the source image's)
    receipt: int  # when it was received (bag log time), ns
    expressions: list[str] = field(default_factory=list)
    areas: list[int] = field(default_factory=list)

    @property
    def subject(self) -> str | None:
        """Expression of the largest face, or None when no face was found."""
        if not self.expressions:
            return None
        return self.expressions[int(np.argmax(self.areas))]


def output_from_msg(msg, receipt: int) -> Output:
    return Output(stamp_to_ns(msg.header.stamp), int(receipt),
                  [str(f.expression) for f in msg.faces],
                  [int(f.box.width) * int(f.box.height) for f in msg.faces])


def _percentile(values, q) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


def evaluate(ground_truth: dict[int, str], outputs: list[Output], frames_in: int | None = None) -> dict:
    """Metrics for outputs vs. labels keyed by image stamp (ns). See the module docstring."""
    by_stamp: dict[int, Output] = {}
    for out in outputs:
        by_stamp.setdefault(out.stamp, out)  # a duplicate (re-published) output is ignored
    true, pred = [], []
    processed = detected = 0
    for stamp, label in ground_truth.items():
        out = by_stamp.get(stamp)
        if out is None:
            continue
        processed += 1
        if out.subject is None:
            continue
        detected += 1
        true.append(label)
        pred.append(out.subject)
    index = {label: i for i, label in enumerate(LABELS)}
    cm = confusion([index[t] for t in true], [index[p] for p in pred], len(LABELS))
    classes = per_class(cm, LABELS)
    correct = int(np.trace(cm))
    labelled = len(ground_truth)
    result = runtime_metrics(outputs, frames_in if frames_in is not None else max(labelled, len(by_stamp)))
    result.update({
        "labelled_frames": labelled,
        "labelled_processed": processed,
        "labelled_detected": detected,
        "detection_rate": detected / processed if processed else 0.0,
        "correct": correct,
        "accuracy": correct / detected if detected else 0.0,
        "accuracy_all_labelled": correct / labelled if labelled else 0.0,
        "macro_f1": float(np.mean([c["f1"] for c in classes.values() if c["support"]])) if detected else 0.0,
        "per_class": classes,
        "confusion_matrix": cm.tolist(),
        "labels": list(LABELS),
    })
    return result


def runtime_metrics(outputs: list[Output], frames_in: int | None = None) -> dict:
    """What needs no labels: processed frames and rate, faces found, end-to-end latency."""
    by_stamp: dict[int, Output] = {}
    for out in outputs:
        by_stamp.setdefault(out.stamp, out)
    outs = list(by_stamp.values())
    frames_in = len(outs) if frames_in is None else int(frames_in)
    latencies = np.array([(o.receipt - o.stamp) / 1e6 for o in outs], np.float64)
    span = (max(o.receipt for o in outs) - min(o.stamp for o in outs)) / 1e9 if outs else 0.0
    return {
        "frames_in": frames_in,
        "frames_out": len(outs),
        "processed_fraction": len(outs) / frames_in if frames_in else 0.0,
        "processed_fps": (len(outs) / span) if span > 0 else None,
        "frames_with_face": float(np.mean([bool(o.expressions) for o in outs])) if outs else 0.0,
        "faces_per_frame": float(np.mean([len(o.expressions) for o in outs])) if outs else 0.0,
        "latency_ms": {
            "p50": _percentile(latencies, 50), "p95": _percentile(latencies, 95),
            "mean": float(latencies.mean()) if len(latencies) else None,
            "max": float(latencies.max()) if len(latencies) else None,
        },
    }


def load_bag(path, expressions_topic=None, ground_truth_topic=None, labels_required: bool = True):
    """(ground_truth {stamp: label}, [Output], frames_in or None) from a replay/recorded bag."""
    from fer_ros.bags import messages as bags
    from fer_ros.bags.io import BagReader

    expressions_topic = expressions_topic or bags.EXPRESSIONS_TOPIC
    ground_truth_topic = ground_truth_topic or bags.GROUND_TRUTH_TOPIC
    with BagReader(path) as bag:
        bag.require(expressions_topic, bags.EXPRESSIONS_TYPE,
                    hint=" (expression outputs): make one with `fer-ros bag replay`")
        if labels_required:
            bag.require(ground_truth_topic, bags.STRING_TYPE,
                        hint=" (ground truth): add labels with `fer-ros bag from-video --labels` or "
                             "`fer-ros bag label`, or evaluate without labels (--no-labels)")
        frames_topic = next((t for t in (bags.FRAMES_TOPIC, bags.IMAGE_TOPIC) if t in bag.topics), None)
        frames_in = bag.counts.get(frames_topic) if frames_topic else None
        gt, outputs = {}, []
        for m in bag.messages([expressions_topic, ground_truth_topic]):
            if m.topic == ground_truth_topic:
                gt[m.log_time] = bags.parse_label(m.msg.data, f"{ground_truth_topic} at t={m.log_time}: ")
            else:
                outputs.append(output_from_msg(m.msg, m.log_time))
    if labels_required and not gt:
        raise bags.BagError(f"{path}: {ground_truth_topic} has no labels")
    return gt, outputs, frames_in


def evaluate_bag(path, **topics) -> dict:
    """Accuracy, per-class scores, detection rate and runtime metrics of a replayed bag."""
    gt, outputs, frames_in = load_bag(path, **topics)
    result = evaluate(gt, outputs, frames_in)
    result["bag"] = str(path)
    return result


def evaluate_bag_outputs(path, **topics) -> dict:
    """Only the runtime metrics (no labels needed): rate, faces found, latency."""
    _, outputs, frames_in = load_bag(path, labels_required=False, **topics)
    result = runtime_metrics(outputs, frames_in)
    result["bag"] = str(path)
    return result


def plot_confusion(cm, path, title: str = "Confusion matrix") -> None:
    """Row-normalised confusion matrix with the raw counts written in the cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(cm)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(LABELS)), LABELS, rotation=45, ha="right")
    ax.set_yticks(range(len(LABELS)), LABELS)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of true class")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _fmt(v, spec=".1f", scale=1.0):
    return "n/a" if v is None else format(v * scale, spec)


def markdown(result: dict) -> str:
    lat = result["latency_ms"]
    runtime = [
        f"| frames processed | {result['frames_out']}/{result['frames_in']} "
        f"({_fmt(result['processed_fraction'], '.1f', 100)} %) |",
        f"| processed rate | {_fmt(result['processed_fps'])} frames/s |",
        f"| frames with a face | {_fmt(result['frames_with_face'], '.1f', 100)} % "
        f"({_fmt(result['faces_per_frame'], '.2f')} faces per frame) |",
        f"| latency p50 / p95 / max | {_fmt(lat['p50'])} / {_fmt(lat['p95'])} / {_fmt(lat['max'])} ms |",
    ]
    head = [f"# Expression evaluation: {result.get('bag', '')}", "", "| metric | value |", "|---|---|"]
    if "per_class" not in result:
        return "\n".join(head + runtime + ["", "(no ground truth: runtime metrics only)"]) + "\n"
    lines = head + [
        f"| accuracy (faces found) | {_fmt(result['accuracy'], '.2f', 100)} % "
        f"({result['correct']}/{result['labelled_detected']}) |",
        f"| accuracy (all labelled frames) | {_fmt(result['accuracy_all_labelled'], '.2f', 100)} % |",
        f"| macro F1 | {_fmt(result['macro_f1'], '.3f')} |",
        f"| detection rate | {_fmt(result['detection_rate'], '.2f', 100)} % "
        f"({result['labelled_detected']}/{result['labelled_processed']} labelled frames processed) |",
    ] + runtime + ["", "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for label, c in result["per_class"].items():
        lines.append(f"| {label} | {c['precision']:.3f} | {c['recall']:.3f} | {c['f1']:.3f} | {c['support']} |")
    lines += ["", "Confusion matrix (rows true, columns predicted): " + " ".join(LABELS), ""]
    lines += ["    " + " ".join(f"{v:5d}" for v in row) for row in result["confusion_matrix"]]
    if result.get("confusion_png"):
        lines += ["", f"![confusion matrix]({Path(result['confusion_png']).name})"]
    return "\n".join(lines) + "\n"


def write_report(result: dict, out_dir) -> dict:
    """evaluation.json, evaluation.md and confusion_matrix.png in out_dir; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "evaluation.json", "markdown": out_dir / "evaluation.md"}
    if "confusion_matrix" in result:
        paths["png"] = out_dir / "confusion_matrix.png"
        title = (f"{Path(str(result.get('bag', ''))).name}: accuracy {100 * result['accuracy']:.1f} % "
                 f"(n={result['labelled_detected']})")
        plot_confusion(result["confusion_matrix"], paths["png"], title=title)
        result = dict(result, confusion_png=str(paths["png"]))
    paths["json"].write_text(json.dumps(result, indent=2) + "\n")
    paths["markdown"].write_text(markdown(result))
    return {k: str(v) for k, v in paths.items()}
