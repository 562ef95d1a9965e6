"""``crop``: faces detected, aligned and tracked in a dataset's videos -> ``<data.root>/cropped_aligned/``.

For a dataset in the Aff-Wild2 layout that comes without face crops (``data.crops: detect``). ``data.crops: given``
(Aff-Wild2 itself) only checks that ``cropped_aligned/`` is there.

- Trials come from the annotation files and ``test_set.txt``, as ``prepare`` reads them; each video with a trial is
  decoded once and its faces followed (:mod:`pipeline.faces`); ``<trial>/%05d.jpg`` is written for every frame
  where the trial's face was found, nothing for the others (``prepare`` fills them). Two people: trials
  ``<video>_left`` / ``<video>_right``.
- The crops go into the dataset itself, beside its videos, as Aff-Wild2 ships them: the dataset is not a DVC output
  (``scan`` fingerprints it, and ``prepare`` re-runs when the crops change). So a dataset made by the ``demo`` stage
  (a DVC output) cannot be cropped in place: generate one without crops outside DVC
  (``python -m pipeline demo --no-crops --out <folder>``) and point ``data.root`` at it.
- Resumable per video: ``<data.root>/cropped_aligned.json`` records, per video, the detector settings (with the
  weights' and the code's digests), the video's size and the trials written. A video whose record matches and whose
  trial folders exist is skipped; a trial folder appears complete or not at all (written aside, then renamed).
  A trial folder that this stage did not write is never replaced: the run stops and says so.
- Videos are processed in ``jobs`` processes (one per core by default), with a progress bar over frames.

Writes ``out`` (``data/crops.json``): per trial the decoded frame count and the frames with a face.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import queue
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from pipeline.common.config import DataConfig, FacesConfig, as_dict
from pipeline.common.errors import InputError
from pipeline.common.outputs import write_json
from pipeline.faces import crops as C
from pipeline.faces.mtcnn import MTCNN, weights_digest
from pipeline.io.annotations import annotation_files, read_test_list
from pipeline.io.media import find_videos, missing_video, resolve_video

RECORDS = "cropped_aligned.json"  # beside cropped_aligned/ in the dataset root
RECORDS_FORMAT = "va-pipeline-crops/1"
_FACES_DIR = Path(__file__).resolve().parents[1] / "faces"


def settings(cfg: FacesConfig) -> dict[str, Any]:
    """What decides the crops: the ``faces`` params, the detector weights' digest and the face code's digest."""
    h = hashlib.sha256()
    for f in sorted(_FACES_DIR.glob("*.py")):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return {**as_dict(cfg), "weights": weights_digest(), "code_version": h.hexdigest()[:16]}


def dataset_trials(root: Path, videos: dict[str, Path]) -> dict[str, list[str]]:
    """``{video: [trial, ...]}`` for every trial of the annotation files and ``test_set.txt`` (the video found as
    ``prepare`` finds it: the trial's own name, else without ``_left`` / ``_right``)."""
    names = [f.stem for files in annotation_files(root).values() for f in files] + read_test_list(root)
    out: dict[str, list[str]] = {}
    for t in names:
        v = resolve_video(t, videos)
        if v is None:
            raise InputError(f"{root}: trial {t!r}: {missing_video(t, root)}")
        if t not in out.setdefault(v, []):
            out[v].append(t)
    if not out:
        raise InputError(f"{root}: no trials (no annotation files under annotations/VA_Estimation_Challenge and no test_set.txt)")
    return dict(sorted(out.items()))


def load_records(path: Path) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """``({video: record}, {video: trials})`` of earlier runs: the records of finished videos (any settings), and
    every trial folder this stage has ever been about to place in ``cropped_aligned/`` (written before the folders
    are, so a run killed between a folder's rename and its video's record still knows the folder is its own)."""
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return {}, {}
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: unreadable crop records ({e}); delete it and cropped_aligned/ to start over") from None
    if doc.get("format") != RECORDS_FORMAT:
        raise InputError(f"{path}: not a crop record of this pipeline (format {doc.get('format')!r})")
    videos = dict(doc.get("videos", {}))
    owned = {v: list(ts) for v, ts in doc.get("owned", {}).items()}
    for v, r in videos.items():
        owned[v] = sorted(set(owned.get(v, [])) | set(r.get("trials", {})))
    return videos, owned


# ------------------------------------------------------------------------------------------------- workers
_worker: dict[str, Any] = {}


def _init_worker(cfg: FacesConfig, progress: Any) -> None:
    import cv2

    cv2.setNumThreads(1)  # one video per process: the processes are the parallelism
    _worker["cfg"], _worker["progress"] = cfg, progress
    _worker["detector"] = MTCNN(cfg.min_face, cfg.thresholds, cfg.backend, threads=1)


def _video_task(args: tuple[str, Path, list[str], Path, Path]) -> dict[str, Any]:
    """Crop one video; returns its record (without settings)."""
    video, path, trials, work, dest = args
    cfg, progress = _worker["cfg"], _worker["progress"]
    shutil.rmtree(work, ignore_errors=True)
    faces = C.crop_video(path, cfg, _worker["detector"], work, progress=progress.put)
    assignment = C.assign_trials(faces, video, trials, cfg)
    C.publish(work, assignment, dest)
    return {
        "video": video,
        "n_frames": faces.n_frames,
        "tracks": len(faces.tracks),
        "trials": {t: {"faces": len(tr.frames) if tr else 0, "track": tr.id if tr else None} for t, tr in assignment.items()},
    }


# ----------------------------------------------------------------------------------------------- stage
def run(data: DataConfig, faces: FacesConfig, out: Path, jobs: int = 0) -> dict[str, Any]:
    """Write the crops of ``data.root`` (when ``data.crops`` is ``detect``) and the summary ``out``."""
    start = time.perf_counter()
    root, out = Path(data.root), Path(out)
    if not root.is_dir():
        raise InputError(f"{root}: data.root does not exist or is not a folder")
    dest = root / "cropped_aligned"
    if data.crops == "given":
        if not dest.is_dir():
            raise InputError(f"{dest}: not found; this dataset has no face crops: set data.crops: detect to find them")
        summary: dict[str, Any] = {"crops": "given", "root": str(root)}
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json(out, summary, sort_keys=True)
        print(json.dumps({"crop": "given", "root": str(root)}))
        return summary

    videos = find_videos(root / "videos")
    plan = dataset_trials(root, videos)
    current = settings(faces)
    records_path = root / RECORDS
    earlier, owned = load_records(records_path)
    records = {v: r for v, r in earlier.items() if r.get("settings") == current and v in plan}
    todo = []
    for v, trials in plan.items():
        r = records.get(v)
        done = (
            r is not None
            and r.get("size") == videos[v].stat().st_size
            and sorted(r["trials"]) == sorted(trials)
            and all((dest / t).is_dir() for t in trials)
        )
        if done:
            continue
        records.pop(v, None)
        for t in trials:
            if (dest / t).exists() and t not in owned.get(v, []):
                raise InputError(
                    f"{dest / t}: exists and was not written by `crop`; remove it, or set data.crops: given to use it"
                )
        todo.append(v)
    work_root = root / "cropped_aligned.partial"  # same file system as dest: renames are atomic
    shutil.rmtree(work_root, ignore_errors=True)
    dest.mkdir(exist_ok=True)
    jobs = min(jobs or len(os.sched_getaffinity(0)), max(1, len(todo)))
    if todo:
        for v in todo:  # claimed before any folder is placed: a killed run's folders stay this stage's own
            owned[v] = sorted(set(owned.get(v, [])) | set(plan[v]))
        write_json(records_path, {"format": RECORDS_FORMAT, "videos": records, "owned": owned}, sort_keys=True)
        _run_pool(todo, plan, videos, faces, dest, work_root, jobs, records, owned, current, records_path)
    shutil.rmtree(work_root, ignore_errors=True)

    summary = {
        "crops": "detect",
        "root": str(root),
        "settings": current,
        "trials": {
            t: {"video": v, "n_frames": records[v]["n_frames"], "faces": records[v]["trials"][t]["faces"]}
            for v in plan
            for t in plan[v]
        },
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, summary, sort_keys=True)
    n = sum(records[v]["n_frames"] for v in todo)
    secs = time.perf_counter() - start
    print(json.dumps({
        "crop": str(root), "videos": len(plan), "cropped": len(todo), "skipped": len(plan) - len(todo),
        "frames": n, "seconds": round(secs, 2), "frames_per_s": round(n / secs, 1) if n else None, "jobs": jobs,
    }))
    for t, s in summary["trials"].items():
        if not s["faces"]:
            print(f"warning: {dest / t}: no face found in {s['n_frames']} frames; prepare will fill the trial with black", file=sys.stderr)
    return summary


def _run_pool(
    todo: list[str],
    plan: dict[str, list[str]],
    videos: dict[str, Path],
    faces: FacesConfig,
    dest: Path,
    work_root: Path,
    jobs: int,
    records: dict[str, Any],
    owned: dict[str, list[str]],
    current: dict[str, Any],
    records_path: Path,
) -> None:
    """Crop ``todo`` in ``jobs`` processes; record each video as soon as it is done."""
    from pipeline.io.media import stream_rate

    ctx = mp.get_context("forkserver" if sys.platform == "linux" else "spawn")
    progress = ctx.Queue()  # workers report decoded frames; handed over at process start (initargs)
    done: queue.Queue = queue.Queue()
    total = sum(stream_rate(videos[v])[1] for v in todo)  # the container's estimate; the bar counts decoded frames
    with tqdm(total=total or None, desc="crop", unit="frame") as bar, ctx.Pool(
        jobs, initializer=_init_worker, initargs=(faces, progress)
    ) as pool:
        for v in todo:
            pool.apply_async(_video_task, ((v, videos[v], plan[v], work_root / v, dest),),
                             callback=done.put, error_callback=done.put)
        for _ in todo:
            while True:
                while not progress.empty():
                    bar.update(progress.get())
                try:
                    r = done.get(timeout=0.2)
                    break
                except queue.Empty:
                    continue
            if isinstance(r, BaseException):
                raise r
            v = r.pop("video")
            records[v] = {**r, "settings": current, "size": videos[v].stat().st_size}
            write_json(records_path, {"format": RECORDS_FORMAT, "videos": records, "owned": owned}, sort_keys=True)  # after each video
        while not progress.empty():
            bar.update(progress.get())
