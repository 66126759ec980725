"""Export a checkpoint to ONNX (dynamic batch) and check it against PyTorch on real faces.

    python -m training.export runs/stage1/best.pt fer_ros/models/fer_mobilenet_v1.onnx

Input `input` float32 [N,1,48,48] (= fer_ros.perception.preprocess.normalize), output `logits` [N,7].
The check runs both on real FER-2013 PublicTest faces (or on given faces) and prints the
maximum absolute difference of the logits; it fails above `--tol`.
"""

from __future__ import annotations

import argparse
import io
import warnings
from pathlib import Path

import numpy as np
import torch

OPSET = 17


def export_onnx(model: torch.nn.Module, path, opset: int = OPSET) -> Path:
    """Write `model` (eval mode, CPU, float32) as ONNX with a dynamic batch axis."""
    import onnx
    model = model.eval().cpu().float()
    x = torch.zeros(2, 1, 48, 48)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(model, (x,), buf, dynamo=False, opset_version=opset,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
    proto = onnx.load_from_string(buf.getvalue())
    onnx.checker.check_model(proto)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path))
    return path


def compare(model: torch.nn.Module, onnx_path, x: np.ndarray) -> float:
    """Max |logits_torch - logits_onnxruntime| over the float32 [N,1,48,48] batch x."""
    import onnxruntime as ort
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = model.eval().cpu()(torch.from_numpy(x)).numpy()
    out = sess.run(["logits"], {"input": x})[0]
    return float(np.abs(out - ref).max())


def main(argv=None) -> int:
    from fer_ros.perception.preprocess import normalize
    from training import data
    from training.model import load_checkpoint
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("output")
    ap.add_argument("--shared", default=None, help="shared data folder (default $FER_SHARED or ../shared)")
    ap.add_argument("--n", type=int, default=256, help="real faces used for the check")
    ap.add_argument("--tol", type=float, default=1e-3)
    a = ap.parse_args(argv)
    model = load_checkpoint(a.checkpoint)
    export_onnx(model, a.output)
    faces = data.fer2013("PublicTest", a.shared).images[: a.n]
    diff = compare(model, a.output, normalize(faces))
    one = compare(model, a.output, normalize(faces[:1]))
    print(f"exported {a.output}; max abs logit difference vs PyTorch on {len(faces)} real PublicTest faces: "
          f"{diff:.3g} (batch 1: {one:.3g})")
    if max(diff, one) > a.tol:
        print(f"FAILED: difference above tolerance {a.tol}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
