"""``python -m pipeline bench backbone``: images/s of a ``backbone`` training step, per device and freeze setting,
and the projected time of one epoch over AffectNet's training set; one JSON line per setting.

It times the stage's own parts (:func:`pipeline.training.backbone.train_step`: augmentation, forward, both losses,
backward, AdamW) on a fixed batch already on the device, after two warm-up steps, with a device synchronisation
around the timed region; and validation forward passes the same way. The weights are the random init (speed does
not depend on them). The data path is measured apart: decoding and aligning one generated 425 x 425 JPEG with
landmarks (the CSV layout's work per image), on one core, so ``workers`` can be sized to keep the device fed.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipeline.bench.timing import calls_per_s
from pipeline.common.config import BackboneConfig
from pipeline.common.devices import amp_dtype, resolve_device
from pipeline.extractors.iresnet import iresnet50, preprocess, random_init
from pipeline.faces.stills import load_face
from pipeline.io.affectnet import N_CLASSES
from pipeline.nn.backbone import BackboneNet
from pipeline.training.augment import step_generator
from pipeline.training.backbone import make_optimizer, make_scaler, train_step

WARMUP_STEPS = 2
CPU_MAX_BATCH = 64  # a CPU step of 256 images takes long enough that the measurement would hold few steps


def time_steps(model: BackboneNet, cfg: BackboneConfig, batch: tuple, dev: torch.device, seconds: float) -> float:
    """Training images/s: steps on ``batch`` until ``seconds`` have passed (at least 3 steps)."""
    adtype = amp_dtype(dev)
    optim = make_optimizer(model, cfg)
    scaler = make_scaler(adtype)
    model.train()
    step = 0

    def one() -> None:
        nonlocal step
        train_step(model, optim, scaler, batch, step_generator(0, 0, step), cfg.lr, cfg, None, dev, adtype)
        step += 1

    return calls_per_s(one, dev, seconds, warmup=WARMUP_STEPS, sync_every=4) * len(batch[0])


@torch.inference_mode()
def time_eval(model: BackboneNet, frames: torch.Tensor, dev: torch.device, seconds: float) -> float:
    """Validation images/s: forward passes on ``frames`` (no augmentation)."""
    adtype = amp_dtype(dev)
    model.eval()

    def one() -> None:
        with torch.autocast(dev.type, dtype=adtype, enabled=adtype is not None):
            model(preprocess(frames).contiguous(memory_format=torch.channels_last))

    return calls_per_s(one, dev, seconds, warmup=1, sync_every=None) * len(frames)


def decode_rate(seconds: float = 2.0, size: int = 48) -> float:
    """Images/s on one core of :func:`load_face` on a 425 x 425 JPEG with five landmarks (decode, align, resize)."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (17, 17, 3), dtype=np.uint8)  # smooth content after upscaling: a photo-like JPEG
    lmk = np.array([[170, 190], [255, 190], [212, 240], [180, 290], [245, 290]], dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "face.jpg"
        Image.fromarray(img).resize((425, 425), Image.BICUBIC).save(path, quality=90)
        return calls_per_s(lambda: load_face(path, np.full(4, np.nan), lmk, size), min_seconds=seconds, min_calls=10,
                           warmup=0)

def run(
    cfg: BackboneConfig,
    frames_size: int,
    devices: tuple[str, ...] = (),
    size: int | None = None,
    batch: int | None = None,
    freezes: tuple[str, ...] = (),
    seconds: float = 10.0,
    images: int = 290_000,
) -> list[dict]:
    """Print (and return) one JSON line per (device, freeze)."""
    devices = devices or (("cpu", "cuda") if torch.cuda.is_available() else ("cpu",))
    size = size or cfg.size or frames_size
    per_core = decode_rate(seconds=max(0.2, seconds / 5), size=size)
    lines = []
    for name in devices:
        dev = resolve_device(name)
        b = batch or (min(cfg.batch, CPU_MAX_BATCH) if dev.type == "cpu" else cfg.batch)
        gen = torch.Generator().manual_seed(0)
        frames = torch.randint(0, 256, (b, size, size, 3), dtype=torch.uint8, generator=gen)
        labels = torch.randint(0, N_CLASSES, (b,), generator=gen), torch.rand(b, 2, generator=gen) * 2 - 1
        data = tuple(t.to(dev) for t in (frames, *labels))
        for freeze in freezes or (cfg.freeze,):
            c = dataclasses.replace(cfg, freeze=freeze)
            model = BackboneNet(random_init(iresnet50()), freeze).to(dev).to(memory_format=torch.channels_last)
            train_ips = time_steps(model, c, data, dev, seconds)
            eval_ips = time_eval(model, data[0], dev, seconds / 2)
            line = {
                "bench": "backbone",
                "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
                "size": size,
                "batch": b,
                "freeze": freeze,
                "precision": str(amp_dtype(dev) or torch.float32).replace("torch.", ""),
                "train_images_per_s": round(train_ips, 1),
                "eval_images_per_s": round(eval_ips, 1),
                "epoch_images": images,
                "epoch_projected_s": round(images / train_ips, 0),
                "epoch_projected_h": round(images / train_ips / 3600, 2),
                "decode_images_per_s_per_core": round(per_core, 1),
                "workers_to_keep_up": int(np.ceil(train_ips / per_core)),
            }
            if dev.type == "cuda":
                line["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(dev) / 2**20)
                torch.cuda.reset_peak_memory_stats(dev)
            print(json.dumps(line), flush=True)
            lines.append(line)
            del model
    return lines
