"""Several video files: front ends in ``jobs`` worker processes, one back end in this process.

Each worker takes the next video, runs its face pass, then its crop pass (pipeline/analysis/frontend.py), and sends
the header and the chunks of crops through one bounded queue (so memory holds a few chunks, however long the videos
are). This process runs the models (:class:`~pipeline.analysis.backend.Backend`): whatever chunks are waiting, from
any videos, go through the extractors and the fold models together. A video's face pass overlaps the models'
work on another's chunks; with ``--jobs 2`` two face passes run at once.

Errors: a worker's :class:`~pipeline.common.errors.InputError` (a file FFmpeg cannot decode ...) stops the run with
its one line; the partial CSVs of unfinished videos are removed. Ctrl-C is handled here alone (workers ignore it):
workers are stopped, partial CSVs removed, finished videos kept.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import signal
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from pipeline.common.config import FacesConfig, FramesConfig
from pipeline.common.errors import InputError
from pipeline.io.media import stream_rate
from pipeline.analysis.backend import Backend, VideoSummary
from pipeline.analysis.frontend import crop_chunks, plan_video

QUEUE_DEPTH = 4  # chunks in flight per worker


@dataclass(frozen=True)
class FrontEnd:
    """What a worker needs: the ``faces`` and ``frames`` params, ``--all-faces``, frames per chunk and the face
    detector's onnxruntime providers."""

    faces: FacesConfig
    frames: FramesConfig
    all_faces: bool
    chunk: int
    providers: tuple[Any, ...]


def worker(tasks: Any, results: Any, fe: FrontEnd) -> None:
    """Worker process: ``(index, path, stem)`` tasks until None; sends ``(kind, index, payload)`` messages:
    ``faces`` (frames done in the face pass), ``plan`` (the header), ``chunk``, ``done``, ``error`` (a user's
    error, one line) or ``crash`` (a traceback)."""
    from pipeline.faces.mtcnn import MTCNN

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process decides what Ctrl-C does
    detector = MTCNN(fe.faces.min_face, fe.faces.thresholds, fe.faces.backend, threads=1, providers=fe.providers)
    while (task := tasks.get()) is not None:
        idx, path, stem = task
        try:
            plan = plan_video(path, stem, fe.faces, detector, fe.all_faces, lambda n, i=idx: results.put(("faces", i, n)))
            results.put(("plan", idx, plan.header))
            for chunk in crop_chunks(plan, fe.faces, fe.frames, fe.chunk):
                results.put(("chunk", idx, chunk))
            results.put(("done", idx, None))
        except InputError as e:
            results.put(("error", idx, str(e)))
        except Exception:  # noqa: BLE001 - a bug: its traceback goes to the main process
            results.put(("crash", idx, traceback.format_exc()))


class Bars:
    """One progress line on stderr: frames through the models (the total estimated from the containers until each
    video's face pass has counted them), with the videos finished and the frames of the face pass beside it."""

    def __init__(self, videos: list[Path], enabled: bool) -> None:
        self.estimate = {i: max(stream_rate(v)[1], 1) if enabled else 0 for i, v in enumerate(videos)}
        self.n_videos, self.done, self.faces = len(videos), 0, 0
        self.bar = tqdm(total=sum(self.estimate.values()), desc="analyze", unit="frame", disable=not enabled,
                        mininterval=1.0, file=sys.stderr, dynamic_ncols=True)
        self._postfix()

    def _postfix(self) -> None:
        self.bar.set_postfix_str(f"videos {self.done}/{self.n_videos}, face pass {self.faces} frames", refresh=False)

    def counted(self, i: int, n: int) -> None:
        """Video ``i`` has ``n`` frames (its face pass is done)."""
        self.bar.total += n - self.estimate[i]
        self.estimate[i] = n

    def face_frames(self, n: int) -> None:
        self.faces += n
        self._postfix()

    def model_frames(self, n: int, finished: int) -> None:
        self.done += finished
        self._postfix()
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()


def run_files(
    videos: list[Path], make_backend: Callable[[], Backend], fe: FrontEnd, jobs: int, progress: bool
) -> list[VideoSummary]:
    """Analyse ``videos`` (paths with distinct stems); returns one summary per video, in the order they finished.
    The workers start first: their face passes run while ``make_backend`` builds the networks."""
    ctx = mp.get_context("forkserver" if sys.platform == "linux" else "spawn")
    jobs = max(1, min(jobs, len(videos)))
    tasks, results = ctx.Queue(), ctx.Queue(maxsize=QUEUE_DEPTH * jobs + 8)
    for i, v in enumerate(videos):
        tasks.put((i, v, v.stem))
    for _ in range(jobs):
        tasks.put(None)
    procs = [ctx.Process(target=worker, args=(tasks, results, fe), daemon=True) for _ in range(jobs)]
    for p in procs:
        p.start()
    backend: Backend | None = None
    bars = Bars(videos, progress)
    try:
        backend = make_backend()
        return _drive(videos, backend, results, procs, bars)
    except BaseException:
        if backend is not None:
            backend.abort()
        raise
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join()
        bars.close()


def _next_messages(results: Any, procs: list, limit: int) -> list[tuple[str, int, Any]]:
    """The next message (waiting for it, while a worker lives) and up to ``limit`` more already waiting."""
    while True:
        try:
            batch = [results.get(timeout=1.0)]
            break
        except queue.Empty:
            if not any(p.is_alive() for p in procs):
                raise InputError("the face workers stopped without a word (out of memory?)") from None
    while len(batch) < limit:
        try:
            batch.append(results.get_nowait())
        except queue.Empty:
            break
    return batch


def _drive(videos: list[Path], backend: Backend, results: Any, procs: list, bars: Bars) -> list[VideoSummary]:
    """The back end's loop over the workers' messages (see the module docstring)."""
    summaries: list[VideoSummary] = []
    left = set(range(len(videos)))
    while left:
        chunks = []
        for kind, idx, payload in _next_messages(results, procs, limit=2 * len(procs)):
            if kind == "faces":
                bars.face_frames(payload)
            elif kind == "plan":
                backend.open(payload)
                bars.counted(idx, payload.n_frames)
            elif kind == "chunk":
                chunks.append(payload)
            elif kind == "done":
                left.discard(idx)
            elif kind == "error":
                raise InputError(payload)
            else:
                raise RuntimeError(f"analysing {videos[idx]} failed in a worker:\n{payload}")
        finished = backend.step(chunks) if chunks else []
        for s in finished:
            summaries.append(s)
            tqdm.write(_line(s), file=sys.stderr)
        bars.model_frames(sum(c.hi - c.lo for c in chunks), len(finished))
    return summaries


def _line(s: VideoSummary) -> str:
    csvs = ", ".join(str(p) for p in s.csvs)
    return (f"analyze: {csvs} and .png: {s.frames} frames, {s.faces} with a face, {s.seconds:.1f} s, "
            f"{s.frames_per_s:.1f} frames/s")
