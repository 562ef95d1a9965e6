"""``python -m pipeline <stage>``: one thin command per stage.

A command loads the params sections its stage reads (the same keys dvc.yaml lists for it), turns path options into
``Path`` objects and calls ``pipeline.stages.<stage>.run``. Path defaults equal the paths in dvc.yaml, which is the
one place they are decided. Errors a user can fix (:class:`~pipeline.common.errors.PipelineError`) print one line naming
the file and the problem and exit with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from pipeline.cluster.cli import app as cluster_app
from pipeline.common import config
from pipeline.common.errors import PipelineError, user_errors
from pipeline.common.outputs import guard

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False)
bench_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Throughput benchmarks (print JSON lines).")
app.add_typer(bench_app, name="bench")
app.add_typer(cluster_app, name="cluster")  # pipeline/cluster/cli.py: stages as Slurm jobs or local processes

# options several commands share, declared once (each command still sets its own default, the path in dvc.yaml)
ParamsOpt = Annotated[Path, typer.Option("--params", help="params file to read")]
PreparedOpt = Annotated[Path, typer.Option(help="prepared-data folder")]
FeaturesOpt = Annotated[Path, typer.Option(help="folder of <name>.zarr feature stores")]
ModelsOpt = Annotated[Path, typer.Option(help="models folder with fold<k>/model.pt")]
DeviceOpt = Annotated[str, typer.Option(help="auto, cuda:auto (claim a free GPU), cpu, cuda, cuda:1 ...")]
JobsOpt = Annotated[int, typer.Option(help="processes working at once (0 = one per core)")]


def sections(params: Path, *names: str) -> list[Any]:
    """The params sections ``names`` of the file ``params`` (read once), each validated into its dataclass."""
    raw = config.read_params(params)
    return [config.section(name, params, raw) for name in names]


def parse_shard(value: str) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n``."""
    try:
        i, n = (int(x) for x in value.split("/"))
    except ValueError:
        raise typer.BadParameter(f"expected i/n, e.g. 0/4, got {value!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise typer.BadParameter(f"need 0 <= i < n, got {value!r}")
    return i, n


# ------------------------------------------------------------------------------------------------- stages
@app.command()
@user_errors
def demo(
    out: Annotated[Path, typer.Option(help="where to write the demo dataset")] = Path("data/demo"),
    crops: Annotated[bool, typer.Option(help="write cropped_aligned/ (--no-crops: a dataset for `crop` to detect)")] = True,
    params: ParamsOpt = config.DEFAULT_PARAMS,
) -> None:
    """Generate the demo dataset (Aff-Wild2 layout) from params `demo`."""
    from pipeline.stages import demo as stage

    (cfg,) = sections(params, "demo")
    with guard(out):
        stage.run(cfg, out, crops=crops)


@app.command()
@user_errors
def crop(
    out: Annotated[Path, typer.Option(help="summary to write (per trial: frames, frames with a face)")] = Path("data/crops.json"),
    jobs: JobsOpt = 0,
    params: ParamsOpt = config.DEFAULT_PARAMS,
) -> None:
    """Detect, align and track faces into <data.root>/cropped_aligned/ (params data.crops: detect)."""
    from pipeline.stages import crop as stage

    data, faces = sections(params, "data", "faces")
    with guard(out):
        stage.run(data, faces, out, jobs=jobs)


@app.command()
@user_errors
def scan(
    out: Annotated[Path, typer.Option(help="manifest to write")] = Path("data/manifest.json"),
    root: Annotated[Path | None, typer.Option(help="dataset root (default: params data.root)")] = None,
    params: ParamsOpt = config.DEFAULT_PARAMS,
) -> None:
    """Fingerprint the dataset tree (names, sizes and digests; no modification times) so `prepare` re-runs only when
    it changed."""
    from pipeline.stages import scan as stage

    with guard(out):
        stage.run(Path(root) if root else Path(sections(params, "data")[0].root), out)


@app.command()
@user_errors
def backbone(
    out: Annotated[Path, typer.Option(help="folder for backbone.pth, heads.pth, meta.json")] = Path("models/backbone"),
    metrics: Annotated[Path, typer.Option(help="validation metrics of the best epoch")] = Path("metrics/backbone.json"),
    plots: Annotated[Path, typer.Option(help="per-epoch curves (dvclive)")] = Path("metrics/backbone"),
    device: DeviceOpt = "auto",
    params: ParamsOpt = config.DEFAULT_PARAMS,
) -> None:
    """Fine-tune IResNet-50 on AffectNet (params `backbone`), the paper's visual backbone (section 3.1)."""
    from pipeline.stages import backbone as stage

    cfg, frames = sections(params, "backbone", "frames")
    with guard(out, metrics, plots):
        stage.run(cfg, frames.size, out, metrics, plots, device=device)


@app.command()
@user_errors
def prepare(
    out: PreparedOpt = Path("data/prepared"),
    jobs: JobsOpt = 0,
    params: ParamsOpt = config.DEFAULT_PARAMS,
) -> None:
    """Decode crops, labels and audio of every trial into data/prepared/."""
    from pipeline.stages import prepare as stage

    data, frames = sections(params, "data", "frames")
    with guard(out):
        stage.run(data, frames, out, jobs=jobs)


@app.command()
@user_errors
def split(
    prepared: PreparedOpt = Path("data/prepared"),
    out: Annotated[Path, typer.Option(help="folds file to write")] = Path("data/prepared/folds.json"),
    params: ParamsOpt = config.DEFAULT_PARAMS,
) -> None:
    """Cut train+validation trials into cross-validation folds."""
    from pipeline.stages import split as stage

    (cfg,) = sections(params, "split")
    with guard(out):
        stage.run(cfg, prepared / "index.json", out)


@app.command()
@user_errors
def extract(
    name: Annotated[str, typer.Argument(help="a features entry of params: iresnet, vggish, mfcc or one you declared")],
    prepared: PreparedOpt = Path("data/prepared"),
    out: Annotated[Path | None, typer.Option(help="store to write (default features/<name>.zarr)")] = None,
    shard: Annotated[str, typer.Option(help="i/n: extract every n-th bucket, starting at i")] = "0/1",
    device: DeviceOpt = "auto",
    workers: Annotated[int, typer.Option(help="processes reading batch inputs (0: a thread of this process)", min=0)] = 0,
    params: ParamsOpt = config.DEFAULT_PARAMS,
) -> None:
    """Extract the feature store of params entry features.NAME from data/prepared/."""
    from pipeline.stages import extract as stage

    (features,) = sections(params, "features")
    if name not in features:
        raise config.ConfigError(f"{params}: features.{name}: no such entry (declared: {', '.join(features)})")
    out = out or Path(f"features/{name}.zarr")
    with guard(out):
        stage.run(name, features[name], prepared, out, shard=parse_shard(shard), device=device, workers=workers)


@app.command()
@user_errors
def modalities(
    features: FeaturesOpt = Path("features"),
    out: Annotated[Path, typer.Option(help="record of the stores model.modalities names")] = Path("data/modalities.json"),
    params: ParamsOpt = config.DEFAULT_PARAMS,
) -> None:
    """Record the feature stores the fusion model reads (params model.modalities), each by its fingerprint:
    train, evaluate and predict depend on this file instead of on the stores."""
    from pipeline.stages import modalities as stage

    model, feats = sections(params, "model", "features")
    config.check_modalities(model, feats, str(params))
    with guard(out):
        stage.run(model.modalities, features, out)


@app.command()
@user_errors
def train(
    fold: Annotated[int, typer.Option(help="fold index to hold out for validation")],
    prepared: PreparedOpt = Path("data/prepared"),
    features: FeaturesOpt = Path("features"),
    models: Annotated[Path, typer.Option(help="models folder; writes models/fold<k>/")] = Path("models"),
    metrics: Annotated[Path, typer.Option(help="metrics folder; writes metrics/fold<k>.json and metrics/fold<k>/")] = Path("metrics"),
    device: DeviceOpt = "auto",
    resume: Annotated[
        bool, typer.Option("--resume", help="continue an interrupted run of the same inputs and params from its last epoch")
    ] = False,
    params: ParamsOpt = config.DEFAULT_PARAMS,
) -> None:
    """Train the fusion model on every fold but FOLD and validate on FOLD."""
    from pipeline.stages import train as stage

    model, train_cfg = sections(params, "model", "train")
    model_dir, metrics_file = models / f"fold{fold}", metrics / f"fold{fold}.json"
    with guard(model_dir, metrics_file):
        stage.run(fold, model, train_cfg, prepared=prepared, features=features, model_dir=model_dir,
                  metrics_file=metrics_file, plots_dir=metrics / f"fold{fold}", device=device, resume=resume)


@app.command()
@user_errors
def evaluate(
    models: ModelsOpt = Path("models"),
    prepared: PreparedOpt = Path("data/prepared"),
    features: FeaturesOpt = Path("features"),
    out: Annotated[Path, typer.Option(help="cross-validation summary (mean and std over folds)")] = Path("metrics/cv.json"),
    folds_out: Annotated[Path, typer.Option(help="folder of per-fold metrics, fold<k>.json")] = Path("metrics/cv_folds"),
    curves: Annotated[Path, typer.Option(help="folder of validation curves, fold<k>.png")] = Path("metrics/val_curves"),
    params: ParamsOpt = config.DEFAULT_PARAMS,
) -> None:
    """Score every fold's validation predictions, raw and smoothed, into metrics/cv.json (summary),
    metrics/cv_folds/ (per fold) and metrics/val_curves/ (a few trials per fold, drawn)."""
    from pipeline.stages import evaluate as stage

    split_cfg, post = sections(params, "split", "postprocess")
    with guard(out, folds_out, curves):
        stage.run(split_cfg, post, models, prepared, features, out, folds_out, curves)


@app.command()
@user_errors
def predict(
    models: ModelsOpt = Path("models"),
    prepared: PreparedOpt = Path("data/prepared"),
    features: FeaturesOpt = Path("features"),
    out: Annotated[Path, typer.Option(help="submission file")] = Path("predictions/test.txt"),
    device: DeviceOpt = "auto",
    params: ParamsOpt = config.DEFAULT_PARAMS,
) -> None:
    """Average the folds' models over every test trial and write the ABAW submission file."""
    from pipeline.stages import predict as stage

    split_cfg, post = sections(params, "split", "postprocess")
    with guard(out):
        stage.run(split_cfg.folds, post, models, prepared, features, out, device=device)


# ----------------------------------------------------------------------------------------------- commands
@app.command()
@user_errors
def ablation(
    report: Annotated[bool, typer.Option("--report", help="print the table from `dvc exp show` instead of queueing")] = False,
    run: Annotated[bool, typer.Option("--run", help="also start the queue (`dvc queue start`)")] = False,
    jobs: Annotated[int, typer.Option(help="queue workers with --run")] = 1,
) -> None:
    """Queue the eight LA-SE / TCN / Transformer combinations of the paper's Table 2 as DVC experiments."""
    from pipeline.commands import ablation as command

    if report:
        command.report(sys.stdout)
    else:
        command.queue(start=run, jobs=jobs)


@app.command()
@user_errors
def analyze(
    videos: Annotated[
        list[Path] | None, typer.Argument(help="video files, folders of videos, or .txt lists of them (any container FFmpeg decodes)")
    ] = None,
    models: ModelsOpt = Path("models"),
    out: Annotated[Path, typer.Option(help="folder for <stem>.csv and <stem>.png")] = Path("results"),
    all_faces: Annotated[bool, typer.Option("--all-faces", help="one CSV and PNG per face track (<stem>_face<k>)")] = False,
    device: DeviceOpt = "auto",
    jobs: Annotated[int, typer.Option(help="videos whose faces are found at once (worker processes)", min=1)] = 1,
    chunk: Annotated[int, typer.Option(help="frames per chunk of the streaming chain", min=16)] = 256,
    live: Annotated[
        str | None, typer.Option(help="analyse a live source instead: a camera index, an RTSP/HTTP URL, or - (stdin)")
    ] = None,
    csv: Annotated[str, typer.Option(help="--live: where rows go (- = stdout), flushed per row")] = "-",
    hop: Annotated[float, typer.Option(help="--live: seconds between model runs (rows wait at most this long)", min=0.04)] = 0.5,
    audio_lag: Annotated[float, typer.Option(help="--live: seconds of audio awaited past a frame before its row", min=0.0)] = 0.5,
    params: ParamsOpt = config.DEFAULT_PARAMS,
) -> None:
    """Per-frame valence and arousal of videos (or a live source) with the trained folds: <out>/<stem>.csv and .png."""
    from pipeline.commands import analyze as command

    frames, features, faces, post = sections(params, "frames", "features", "faces", "postprocess")
    if live is not None:
        if videos:
            raise PipelineError("give either videos or --live SOURCE, not both")
        command.run_live(live, models, csv, frames, features, faces, post, device=device, hop_s=hop, audio_lag_s=audio_lag)
        return
    with guard(out):
        command.run(videos or [], models, out, frames, features, faces, post, all_faces=all_faces, device=device,
                    jobs=jobs, chunk=chunk)


# ---------------------------------------------------------------------------------------------- benchmarks
@bench_app.command("extract")
@user_errors
def bench_extract(
    work: Annotated[Path, typer.Option(help="scratch folder (a demo dataset is built there if needed)")] = Path("data/bench"),
    device: DeviceOpt = "auto",
    long_minutes: Annotated[float, typer.Option(help="also measure peak RSS on one video this long (0 = skip)")] = 0.0,
    seconds: Annotated[float, typer.Option(help="length of each of the 8 generated demo videos", min=3.0)] = 8.0,
    min_model_seconds: Annotated[
        float, typer.Option(help="repeat the demo's trials until the network alone would need this long")
    ] = 20.0,
    only: Annotated[list[str] | None, typer.Option(help="measure only this extractor (repeatable)")] = None,
    workers: Annotated[int, typer.Option(help="reader processes of the stage (0: a thread)", min=0)] = 0,
    stand_ins: Annotated[
        str, typer.Option(help="also random-init stand-ins of the foundation-model kinds: none, tiny or base")
    ] = "none",
) -> None:
    """Model-alone versus whole-stage throughput per extractor, one JSON line each."""
    from pipeline.bench import extract as bench

    if stand_ins not in ("none", "tiny", "base"):
        raise typer.BadParameter(f"--stand-ins: none, tiny or base, got {stand_ins!r}")
    bench.run(work, device=device, long_minutes=long_minutes, seconds=seconds, only=tuple(only or ()),
              min_model_seconds=min_model_seconds, workers=workers, stand_ins=stand_ins)


@bench_app.command("train")
@user_errors
def bench_train(
    work: Annotated[Path, typer.Option(help="scratch folder (synthetic data is built there once)")] = Path("data/bench"),
    device: DeviceOpt = "auto",
    frames: Annotated[
        int | None, typer.Option(help="synthetic data in Aff-Wild2's shapes and trial lengths, this many frames", min=2000)
    ] = None,
    paper_size: Annotated[bool, typer.Option("--paper-size", help="the paper's model size and a batch of 16")] = False,
    steps: Annotated[int, typer.Option(help="training steps per timed pipeline call", min=2)] = 12,
) -> None:
    """Training data path, model step and whole step (windows/s, ratios, projection to Aff-Wild2), one JSON line."""
    from pipeline.bench import train as bench

    bench.run(work, device=device, frames=frames, paper_size=paper_size, steps=steps)


@bench_app.command("backbone")
@user_errors
def bench_backbone(
    device: Annotated[list[str] | None, typer.Option(help="cpu, cuda ... (repeatable; default: cpu, and cuda when present)")] = None,
    size: Annotated[int | None, typer.Option(help="input side (default: backbone.size or frames.size)")] = None,
    batch: Annotated[int | None, typer.Option(help="images per step (default: backbone.batch, at most 64 on CPU)")] = None,
    freeze: Annotated[list[str] | None, typer.Option(help="freeze setting(s) to measure (default: backbone.freeze)")] = None,
    seconds: Annotated[float, typer.Option(help="measured time per setting, after warm-up")] = 10.0,
    images: Annotated[int, typer.Option(help="training-set size the epoch time is projected for")] = 290_000,
    params: ParamsOpt = config.DEFAULT_PARAMS,
) -> None:
    """Images/s of a backbone training step per device and freeze setting, and the projected AffectNet epoch."""
    from pipeline.bench import backbone as bench

    cfg, frames = sections(params, "backbone", "frames")
    bench.run(cfg, frames.size, devices=tuple(device or ()), size=size, batch=batch, freezes=tuple(freeze or ()),
              seconds=seconds, images=images)


@bench_app.command("scan")
@user_errors
def bench_scan(
    work: Annotated[Path, typer.Option(help="scratch folder (replaced)")] = Path("data/bench-scan"),
    files: Annotated[int, typer.Option(help="crop files in the generated tree")] = 200_000,
    baseline: Annotated[bool, typer.Option(help="also time a stage that depends on the tree directly")] = False,
) -> None:
    """No-op `dvc status` / `dvc repro` time over a large crop tree, with the scan manifest."""
    from pipeline.bench import scan as bench

    bench.run(work, files=files, baseline=baseline)


@bench_app.command("count")
@user_errors
def bench_count(
    videos: Annotated[list[Path], typer.Argument(help="video files to measure")],
    repeats: Annotated[int, typer.Option(help="timed runs per method; the best is reported", min=1)] = 3,
) -> None:
    """Frame counting by demuxing packets against decoding, one JSON line per video."""
    from pipeline.bench import count as bench

    bench.run(list(videos), repeats=repeats)


@bench_app.command("analyze")
@user_errors
def bench_analyze(
    video: Annotated[Path, typer.Option(help="a real video (default: a 640x360 talking face from ../shared/realmedia)")] = Path(
        "../shared/realmedia/videos/pyfeat_WolfgangLanger_Pexels.mp4"
    ),
    work: Annotated[Path, typer.Option(help="scratch folder (synthetic models, looped videos, results)")] = Path("data/bench-analyze"),
    models: Annotated[Path | None, typer.Option(help="trained models to use (default: small synthetic ones)")] = None,
    minutes: Annotated[list[float] | None, typer.Option(help="also loop the video to this many minutes (repeatable; default 1 and 10)")] = None,
    faces: Annotated[bool, typer.Option(help="measure detection + alignment alone")] = True,
    live: Annotated[bool, typer.Option(help="measure --live latency with the video piped in at its frame rate")] = True,
    jobs: Annotated[int, typer.Option(help="analyze --jobs", min=1)] = 1,
    hop: Annotated[float, typer.Option(help="analyze --live --hop (seconds)")] = 0.5,
    device: Annotated[str, typer.Option(help="analyze --device, and where the networks are timed alone")] = "cpu",
    params: ParamsOpt = config.DEFAULT_PARAMS,
) -> None:
    """Frames/s and peak memory of analyze on a video and on 1- and 10-minute loops of it, live latency, the networks
    alone; one JSON line."""
    from pipeline.bench import analyze as bench

    bench.run(video, work, models=models, params=params, minutes=tuple(minutes if minutes is not None else (1.0, 10.0)),
              faces=faces, live=live, jobs=jobs, hop=hop, device=device)


def main() -> None:  # console-script entry point
    app()
