"""``demo``: a generated dataset in the exact Aff-Wild2 layout, so the whole pipeline runs with no download.

What it writes under ``out`` (deterministic from ``demo.seed``)::

    videos/set1/demo00.mp4 ...  h264 + AAC (44.1 kHz stereo or 16 kHz mono), 30 fps (even index) or 25 fps (odd)
    videos/set2/...             (videos sit at two depths, as in a real download)
    cropped_aligned/<trial>/00001.jpg ...   112x112 aligned face crops, about 3 % missing at random
    annotations/VA_Estimation_Challenge/{Train_Set,Validation_Set}/<trial>.txt
    test_set.txt

Cast: ``n_videos`` videos. Video 3 shows two people (trials ``demo03_left`` / ``demo03_right``); video 5 has no
audio stream; the last two videos are the test set; the two before them are the validation set; the rest are the
training set. Trial ``demo01`` has its first 12 crops missing; every annotated trial has a stretch of -5 rows
(both values, or valence alone).

The generative relation (what a model can learn, and why temporal context helps):

- Each person has latent valence ``v(t)`` and arousal ``a(t)``: Gaussian-smoothed white noise (sigma 1.2 s),
  standardised, squashed by ``tanh(1.3 x)`` into (-1, 1). The two people of video 3 share arousal (one voice).
- Appearance carries valence: the mouth's curvature is ``v``, the eyebrows tilt with ``v``, and the skin tint
  moves from blue-grey (``v = -1``) to warm red (``v = +1``).
- Motion and voice carry arousal: the head moves within the crop on a figure of eight whose amplitude (1-7 px) and
  speed (0.4-2.4 Hz) grow with ``a``; the voice is a harmonic tone whose pitch (110-190 Hz), syllable rate
  (2.5-6 Hz) and loudness grow with ``a``.
- Annotations lag the signals as human raters do: ``label_v(t) = v(t - 0.24 s)``, ``label_a(t) = a(t - 0.48 s)``.
  A frame alone shows the state of a quarter to half a second ago; a model that looks at neighbouring frames
  (TCN, Transformer) can read the present label better than one that looks at a single frame.
- Nuisances: per-person face shape and skin colour, slow lighting drift, pixel noise, background noise in audio.

``affectnet/`` beside it is a small AffectNet-style set for the ``backbone`` stage (per-image layout,
:func:`write_affectnet`): still crops drawn exactly as the videos' crops are (same faces, tint, head offset,
lighting and noise), each with its valence, arousal and the expression nearest to them on the circumplex.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw
from scipy.ndimage import gaussian_filter1d
from tqdm import tqdm

from pipeline.common.config import DemoConfig
from pipeline.io import affectnet
from pipeline.io.annotations import ANNOTATION_DIR, SPLIT_DIRS

LAG_V = 0.24  # seconds by which valence annotations trail the face
LAG_A = 0.48  # seconds by which arousal annotations trail motion and voice
CANVAS = (256, 160)  # video frame size (W, H); a face crop is the 112x112 square around a face
FIRST_CROPS_MISSING = 12  # demo01 starts without crops, as Aff-Wild2 trials where the face is found late


@dataclass(frozen=True)
class Person:
    valence: np.ndarray  # (n,) latent valence per video frame
    arousal: np.ndarray  # (n,) latent arousal per video frame
    skin: np.ndarray  # (3,) base RGB
    width: float  # face half-width in pixels
    phase: float  # motion phase


def latent(rng: np.random.Generator, n: int, fps: float) -> np.ndarray:
    """A smooth process in (-1, 1) sampled at ``fps``: smoothed white noise (sigma 1.2 s), standardised, tanh."""
    x = gaussian_filter1d(rng.standard_normal(n + int(8 * fps)), sigma=1.2 * fps, mode="wrap")[: n]
    x = (x - x.mean()) / (x.std() + 1e-8)
    return np.tanh(1.3 * x)


def lagged(x: np.ndarray, seconds: float, fps: float) -> np.ndarray:
    """``x(t - seconds)`` on the frame grid; the first frames repeat ``x[0]``."""
    k = int(round(seconds * fps))
    return np.concatenate([np.full(k, x[0]), x[: len(x) - k]]) if k else x.copy()


def motion(person: Person, t: np.ndarray) -> np.ndarray:
    """(n, 2) head offset in pixels: a figure of eight, amplitude and speed rising with arousal."""
    a01 = (person.arousal + 1) / 2
    amp = 1.0 + 6.0 * a01
    phase = 2 * np.pi * np.cumsum(0.4 + 2.0 * a01) * np.gradient(t) + person.phase
    return np.stack([amp * np.sin(phase), 0.6 * amp * np.sin(2 * phase)], axis=1)


def draw_face(img: Image.Image, cx: float, cy: float, p: Person, i: int, light: float) -> None:
    """Draw person ``p`` at frame ``i`` centred on (cx, cy)."""
    v = float(p.valence[i])
    d = ImageDraw.Draw(img)
    warm, cool = np.array([40.0, -5.0, -25.0]), np.array([-30.0, -5.0, 30.0])
    skin = p.skin + (warm if v > 0 else cool) * abs(v)
    skin = tuple(int(c) for c in np.clip(skin * light, 0, 255))
    w, h = p.width, p.width * 1.25
    d.ellipse([cx - w, cy - h, cx + w, cy + h], fill=skin)
    for s in (-1, 1):  # eyes and brows
        ex, ey = cx + s * w * 0.42, cy - h * 0.22
        d.ellipse([ex - 5, ey - 3.5, ex + 5, ey + 3.5], fill=(30, 25, 25))
        tilt = 5.0 * v * s  # inner ends up when happy, down when angry/sad
        d.line([ex - 8, ey - 9 - tilt, ex + 8, ey - 9 + tilt], fill=(50, 35, 30), width=3)
    xs = np.linspace(-w * 0.5, w * 0.5, 13)
    ys = cy + h * 0.45 + 14.0 * v * (1 - (xs / (w * 0.5)) ** 2)  # y grows downwards: smile = middle lower than the ends
    d.line(list(zip((cx + xs).tolist(), ys.tolist())), fill=(120, 30, 40), width=4)


def voice(arousal: np.ndarray, fps: float, sr: int, rng: np.random.Generator) -> np.ndarray:
    """(n_samples,) float32 voice-like signal: harmonic tone, pitch, syllable rate and loudness rising with
    arousal (given per video frame, interpolated to samples)."""
    n = int(round(len(arousal) / fps * sr))
    ts = np.arange(n) / sr
    a01 = (np.interp(ts, np.arange(len(arousal)) / fps, arousal) + 1) / 2
    f0 = 110 + 80 * a01 + 4 * np.sin(2 * np.pi * 5 * ts)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    tone = sum(np.sin(k * phase) / k for k in range(1, 9))
    syll = np.sin(np.pi * np.cumsum(2.5 + 3.5 * a01) / sr) ** 2
    loud = 0.03 + 0.2 * a01
    return (loud * syll * tone / 2 + 0.004 * rng.standard_normal(n)).astype(np.float32)


def write_video(path: Path, frames: list[np.ndarray], fps: int, audio: np.ndarray | None, sr: int, stereo: bool) -> None:
    """Encode RGB ``frames`` as h264 and ``audio`` (mono float32 at ``sr``) as AAC into an .mp4."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        vs = c.add_stream("libx264", rate=fps, options={"preset": "veryfast", "crf": "23"})
        vs.width, vs.height, vs.pix_fmt = CANVAS[0], CANVAS[1], "yuv420p"
        as_ = None
        if audio is not None:
            as_ = c.add_stream("aac", rate=sr, layout="stereo" if stereo else "mono")
        for f in frames:
            for pkt in vs.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(pkt)
        for pkt in vs.encode():
            c.mux(pkt)
        if as_ is not None and audio is not None:
            data = np.stack([audio, audio]) if stereo else audio[None]
            step = 1024
            for s in range(0, data.shape[1], step):
                chunk = np.ascontiguousarray(data[:, s : s + step])
                fr = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="stereo" if stereo else "mono")
                fr.sample_rate, fr.pts, fr.time_base = sr, s, Fraction(1, sr)
                for pkt in as_.encode(fr):
                    c.mux(pkt)
            for pkt in as_.encode():
                c.mux(pkt)


def write_annotation(path: Path, valence: np.ndarray, arousal: np.ndarray, unannotated: slice, valence_only: slice) -> None:
    """Write an annotation file with -5 in the ``unannotated`` rows and in valence alone for ``valence_only``."""
    rows = np.stack([valence, arousal], axis=1).astype(np.float64)
    rows[unannotated] = -5
    rows[valence_only, 0] = -5
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("valence,arousal\n" + "".join(f"{v:.4f},{a:.4f}\n" for v, a in rows))


def run(cfg: DemoConfig, out: Path, crops: bool = True) -> None:
    """Write the demo dataset to ``out`` (replacing what is there). ``crops=False`` leaves out ``cropped_aligned/``:
    a dataset for the ``crop`` stage (``data.crops: detect``) to find the faces in."""
    rng = np.random.default_rng(cfg.seed)
    if out.exists():
        shutil.rmtree(out)
    n_test, n_val = 2, 2
    roles = ["train"] * (cfg.n_videos - n_test - n_val) + ["val"] * n_val + ["test"] * n_test
    test_trials: list[str] = []
    total = 0
    for k in tqdm(range(cfg.n_videos), desc="demo videos", unit="video"):
        name = f"demo{k:02d}"
        fps = 30 if k % 2 == 0 else 25
        n = int(round(cfg.seconds * fps))
        t = np.arange(n) / fps
        pair = k == 3
        arousal = latent(rng, n, fps)
        people = [
            Person(latent(rng, n, fps), arousal, rng.uniform(150, 215, 3), rng.uniform(32, 40), rng.uniform(0, 6.3))
            for _ in range(2 if pair else 1)
        ]
        trials = [f"{name}_left", f"{name}_right"] if pair else [name]
        centres = [(CANVAS[0] * 0.27, CANVAS[1] / 2), (CANVAS[0] * 0.73, CANVAS[1] / 2)] if pair else [(CANVAS[0] / 2, CANVAS[1] / 2)]
        light = 1.0 + 0.12 * np.sin(2 * np.pi * t / rng.uniform(6, 12) + rng.uniform(0, 6.3))
        offsets = [motion(p, t) for p in people]
        frames = []
        for i in range(n):
            img = Image.new("RGB", CANVAS, (70, 80, 90))
            for p, (cx, cy), off in zip(people, centres, offsets):
                draw_face(img, cx + off[i, 0], cy + off[i, 1], p, i, float(light[i]))
            arr = np.asarray(img, dtype=np.int16) + rng.integers(-6, 7, (CANVAS[1], CANVAS[0], 3))
            frames.append(np.clip(arr, 0, 255).astype(np.uint8))
        # crops: the aligned 112x112 box around each (still) face centre, resized to demo.size
        for trial, (cx, cy) in zip(trials, centres):
            missing = rng.random(n) < 0.03  # drawn even without crops: the videos and labels stay the same
            if not crops:
                continue
            if k == 1:
                missing[:FIRST_CROPS_MISSING] = True
            d = out / "cropped_aligned" / trial
            d.mkdir(parents=True, exist_ok=True)
            box = (int(cx - 56), int(cy - 56), int(cx + 56), int(cy + 56))
            for i in np.flatnonzero(~missing):
                crop = Image.fromarray(frames[i]).crop(box)
                if cfg.size != 112:
                    crop = crop.resize((cfg.size, cfg.size), Image.BILINEAR)
                crop.save(d / f"{i + 1:05d}.jpg", quality=90)
        has_audio = k != 5
        sr, stereo = (44_100, True) if k % 3 else (16_000, False)
        audio = voice(arousal, fps, sr, rng) if has_audio else None
        write_video(out / "videos" / ("set1" if k < cfg.n_videos // 2 else "set2/part") / f"{name}.mp4", frames, fps, audio, sr, stereo)
        total += n
        if roles[k] == "test":
            test_trials += trials
            continue
        for j, (trial, p) in enumerate(zip(trials, people)):
            s = int(rng.integers(n // 4, n // 2))
            write_annotation(
                out / ANNOTATION_DIR / SPLIT_DIRS[roles[k]] / f"{trial}.txt",
                lagged(p.valence, LAG_V, fps),
                lagged(p.arousal, LAG_A, fps),
                unannotated=slice(s, s + 8 + 4 * j),
                valence_only=slice(s + 30, s + 34),
            )
    write_affectnet(cfg, out / AFFECTNET_DIR)
    (out / "test_set.txt").write_text("".join(f"{t}\n" for t in test_trials))
    (out / "README.md").write_text(
        "Generated by `python -m pipeline demo` (pipeline/stages/demo.py documents the generative relation).\n"
    )
    print(json.dumps({"demo": str(out), "videos": cfg.n_videos, "frames": total, "seed": cfg.seed}))


# ------------------------------------------------------------------- the AffectNet-layout set (stage `backbone`)
AFFECTNET_DIR = "affectnet"
# (valence, arousal) per AffectNet expression code 0..7 (Neutral, Happy, Sad, Surprise, Fear, Disgust, Anger,
# Contempt), placed on the circumplex as in the AffectNet paper's valence-arousal plot; a drawn face is labelled
# with the nearest one
EXPRESSION_VA = np.array(
    [[0.0, 0.0], [0.75, 0.3], [-0.65, -0.35], [0.3, 0.75], [-0.3, 0.8], [-0.75, 0.3], [-0.55, 0.65], [-0.5, 0.0]]
)
CODED_EVERY = 25  # every 25th image carries a code the reader must skip: 8 None, 9 Uncertain, 10 No-Face


def expression_of(valence: np.ndarray, arousal: np.ndarray) -> np.ndarray:
    """int64 (n,) AffectNet codes 0..7: the expression whose :data:`EXPRESSION_VA` point is nearest."""
    va = np.stack([valence, arousal], axis=-1)[:, None, :]  # (n, 1, 2) against (8, 2)
    return np.argmin(((va - EXPRESSION_VA[None]) ** 2).sum(-1), axis=1)


def draw_still(rng: np.random.Generator, valence: float, arousal: float, face: bool = True) -> np.ndarray:
    """uint8 (112, 112, 3): one crop as the videos' crops are cut (the 112 box around the face's resting point),
    the face at a random point of its arousal-sized figure of eight, random person, lighting and pixel noise."""
    p = Person(np.full(2, valence), np.full(2, arousal), rng.uniform(150, 215, 3), rng.uniform(32, 40), rng.uniform(0, 6.3))
    off = motion(p, np.zeros(2))[0]  # no elapsed time: the offset at the person's own phase
    light = 1.0 + 0.12 * np.sin(rng.uniform(0, 6.3))
    img = Image.new("RGB", (112, 112), (70, 80, 90))
    if face:
        draw_face(img, 56 + off[0], 56 + off[1], p, 0, float(light))
    arr = np.asarray(img, dtype=np.int16) + rng.integers(-6, 7, (112, 112, 3))
    return np.clip(arr, 0, 255).astype(np.uint8)


def write_affectnet(cfg: DemoConfig, out: Path) -> None:
    """Write ``demo.affectnet_train`` / ``affectnet_val`` images in AffectNet's per-image layout under ``out``.

    Valence and arousal are drawn as the videos' latents are (``tanh(1.3 z)``, z standard normal); the expression
    is :func:`expression_of` them. Every :data:`CODED_EVERY`-th image is coded 8 (valid valence and arousal), 9 or
    10 (both -2, and no face for 10), as AffectNet has such images. Its own random stream (``demo.seed``, 1): the
    videos do not change when these counts do.
    """
    rng = np.random.default_rng([cfg.seed, 1])
    counts = {}
    for split, n in (("train", cfg.affectnet_train), ("val", cfg.affectnet_val)):
        base = out / affectnet.SPLIT_DIRS[split]
        (base / "images").mkdir(parents=True, exist_ok=True)
        (base / "annotations").mkdir(parents=True, exist_ok=True)
        va = np.tanh(1.3 * rng.standard_normal((n, 2)))
        expr = expression_of(va[:, 0], va[:, 1])
        for i in range(n):
            code = int(expr[i])
            if i % CODED_EVERY == CODED_EVERY - 1:
                code = (8, 9, 10)[(i // CODED_EVERY) % 3]
                if code != 8:
                    va[i] = affectnet.NOT_RATED
            crop = Image.fromarray(draw_still(rng, float(va[i, 0]), float(va[i, 1]), face=code != 10))
            if cfg.size != 112:
                crop = crop.resize((cfg.size, cfg.size), Image.BILINEAR)
            crop.save(base / "images" / f"{i}.jpg", quality=90)
            for suffix, value in (("exp", np.int64(code)), ("val", np.float32(va[i, 0])), ("aro", np.float32(va[i, 1]))):
                np.save(base / "annotations" / f"{i}_{suffix}.npy", value)
        counts[split] = n
    (out / "README.md").write_text(
        "Generated by `python -m pipeline demo` (pipeline/stages/demo.py, write_affectnet): AffectNet's per-image "
        "layout, drawn faces with known expression, valence and arousal.\n"
    )
    print(json.dumps({"demo_affectnet": str(out), **counts}))
