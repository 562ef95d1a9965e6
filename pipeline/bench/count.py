"""``python -m pipeline bench count VIDEO...``: counting a video's frames by demuxing packets against decoding them.

`prepare` counts every video's frames: by decoding for videos of test trials (exact: the submission needs one row
per decoded frame) and by demuxing packets for the others (no decoding). This prints one JSON line per video: both
counts, the best of ``repeats`` wall times of each (:func:`pipeline.io.media.probe_video`, as `prepare` calls it,
timestamps included) and their ratio.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from pipeline.io.media import probe_video


def _best(path: Path, decode: bool, repeats: int) -> tuple[int, float]:
    best, n = float("inf"), 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        n = probe_video(path, count_frames=decode).n_frames
        best = min(best, time.perf_counter() - t0)
    return n, best


def run(videos: list[Path], repeats: int = 3) -> list[dict]:
    """Measure each video; returns (and prints) one record per video."""
    out = []
    for p in videos:
        n_packets, t_packets = _best(p, False, repeats)
        n_decoded, t_decoded = _best(p, True, repeats)
        rec = {
            "video": p.name, "frames_packets": n_packets, "frames_decoded": n_decoded,
            "packets_s": round(t_packets, 4), "decode_s": round(t_decoded, 4),
            "packets_frames_per_s": round(n_packets / t_packets), "decode_frames_per_s": round(n_decoded / t_decoded),
            "speedup": round(t_decoded / t_packets, 1),
        }
        print(json.dumps(rec))
        out.append(rec)
    return out
