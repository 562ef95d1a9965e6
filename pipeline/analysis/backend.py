"""The back end of file analysis: chunks of crops in, final CSV rows out, for several videos at once.

Per video it holds the audio track (:class:`~pipeline.analysis.audio.FileTrack`) and, per trial, the online
whole-trial inference (:class:`~pipeline.analysis.predictor.TrialWindows`), the smoothing
(:class:`~pipeline.analysis.smoother.StreamingSmoother`) and the CSV (:class:`~pipeline.analysis.writer.CsvRows`).
:meth:`Backend.step` takes the chunks that are ready, from any videos: the crops of all of them go through each
``frames`` extractor together, the windows of all their trials through each fold together (the models batched
across videos); each video's audio rows are computed from its own track. Audio placement follows ``prepare`` and
``extract``: frame times on the video timeline (``prepare``'s), moved onto the track by where its first sample is
heard (``audio_offset``).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.common.config import PostprocessConfig
from pipeline.extractors import Extractor
from pipeline.io.timebase import audio_mask, track_seconds
from pipeline.analysis.audio import RETAIN_S, FileTrack
from pipeline.analysis.features import AudioRows, frame_rows
from pipeline.analysis.frontend import FrameChunk, VideoHeader
from pipeline.analysis.predictor import Fold, TrialWindows, run_ready
from pipeline.analysis.smoother import StreamingSmoother
from pipeline.analysis.writer import CsvRows, draw_from_csv


@dataclass
class TrialOut:
    """One trial of a video on its way out: inference, smoothing, CSV; ``face`` (N,) bool."""

    name: str
    face: np.ndarray
    windows: TrialWindows
    smoother: StreamingSmoother
    csv: CsvRows


@dataclass
class VideoSummary:
    """What the per-video line says: frames, frames with a face (the main trial's), seconds (face pass + the
    rest), the CSVs written."""

    path: Path
    frames: int
    faces: int
    seconds: float
    csvs: list[Path]
    face_pass_s: float = 0.0  # of ``seconds``: the face pass (the models wait for it)

    @property
    def frames_per_s(self) -> float:
        return self.frames / max(self.seconds, 1e-9)

    def as_dict(self) -> dict:
        return {"video": str(self.path), "frames": self.frames, "faces": self.faces, "seconds": round(self.seconds, 2),
                "frames_per_s": round(self.frames_per_s, 1), "face_pass_s": round(self.face_pass_s, 2)}


class VideoState:
    """A video being analysed: its header, audio rows per audio modality, trials, frames received."""

    def __init__(self, header: VideoHeader, extractors: dict[str, Extractor], folds: list[Fold],
                 post: PostprocessConfig, out: Path, chunk: int) -> None:
        self.header, self.started, self.received = header, time.perf_counter(), 0
        audio = [m for m, ex in extractors.items() if ex.kind == "audio"]
        retain = max(RETAIN_S, 2 * chunk / header.info.fps)  # a chunk's reads go back by its length
        self.track = FileTrack(header.path, str(header.path), retain) if audio and header.info.has_audio else None
        offset = self.track.start - header.info.start if self.track is not None else 0.0
        self.track_times = track_seconds(header.frame_times(), offset)  # (N,) seconds on the track's timeline
        n_samples = self.track.n_samples if self.track is not None else 0
        heard = bool(audio_mask(self.track_times, n_samples).any())
        for w in self.track.warnings if self.track is not None else ():
            print(w, file=sys.stderr)
        self.audio = {m: AudioRows(extractors[m], self.track) for m in audio} if self.track is not None else {}
        self.trials: dict[str, TrialOut] = {}
        for name, face in header.faces.items():
            no_input = {m: (not face.any()) if ex.kind == "frames" else not heard for m, ex in extractors.items()}
            self.trials[name] = TrialOut(name, face, TrialWindows(header.n_frames, folds, no_input),
                                         StreamingSmoother(post), CsvRows.result(out / f"{name}.csv"))

    def audio_rows(self, m: str, ex: Extractor, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows and mask of audio modality ``m`` for frames ``lo .. hi - 1`` (zeros, False without audio)."""
        if m not in self.audio:
            return np.zeros((hi - lo, *ex.row_shape), dtype=ex.dtype), np.zeros(hi - lo, dtype=bool)
        return self.audio[m](lo, self.track_times[lo:hi])

    def emit(self, trial: TrialOut, final: bool) -> None:
        """Write the rows of ``trial`` that became final (all of them when ``final``)."""
        values = trial.smoother.push(trial.windows.final())
        if final:
            values = np.concatenate([values, trial.smoother.finish()])
        a = trial.csv.rows
        b = a + len(values)
        trial.csv.write(self.header.times[a:b], values, trial.face[a:b])


class Backend:
    """Extractors and fold models shared by every video (see the module docstring)."""

    def __init__(self, extractors: dict[str, Extractor], folds: list[Fold], post: PostprocessConfig,
                 device: torch.device, out: Path, titles: list[str], chunk: int) -> None:
        self.extractors, self.folds, self.post, self.device = extractors, folds, post, device
        self.out, self.titles, self.chunk = Path(out), titles, chunk
        self.videos: dict[str, VideoState] = {}

    def open(self, header: VideoHeader) -> None:
        self.videos[header.stem] = VideoState(header, self.extractors, self.folds, self.post, self.out, self.chunk)

    def _frame_rows(self, m: str, ex: Extractor, chunks: list[FrameChunk]) -> list[dict[str, np.ndarray]]:
        """Rows of ``frames`` modality ``m`` per chunk and trial, the crops of all chunks through the network
        together; a trial without any face gets zeros (the bank zeroes them anyway)."""
        out: list[dict[str, np.ndarray]] = [{} for _ in chunks]
        keys = [(i, t) for i, c in enumerate(chunks) for t in c.crops
                if not self.videos[c.stem].trials[t].windows.no_input[m]]
        if keys:
            rows = frame_rows(ex, np.concatenate([chunks[i].crops[t] for i, t in keys]))
            at = 0
            for i, t in keys:
                k = len(chunks[i].crops[t])
                out[i][t], at = rows[at : at + k], at + k
        for i, c in enumerate(chunks):
            for t, x in c.crops.items():
                out[i].setdefault(t, np.zeros((len(x), *ex.row_shape), dtype=ex.dtype))
        return out

    def step(self, chunks: list[FrameChunk]) -> list[VideoSummary]:
        """Take ``chunks`` (each the next frames of its video, videos opened before) through features, inference,
        smoothing and CSV; returns the summaries of the videos whose last frame was in them."""
        frame_rows_ = {m: self._frame_rows(m, ex, chunks) for m, ex in self.extractors.items() if ex.kind == "frames"}
        touched: dict[int, TrialWindows] = {}
        for i, c in enumerate(chunks):
            v = self.videos[c.stem]
            if c.lo != v.received:
                raise RuntimeError(f"{v.header.path}: frames {c.lo}..{c.hi} arrived after {v.received} frames")
            audio = {m: v.audio_rows(m, ex, c.lo, c.hi) for m, ex in self.extractors.items() if ex.kind == "audio"}
            for name, face in c.face.items():
                windows = v.trials[name].windows
                rows = {m: frame_rows_[m][i][name] if m in frame_rows_ else audio[m][0] for m in self.extractors}
                present = {m: face if m in frame_rows_ else audio[m][1] for m in self.extractors}
                windows.push(rows, present)
                touched[id(windows)] = windows
            v.received = c.hi
        run_ready(list(touched.values()), self.device)
        done = []
        for stem in dict.fromkeys(c.stem for c in chunks):
            v = self.videos[stem]
            last = v.received == v.header.n_frames
            for trial in v.trials.values():
                v.emit(trial, last)
            if last:
                done.append(self.finish(stem))
        return done

    def finish(self, stem: str) -> VideoSummary:
        """Close a video whose every row is written: CSVs renamed, figures drawn."""
        v = self.videos.pop(stem)
        h = v.header
        if v.track is not None:
            v.track.close()
        csvs = []
        for t in v.trials.values():
            path = t.csv.close(complete=True)
            assert path is not None and t.csv.rows == h.n_frames, (t.name, t.csv.rows, h.n_frames)
            n_face = int(t.face.sum())
            title = f"{h.path.name}: {t.name}  ({n_face}/{h.n_frames} frames with a face, {len(self.folds)} folds)"
            if self.titles:
                title += "\n" + "; ".join(self.titles).upper() + ": not a measurement of affect"
            draw_from_csv(path, title)
            csvs.append(path)
        faces = int(next(iter(v.trials.values())).face.sum())
        if not any(t.face.any() for t in v.trials.values()):
            print(f"warning: {h.path}: no face found in {h.n_frames} frames; face is 0 in every row", file=sys.stderr)
        seconds = h.faces_s + time.perf_counter() - v.started
        return VideoSummary(h.path, h.n_frames, faces, seconds, csvs, h.faces_s)

    def abort(self) -> None:
        """Remove the partial CSVs of every video still open (an error or Ctrl-C)."""
        for v in self.videos.values():
            for t in v.trials.values():
                t.csv.close(complete=False)
            if v.track is not None:
                v.track.close()
        self.videos.clear()
