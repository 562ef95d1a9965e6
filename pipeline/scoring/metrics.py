"""Concordance correlation coefficient (CCC): the challenge metric in NumPy, the training loss in torch.

One CCC for the whole project (STYLE.md 12): ``train``, ``evaluate`` and the tests import it from here.
"""

from __future__ import annotations

import math

import numpy as np
import torch

DIMS = ("valence", "arousal")


def ccc(x: np.ndarray, y: np.ndarray) -> float:
    """Lin's concordance correlation coefficient of two 1-D series::

        ccc = 2 * cov(x, y) / (var(x) + var(y) + (mean(x) - mean(y)) ** 2)

    with population (ddof=0) moments, as the ABAW evaluation code. Symmetric in ``x`` and ``y``; 1 only when
    ``x == y``. NaN for degenerate input: fewer than two values, different lengths, a non-finite value, or a zero
    denominator (both series constant and equal), where the coefficient is undefined.
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.size < 2 or x.size != y.size or not (np.isfinite(x).all() and np.isfinite(y).all()):
        return float("nan")
    mx, my = x.mean(), y.mean()
    vx, vy = x.var(), y.var()
    cov = ((x - mx) * (y - my)).mean()
    den = vx + vy + (mx - my) ** 2
    if den <= 0:
        return float("nan")
    return float(2.0 * cov / den)


def ccc_va(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """CCC per dimension of (N, 2) valence-arousal arrays plus their mean:
    ``{"ccc_valence", "ccc_arousal", "ccc_mean"}``."""
    pred, target = np.asarray(pred), np.asarray(target)
    out = {f"ccc_{d}": ccc(pred[:, i], target[:, i]) for i, d in enumerate(DIMS)}
    out["ccc_mean"] = (out["ccc_valence"] + out["ccc_arousal"]) / 2.0
    return out


def ccc_torch(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None, eps: float = 1e-8) -> torch.Tensor:
    """Differentiable CCC per output dimension.

    pred, target: (..., D) — every leading axis (batch, time) is pooled, i.e. one CCC over all frames concatenated.
    mask: (...) bool, True for frames that count (padded frames are False). Returns (D,) float32.
    ``eps`` in the denominator keeps the value finite (about 0) for constant input, where :func:`ccc` says NaN.
    """
    pred = pred.float().reshape(-1, pred.shape[-1])  # (..., D) -> (N, D): all frames pooled
    target = target.float().reshape(-1, target.shape[-1])
    if mask is not None:
        w = mask.reshape(-1, 1).to(pred.dtype)  # (...) -> (N, 1) frame weights
    else:
        w = torch.ones_like(pred[:, :1])
    n = w.sum().clamp_min(1.0)
    mp = (w * pred).sum(0) / n
    mt = (w * target).sum(0) / n
    dp, dt = pred - mp, target - mt
    vp = (w * dp * dp).sum(0) / n
    vt = (w * dt * dt).sum(0) / n
    cov = (w * dp * dt).sum(0) / n
    return 2.0 * cov / (vp + vt + (mp - mt) ** 2 + eps)


def ccc_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The paper's loss, ``(1 - CCC_v) + (1 - CCC_a)`` (section 3.6), over all unmasked frames of the batch.

    pred, target: (B, T, 2); mask: (B, T) bool. Returns a scalar, finite for constant input.
    """
    return (1.0 - ccc_torch(pred, target, mask)).sum()


def json_float(x: float | None) -> float | None:
    """A metric as written to JSON: NaN / inf -> None (``null``, so metrics files stay valid JSON), else rounded
    to 6 decimals."""
    return None if x is None or not math.isfinite(x) else round(float(x), 6)


def accuracy(pred: np.ndarray, target: np.ndarray) -> float:
    """Share of ``pred == target`` over (N,) class indices; NaN when N is 0."""
    pred, target = np.asarray(pred).ravel(), np.asarray(target).ravel()
    return float(np.mean(pred == target)) if pred.size and pred.size == target.size else float("nan")


def macro_f1(pred: np.ndarray, target: np.ndarray) -> float:
    """Unweighted mean over classes of ``F1_k = 2 TP_k / (2 TP_k + FP_k + FN_k)``, over the classes that occur in
    ``target`` or ``pred`` (as scikit-learn's ``f1_score(average="macro")``); NaN when N is 0."""
    pred, target = np.asarray(pred).ravel(), np.asarray(target).ravel()
    if not pred.size or pred.size != target.size:
        return float("nan")
    scores = []
    for k in np.union1d(pred, target):
        tp = np.sum((pred == k) & (target == k))
        fp = np.sum((pred == k) & (target != k))
        fn = np.sum((pred != k) & (target == k))
        scores.append(2.0 * tp / (2.0 * tp + fp + fn))
    return float(np.mean(scores))
