"""MTCNN (Zhang et al. 2016: P-Net proposals on an image pyramid, refined by R-Net, then O-Net)
in torch on the CPU, with the weights of the PyPI package `mtcnn` (MIT; `pip install mtcnn`).

That package runs its networks with TensorFlow, which is an optional extra of it and not
needed here: this module only reads its weight files `mtcnn/assets/weights/{pnet,rnet,onet}.lz4`
(joblib dumps of the Keras `set_weights` lists) and re-implements the three networks and the
algorithm of mtcnn 1.0.0 (mtcnn/stages/*.py, mtcnn/utils/{bboxes,images}.py): the same
normalisation ((RGB - 127.5) / 128, not transposed), pyramid, thresholds, NMS variants, box
regression and square boxes. `fer_ros.perception.detectors.MTCNNDetector` wraps it in the
detector interface (frame checks, downscaling, min_size).

Keras -> torch: Conv2D kernels (kh, kw, in, out) -> (out, in, kh, kw); Dense (in, out) ->
(out, in); PReLU with shared spatial axes -> one slope per channel; MaxPooling2D "same" pads at
the end (and at the start when odd), which `_pool_same` reproduces; the Dense layer after
R-Net's and O-Net's `Permute((2, 1, 3))` + `Flatten` sees the features in (W, H, C) order.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import math
import pickle
import threading
from pathlib import Path

import cv2
import numpy as np

INSTALL_HINT = "the mtcnn detector needs the weights of the PyPI package mtcnn: pip install 'mtcnn>=1.0,<2'"

# Keras weight shapes of mtcnn 1.0.0, in set_weights order (checked on load).
SHAPES = {
    "pnet": [(3, 3, 3, 10), (10,), (1, 1, 10), (3, 3, 10, 16), (16,), (1, 1, 16), (3, 3, 16, 32), (32,),
             (1, 1, 32), (1, 1, 32, 4), (4,), (1, 1, 32, 2), (2,)],
    "rnet": [(3, 3, 3, 28), (28,), (1, 1, 28), (3, 3, 28, 48), (48,), (1, 1, 48), (2, 2, 48, 64), (64,),
             (1, 1, 64), (576, 128), (128,), (128,), (128, 4), (4,), (128, 2), (2,)],
    "onet": [(3, 3, 3, 32), (32,), (1, 1, 32), (3, 3, 32, 64), (64,), (1, 1, 64), (3, 3, 64, 64), (64,),
             (1, 1, 64), (2, 2, 64, 128), (128,), (1, 1, 128), (1152, 256), (256,), (256,), (256, 4), (4,),
             (256, 10), (10,), (256, 2), (2,)],
}

_CACHE: dict = {}  # net name -> list of torch tensors (read-only, shared by all detectors)
_LOCK = threading.Lock()


def weights_dir() -> Path:
    """The installed `mtcnn` package's weight folder. Found with `find_spec`, which does not run
    the package's __init__ (that imports TensorFlow). ImportError saying how to install it."""
    try:
        spec = importlib.util.find_spec("mtcnn")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(INSTALL_HINT)
    folder = Path(next(iter(spec.submodule_search_locations))) / "assets" / "weights"
    if not all((folder / f"{n}.lz4").is_file() for n in SHAPES):
        raise ImportError(f"{INSTALL_HINT} (no {{pnet,rnet,onet}}.lz4 in {folder})")
    return folder


def _read_keras_weights(name: str) -> list:
    """The list of float32 arrays in the package's `<name>.lz4`.

    The files are pickles (joblib), so only the package's own asset folder is read (never a
    path from a user or a parameter), and with an unpickler that builds nothing but joblib's
    array wrapper, numpy arrays and dtypes, and refuses object arrays (whose payload is a
    nested pickle)."""
    path = weights_dir() / f"{name}.lz4"  # first: without the package, say how to install it
    import lz4.frame
    from joblib.numpy_pickle import NumpyArrayWrapper, NumpyUnpickler

    class Wrapper(NumpyArrayWrapper):
        def read_array(self, unpickler, *args, **kwargs):
            if self.dtype.hasobject:
                raise pickle.UnpicklingError(f"{path}: object arrays are not loaded")
            return super().read_array(unpickler, *args, **kwargs)

    allowed = {("joblib.numpy_pickle", "NumpyArrayWrapper"): Wrapper, ("numpy", "ndarray"): np.ndarray,
               ("numpy", "dtype"): np.dtype}

    class Unpickler(NumpyUnpickler):
        def find_class(self, module, cls):
            if (module, cls) not in allowed:
                raise pickle.UnpicklingError(f"{path}: refusing to load {module}.{cls}")
            return allowed[(module, cls)]

    data = io.BytesIO(lz4.frame.decompress(path.read_bytes()))
    try:
        unpickler = Unpickler(str(path), data, ensure_native_byte_order=True)
    except TypeError:  # joblib < 1.5 has no ensure_native_byte_order
        unpickler = Unpickler(str(path), data)
    arrays = unpickler.load()
    got = [getattr(a, "shape", None) for a in arrays] if isinstance(arrays, list) else None
    if got != SHAPES[name] or not all(a.dtype == np.float32 for a in arrays):
        raise ValueError(f"{path}: unexpected weights {got} (this code knows mtcnn 1.0's networks)")
    return arrays


def load_weights(name: str) -> list:
    """`name`'s ("pnet", "rnet", "onet") weights as torch tensors in torch layouts, cached."""
    weights_dir()  # ImportError saying how to install the package, before any other import
    try:
        import torch
    except ImportError:
        raise ImportError("the mtcnn detector runs its networks in torch: pip install torch") from None

    with _LOCK:
        if name not in _CACHE:
            out = []
            for a in _read_keras_weights(name):
                if a.ndim == 4:  # conv kernel (kh, kw, in, out) -> (out, in, kh, kw)
                    a = a.transpose(3, 2, 0, 1)
                elif a.ndim == 3:  # PReLU slope shared over H and W: (1, 1, C) -> (C,)
                    a = a.reshape(-1)
                elif a.ndim == 2:  # Dense (in, out) -> (out, in)
                    a = a.T
                out.append(torch.from_numpy(np.ascontiguousarray(a, np.float32)))
            _CACHE[name] = out
        return _CACHE[name]


def _pool_same(x, k: int, s: int):
    """Keras MaxPooling2D(padding="same"): pad (more at the end) so the output is ceil(n / s)."""
    import torch.nn.functional as F

    pads = []
    for n in (x.shape[3], x.shape[2]):  # F.pad wants the last dimension first
        total = max((math.ceil(n / s) - 1) * s + k - n, 0)
        pads += [total // 2, total - total // 2]
    return F.max_pool2d(F.pad(x, pads, value=-math.inf), k, s)


def pnet(x, p):
    """[N, 3, H, W] -> box offsets [N, 4, H', W'], face probability [N, H', W']."""
    import torch.nn.functional as F

    x = _pool_same(F.prelu(F.conv2d(x, p[0], p[1]), p[2]), 2, 2)
    x = F.prelu(F.conv2d(x, p[3], p[4]), p[5])
    x = F.prelu(F.conv2d(x, p[6], p[7]), p[8])
    return F.conv2d(x, p[9], p[10]), F.softmax(F.conv2d(x, p[11], p[12]), 1)[:, 1]


def rnet(x, p):
    """[N, 3, 24, 24] -> box offsets [N, 4], face probability [N]."""
    import torch.nn.functional as F

    x = _pool_same(F.prelu(F.conv2d(x, p[0], p[1]), p[2]), 3, 2)
    x = F.max_pool2d(F.prelu(F.conv2d(x, p[3], p[4]), p[5]), 3, 2)
    x = F.prelu(F.conv2d(x, p[6], p[7]), p[8])
    x = F.prelu(F.linear(x.permute(0, 3, 2, 1).flatten(1), p[9], p[10]), p[11])
    return F.linear(x, p[12], p[13]), F.softmax(F.linear(x, p[14], p[15]), 1)[:, 1]


def onet(x, p):
    """[N, 3, 48, 48] -> box offsets [N, 4], face probability [N] (the landmarks are not used)."""
    import torch.nn.functional as F

    x = _pool_same(F.prelu(F.conv2d(x, p[0], p[1]), p[2]), 3, 2)
    x = F.max_pool2d(F.prelu(F.conv2d(x, p[3], p[4]), p[5]), 3, 2)
    x = _pool_same(F.prelu(F.conv2d(x, p[6], p[7]), p[8]), 2, 2)
    x = F.prelu(F.conv2d(x, p[9], p[10]), p[11])
    x = F.prelu(F.linear(x.permute(0, 3, 2, 1).flatten(1), p[12], p[13]), p[14])
    return F.linear(x, p[15], p[16]), F.softmax(F.linear(x, p[19], p[20]), 1)[:, 1]


def _nms(boxes: np.ndarray, threshold: float, method: str = "union") -> np.ndarray:
    """mtcnn 1.0's NMS on [N, >=5] (x1, y1, x2, y2, score) rows already sorted by score: a box
    is dropped when it overlaps *any* higher-scoring box (kept or not) by more than
    `threshold`; "min" divides the intersection by the smaller area instead of the union."""
    n = len(boxes)
    if n < 2:
        return boxes
    x1, y1, x2, y2 = (boxes[:, i] for i in range(4))
    area = (x2 - x1) * (y2 - y1)
    drop = np.zeros(n, bool)
    for i in range(0, n, 512):  # in blocks, so thousands of proposals need no N x N matrix at once
        j = slice(i, min(n, i + 512))
        iw = np.maximum(0, np.minimum(x2[:, None], x2[None, j]) - np.maximum(x1[:, None], x1[None, j]))
        ih = np.maximum(0, np.minimum(y2[:, None], y2[None, j]) - np.maximum(y1[:, None], y1[None, j]))
        inter = iw * ih
        if method == "min":
            denom = np.minimum(area[:, None], area[None, j])
        else:
            denom = area[:, None] + area[None, j] - inter
        with np.errstate(divide="ignore", invalid="ignore"):
            over = inter / denom > threshold
        over &= np.arange(n)[:, None] < np.arange(j.start, j.stop)[None, :]  # only higher-ranked boxes
        drop[j] = over.any(0)
    return boxes[~drop]


def _by_score(boxes: np.ndarray) -> np.ndarray:
    return boxes[np.argsort(-boxes[:, 4], kind="stable")]


def _square(boxes: np.ndarray) -> np.ndarray:
    out = boxes.copy()
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    out[:, 0] += w * 0.5 - side * 0.5
    out[:, 1] += h * 0.5 - side * 0.5
    out[:, 2], out[:, 3] = out[:, 0] + side, out[:, 1] + side
    return out


def _regress(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    out = boxes.copy()
    w, h = boxes[:, 2] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 1] + 1
    out[:, :4] += offsets * np.stack([w, h, w, h], 1)
    return out


def crop_and_resize(image: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """tf.image.crop_and_resize of [H, W, C] `image` with pixel boxes (x1, y1, x2, y2), as mtcnn
    1.0 calls it (boxes divided by W and H; bilinear; samples outside the image are 0):
    [N, size, size, C]."""
    hgt, wid = image.shape[:2]
    t = np.arange(size) / (size - 1)
    ys = boxes[:, 1:2] / hgt * (hgt - 1) + t * (boxes[:, 3:4] - boxes[:, 1:2]) / hgt * (hgt - 1)
    xs = boxes[:, 0:1] / wid * (wid - 1) + t * (boxes[:, 2:3] - boxes[:, 0:1]) / wid * (wid - 1)
    y0, x0 = np.floor(ys), np.floor(xs)
    dy, dx = (ys - y0)[:, :, None, None], (xs - x0)[:, None, :, None]
    ya, yb = np.clip(y0, 0, hgt - 1).astype(int), np.clip(y0 + 1, 0, hgt - 1).astype(int)
    xa, xb = np.clip(x0, 0, wid - 1).astype(int), np.clip(x0 + 1, 0, wid - 1).astype(int)
    top = image[ya[:, :, None], xa[:, None, :]] * (1 - dx) + image[ya[:, :, None], xb[:, None, :]] * dx
    bot = image[yb[:, :, None], xa[:, None, :]] * (1 - dx) + image[yb[:, :, None], xb[:, None, :]] * dx
    out = top * (1 - dy) + bot * dy
    out[(ys < 0) | (ys > hgt - 1)] = 0
    out.transpose(0, 2, 1, 3)[(xs < 0) | (xs > wid - 1)] = 0
    return out.astype(np.float32)


@contextlib.contextmanager
def torch_threads(n: int):
    """torch's intra-op threads set to `n` (0: unchanged) while the block runs, then restored.
    Concurrent callers (the pipeline's background scan) may briefly run with the other's count;
    the process's own setting is what remains."""
    import torch

    before = torch.get_num_threads()
    change = bool(n) and n != before
    if change:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if change:
            torch.set_num_threads(before)


REFINE_SCALES = np.array([1.0, 0.85, 1.15])  # MTCNN.refine's proposals: each known box, smaller, larger


def cut_patches(image: np.ndarray, boxes: np.ndarray, size: int, bgr: bool = False) -> np.ndarray:
    """[N, size, size, 3] float32 RGB patches in the networks' range of the pixel boxes
    (x1, y1, x2, y2) of uint8 `image`: each box cut out (gray 128 outside the image, as
    crop_and_resize's 0 after scaling) and resized with OpenCV (area when shrinking), one
    patch at a time; for a few boxes much cheaper than crop_and_resize on a whole float frame."""
    hgt, wid = image.shape[:2]
    out = np.empty((len(boxes), size, size, 3), np.uint8)
    for i, (x1, y1, x2, y2) in enumerate(np.rint(np.asarray(boxes)[:, :4]).astype(int)):
        w, h = max(x2 - x1, 1), max(y2 - y1, 1)
        patch = np.full((h, w, 3), 128, np.uint8)
        sx0, sy0, sx1, sy1 = max(x1, 0), max(y1, 0), min(x1 + w, wid), min(y1 + h, hgt)
        if sx1 > sx0 and sy1 > sy0:
            patch[sy0 - y1:sy1 - y1, sx0 - x1:sx1 - x1] = image[sy0:sy1, sx0:sx1]
        out[i] = cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA if w > size else cv2.INTER_LINEAR)
    if bgr:
        out = out[..., ::-1]
    return (out.astype(np.float32) - 127.5) / 128.0


class MTCNN:
    """The three networks and mtcnn 1.0.0's algorithm; `detect(rgb)` -> [K, 5] (x1, y1, x2, y2, score).

    Parameters (mtcnn 1.0.0's defaults): scale_factor (pyramid step), thresholds (P-Net,
    R-Net, O-Net face probability); `detect`'s min_face_size is in pixels of the image passed
    in (the pyramid starts at 12 / min_face_size). Stateless: one instance may serve several
    threads."""

    def __init__(self, scale_factor: float = 0.709, thresholds: tuple = (0.6, 0.7, 0.8)):
        if not 0 < scale_factor < 1:
            raise ValueError(f"scale_factor must be in (0, 1), got {scale_factor}")
        if len(thresholds) != 3 or not all(0 <= t < 1 for t in thresholds):
            raise ValueError(f"thresholds must be three probabilities in [0, 1), got {thresholds}")
        self.scale_factor = float(scale_factor)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.nets = {n: load_weights(n) for n in SHAPES}

    def scales(self, height: int, width: int, min_face_size: float = 20) -> list:
        if min_face_size <= 0:
            raise ValueError(f"min_face_size must be > 0, got {min_face_size}")
        m, side, out = 12.0 / min_face_size, min(height, width), []
        while side * m * self.scale_factor ** len(out) >= 12:
            out.append(m * self.scale_factor ** len(out))
        return out

    def detect(self, rgb: np.ndarray, min_face_size: float = 20) -> np.ndarray:
        import torch

        img = (rgb.astype(np.float32) - 127.5) / 128.0
        hgt, wid = img.shape[:2]
        with torch.inference_mode():
            proposals = self._pnet_stage(img, min_face_size)
            boxes = self._refine_stages(lambda b, size: crop_and_resize(img, b, size), proposals)
        return self._clip(boxes, hgt, wid)

    def refine(self, image: np.ndarray, boxes: np.ndarray, bgr: bool = False) -> np.ndarray:
        """Faces again near known boxes [K, 4] (x1, y1, x2, y2), without the P-Net pyramid:
        each box and copies 15% smaller and larger are the proposals that R-Net and O-Net judge
        and regress, as in `detect`. Their patches are cut from `image` (uint8, RGB or `bgr`) at
        its own resolution, so no frame-sized copy is made: a face that moved a fraction of its
        size since the boxes were found is found again for a few small patches per face."""
        import torch

        known = _square(np.asarray(boxes, np.float64).reshape(-1, 4))
        if not len(known):
            return np.zeros((0, 5), np.float32)
        side = (known[:, 2] - known[:, 0])[:, None]
        cx, cy = (known[:, 0] + known[:, 2])[:, None] / 2, (known[:, 1] + known[:, 3])[:, None] / 2
        half = side * REFINE_SCALES[None, :] / 2
        proposals = np.stack([cx - half, cy - half, cx + half, cy + half, np.ones_like(half)], -1).reshape(-1, 5)
        with torch.inference_mode():
            found = self._refine_stages(lambda b, size: cut_patches(image, b, size, bgr), proposals)
        return self._clip(found, *image.shape[:2])

    def _refine_stages(self, crop, boxes: np.ndarray) -> np.ndarray:
        """R-Net then O-Net on `boxes` [N, 5]; crop(boxes, size) gives their [N, size, size, 3]
        patches in the networks' range."""
        import torch

        for size, net, thr, nms_thr, method in ((24, rnet, 1, 0.7, "union"), (48, onet, 2, 0.7, "min")):
            if not len(boxes):
                break
            patches = torch.from_numpy(crop(boxes, size)).permute(0, 3, 1, 2)
            offsets, prob = net(patches, self.nets["rnet" if size == 24 else "onet"])
            boxes = _regress(boxes, offsets.numpy())
            boxes[:, 4] = prob.numpy()
            boxes = _nms(_by_score(boxes[boxes[:, 4] > self.thresholds[thr]]), nms_thr, method)
            if size == 24:
                boxes = _square(boxes)
        return boxes

    @staticmethod
    def _clip(boxes: np.ndarray, hgt: int, wid: int) -> np.ndarray:
        boxes = np.asarray(boxes, np.float32).reshape(-1, 5)
        boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, wid - 1)
        boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, hgt - 1)
        return boxes

    def _pnet_stage(self, img: np.ndarray, min_face_size: float) -> np.ndarray:
        import torch

        hgt, wid = img.shape[:2]
        found = []
        for s in self.scales(hgt, wid, min_face_size):
            small = cv2.resize(img, (math.ceil(wid * s), math.ceil(hgt * s)), interpolation=cv2.INTER_AREA)
            offsets, prob = pnet(torch.from_numpy(small).permute(2, 0, 1)[None], self.nets["pnet"])
            prob, offsets = prob[0].numpy(), offsets[0].numpy()
            ys, xs = np.nonzero(prob > self.thresholds[0])
            if not len(ys):
                continue
            r = offsets[:, ys, xs]  # 12 px windows every 2 px, regressed at once (as mtcnn 1.0 does)
            b = np.stack([2 * xs + 12 * r[0], 2 * ys + 12 * r[1], 2 * xs + 12 + 12 * r[2],
                          2 * ys + 12 + 12 * r[3], prob[ys, xs]], 1) / np.array([s, s, s, s, 1])
            found.append(_nms(_by_score(b), 0.5))
        if not found:
            return np.zeros((0, 5))
        return _square(_nms(_by_score(np.concatenate(found)), 0.7))
