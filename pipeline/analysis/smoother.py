"""``postprocess`` smoothing of a trial whose values arrive in order, equal to smoothing the whole trial at once.

:func:`pipeline.scoring.postprocess.smooth` is a centred filter (moving average, median, Savitzky-Golay; edges
repeat the nearest value): the output at frame ``i`` reads frames ``i - w/2 .. i + w/2``. :class:`StreamingSmoother`
holds ``context = max(window) + 1`` values on each side of what it hands out, runs the same ``smooth`` on that
stretch and keeps its middle, so every output is computed from the same values as in the whole-trial call (up to
the float rounding of the moving average's running sum); the trial's real ends stay the stretch's ends. It hands a
value out ``context`` frames after it came in (live: that many frames of delay; none with ``method: none``).
"""

from __future__ import annotations

import numpy as np

from pipeline.common.config import PostprocessConfig
from pipeline.scoring.postprocess import smooth


class StreamingSmoother:
    def __init__(self, cfg: PostprocessConfig) -> None:
        self.cfg = cfg
        self.context = 0 if cfg.method == "none" or max(cfg.window) <= 1 else max(cfg.window) + 1
        self.buf = np.zeros((0, 2), np.float32)  # values of frames origin .. received - 1
        self.origin = 0
        self.done = 0  # frames handed out

    @property
    def received(self) -> int:
        return self.origin + len(self.buf)

    def push(self, values: np.ndarray) -> np.ndarray:
        """The next frames' values (k, 2) in; the smoothed values (j, 2) of the frames that became final out."""
        self.buf = np.concatenate([self.buf, np.asarray(values, np.float32).reshape(-1, 2)])
        return self._out(self.received - self.context)

    def finish(self) -> np.ndarray:
        """The smoothed values of every frame not handed out yet (the trial has ended)."""
        return self._out(self.received)

    def _out(self, upto: int) -> np.ndarray:
        if upto <= self.done:
            return np.zeros((0, 2), np.float32)
        sm = smooth(self.buf, self.cfg)  # the stretch origin .. received - 1
        out = sm[self.done - self.origin : upto - self.origin]
        self.done = upto
        cut = max(0, upto - self.context - self.origin)
        self.buf, self.origin = self.buf[cut:], self.origin + cut
        return out
