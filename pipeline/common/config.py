"""params.yaml sections as frozen, validated dataclasses.

Each stage loads only the sections it lists in dvc.yaml. An unknown, missing or mistyped key is a
:class:`ConfigError` whose message names the file and the dotted key (``params.yaml: train.lr: ...``), never a
silent default: a typo in an experiment's ``-S`` override must not train the wrong model.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import (
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.dataclasses import dataclass

from pipeline.common.errors import PipelineError

_STRICT = ConfigDict(extra="forbid", frozen=True, strict=False)

DEFAULT_PARAMS = Path("params.yaml")


class ConfigError(PipelineError, ValueError):
    """A params file that cannot be used; the message names the file and the key."""


# --------------------------------------------------------------------------------------------- data / demo
@dataclass(config=_STRICT)
class DataConfig:
    root: str = "data/demo"  # dataset root in the Aff-Wild2 layout (DESIGN.md)
    crops: Literal["given", "detect"] = "given"  # cropped_aligned/ shipped with the data, or written by `crop`


@dataclass(config=_STRICT)
class DemoConfig:
    seed: int = 0
    n_videos: int = Field(10, ge=8)  # the layout rules need at least 8 videos
    seconds: float = Field(24.0, gt=2.0)  # length of each generated video
    size: int = Field(112, ge=32)  # crop side in pixels, as Aff-Wild2's cropped_aligned
    affectnet_train: int = Field(600, ge=16)  # images of the generated AffectNet-layout set (data/demo/affectnet)
    affectnet_val: int = Field(160, ge=16)


@dataclass(config=_STRICT)
class FramesConfig:
    size: int = Field(48, ge=8, le=512)  # crops resized to size x size x 3 (paper: 48)
    missing: Literal["last", "zero"] = "last"  # fill for missing crops; "zero" = Su Zhang's code


@dataclass(config=_STRICT)
class SplitConfig:
    n_folds: int = Field(6, ge=2)
    scheme: Literal["official", "random"] = "official"
    seed: int = 0
    # Folds that train@<k> stages exist for (dvc.yaml foreach); a subset of range(n_folds).
    folds: tuple[int, ...] = (0, 1, 2, 3, 4, 5)

    @model_validator(mode="after")
    def _folds_in_range(self) -> "SplitConfig":
        bad = [k for k in self.folds if not 0 <= k < self.n_folds]
        if bad or not self.folds or len(set(self.folds)) != len(self.folds):
            raise ValueError(
                f"folds must be distinct values in 0..{self.n_folds - 1} (n_folds={self.n_folds}), got {list(self.folds)}"
            )
        return self


# --------------------------------------------------------------------------------------------------- faces
@dataclass(config=_STRICT)
class FacesConfig:
    # smallest face: a fraction of the frame's shorter side (< 1) or pixels (>= 1); never below 20 px
    min_face: float = Field(0.1, gt=0)
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)  # P-, R-, O-net face probabilities (FaceNet's)
    detect_every: int = Field(5, ge=1)  # full detection every k frames, O-net tracking in between (1 = every frame)
    iou: float = Field(0.3, gt=0, le=1)  # least IoU between a face and its track's last box
    max_gap: float = Field(1.0, ge=0)  # seconds a track may go without a face and continue
    min_track: float = Field(0.2, ge=0)  # seconds: shorter tracks are ignored
    backend: Literal["onnxruntime", "opencv"] = "onnxruntime"  # what runs the ONNX nets
    jpeg_quality: int = Field(95, ge=1, le=100)

    @field_validator("thresholds")
    @classmethod
    def _probabilities(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(not 0 < t < 1 for t in v):
            raise ValueError(f"thresholds must lie in (0, 1), got {list(v)}")
        return v


# ------------------------------------------------------------------------------------------------ features
@dataclass(config=_STRICT)
class WeightsConfig:
    weights: str | None = None  # path to a weights file; None = random init (loudly labelled)
    sha256: str | None = None  # expected digest of `weights`; checked when given

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v: str | None) -> str | None:
        if v is not None and (len(v) != 64 or any(c not in "0123456789abcdef" for c in v.lower())):
            raise ValueError("must be 64 hexadecimal characters")
        return None if v is None else v.lower()


@dataclass(config=_STRICT)
class IResNetConfig(WeightsConfig):
    kind: Literal["iresnet"] = "iresnet"
    pooled: bool = False  # True: store 512-d vectors instead of (512, h, w) maps
    batch: int = Field(256, ge=1)
    dtype: Literal["float16", "float32"] = "float16"


@dataclass(config=_STRICT)
class VGGishConfig(WeightsConfig):
    kind: Literal["vggish"] = "vggish"
    pca: bool = False  # apply torchvggish's PCA + quantisation postprocessing
    pca_weights: str | None = None  # vggish_pca_params-*.pth, needed when pca is true
    pca_sha256: str | None = None
    batch: int = Field(128, ge=1)
    dtype: Literal["float16", "float32"] = "float16"


@dataclass(config=_STRICT)
class MFCCConfig:
    kind: Literal["mfcc"] = "mfcc"
    n_mfcc: int = Field(13, ge=1)
    n_mels: int = Field(40, ge=1)
    window_ms: float = Field(25.0, gt=0)
    hop_ms: float = Field(10.0, gt=0)
    dtype: Literal["float16", "float32"] = "float32"


@dataclass(config=_STRICT)
class ModelFileConfig:
    """A foundation model from local files (docs/features.md): a ``save_pretrained`` folder, a timm folder or
    checkpoint file, or an ``.onnx`` file; never a hub id (nothing is downloaded). ``kind`` is in the subclasses."""

    model: str  # the local folder or file
    sha256: str | None = None  # of the weights file (for a folder: of its weights file); checked when given
    layers: tuple[int, ...] = (-1,)  # hidden states averaged over these layers (transformers kinds); ignored elsewhere
    batch: int = Field(64, ge=1)  # frames per forward pass (audio: frames whose chunks one pass computes)
    dtype: Literal["float16", "float32"] = "float16"

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v: str | None) -> str | None:
        return WeightsConfig._hex(v)

    @field_validator("layers")
    @classmethod
    def _layers(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or len(set(v)) != len(v):
            raise ValueError(f"must be a non-empty list of distinct layer indices, got {list(v)}")
        return v


@dataclass(config=_STRICT)
class AudioModelConfig(ModelFileConfig):
    """An audio model with a hidden-state sequence at a fixed rate (wav2vec2 family: 50 Hz), run on the prepared
    16 kHz track in chunks of ``chunk_seconds`` with ``context_seconds`` more on each side."""

    kind: Literal["transformers-audio", "onnx-audio"] = "transformers-audio"
    chunk_seconds: float = Field(20.0, ge=1.0)  # bounded memory for any track length
    context_seconds: float = Field(3.0, ge=0)  # audio either side of a chunk that the model sees, rows not kept


@dataclass(config=_STRICT)
class ImageModelConfig(ModelFileConfig):
    """An image model run on the prepared face crops, resized as its own preprocessing config says."""

    kind: Literal["transformers-image", "timm-image", "onnx-image"] = "transformers-image"
    pool: Literal["mean", "cls"] = "mean"  # a vector per frame: mean of the patch tokens, or the first (CLS) token
    tokens: bool = False  # True: store the (D, h, w) map of patch tokens instead (LA-SE attends over it)
    arch: str | None = None  # timm-image with a checkpoint file: its timm architecture name


PAPER_KINDS = ("iresnet", "vggish", "mfcc")
KINDS: dict[str, type] = {
    "iresnet": IResNetConfig,
    "vggish": VGGishConfig,
    "mfcc": MFCCConfig,
    "transformers-audio": AudioModelConfig,
    "onnx-audio": AudioModelConfig,
    "transformers-image": ImageModelConfig,
    "timm-image": ImageModelConfig,
    "onnx-image": ImageModelConfig,
}
FeatureConfig = IResNetConfig | VGGishConfig | MFCCConfig | AudioModelConfig | ImageModelConfig
NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")  # a store file name, a DVC stage key and a params key at once


@dataclasses.dataclass(frozen=True)
class FeaturesConfig(Mapping[str, Any]):
    """``features``: one entry per feature store (``extract@<name>``), in params order; its ``kind`` picks the
    extractor (the paper's three default to their own name). An empty section means the paper's three."""

    entries: Mapping[str, Any] = dataclasses.field(
        default_factory=lambda: {k: KINDS[k]() for k in PAPER_KINDS}
    )

    @classmethod
    def from_params(cls, values: dict[str, Any], prefix: str = "features", source: str = "params.yaml") -> "FeaturesConfig":
        """Validate every entry by its kind; errors name ``<source>: features.<name>.<key>``."""
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: {prefix}: must be a mapping, got {type(values).__name__}")
        if not values:
            return cls()
        entries = {}
        for name, raw in values.items():
            entries[name] = _feature_entry(str(name), raw or {}, f"{prefix}.{name}", source)
        return cls(entries)

    def __getitem__(self, name: str) -> Any:
        return self.entries[name]  # a KeyError, as a mapping gives: callers name the params key (cli.extract)

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __getattr__(self, name: str) -> Any:  # features.iresnet, as before the section became a mapping
        if name.startswith("__") or name == "entries":
            raise AttributeError(name)
        try:
            return self.entries[name]
        except KeyError:
            raise AttributeError(name) from None


def _feature_entry(name: str, raw: Any, prefix: str, source: str) -> Any:
    """One ``features.<name>`` entry as its kind's dataclass."""
    if not NAME.fullmatch(name):
        raise ConfigError(f"{source}: {prefix}: a feature name must be letters, digits and _ (it names a store and a stage)")
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {prefix}: must be a mapping, got {type(raw).__name__}")
    kind = raw.get("kind", name if name in PAPER_KINDS else None)
    if kind is None:
        raise ConfigError(f"{source}: {prefix}.kind: missing (one of: {', '.join(KINDS)})")
    if kind not in KINDS:
        raise ConfigError(f"{source}: {prefix}.kind: unknown kind {kind!r} (known: {', '.join(KINDS)})")
    return build(KINDS[kind], {**raw, "kind": kind}, prefix=prefix, source=source)


# ------------------------------------------------------------------------------------------------ backbone
Freeze = Literal["none", "stem", "layer1", "layer2", "layer3"]


@dataclass(config=_STRICT)
class BackboneConfig:
    """Stage ``backbone``: IResNet-50 fine-tuned on AffectNet (paper 3.1)."""

    data: str = "data/demo/affectnet"  # AffectNet folder, CSV or per-image layout (pipeline/io/affectnet.py)
    init: str | None = None  # arcface_torch backbone.pth to start from; None = random init (loudly labelled)
    sha256: str | None = None  # expected digest of `init`; checked when given
    size: int | None = Field(None, ge=16, le=512)  # input side; None = frames.size (paper: 48)
    freeze: Freeze = "none"  # train only what comes after this part; none = full fine-tune
    epochs: int = Field(20, ge=1)
    batch: int = Field(256, ge=2)
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    warmup_epochs: float = Field(1.0, ge=0)
    expression_weight: float = Field(1.0, ge=0)  # cross-entropy over the 8 expressions
    va_weight: float = Field(1.0, ge=0)  # (1 - CCC_v) + (1 - CCC_a) of the tanh head
    balance: bool = True  # weight cross-entropy by inverse class frequency (AffectNet's training set is skewed)
    augment: bool = True  # flip, small affine, colour jitter
    seed: int = 0
    workers: int = Field(0, ge=0)  # decoding processes when images are not cached (0 = main process)
    cache_gb: float = Field(4.0, ge=0)  # decode every crop once into memory below this size

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v: str | None) -> str | None:
        return WeightsConfig._hex(v)

    @model_validator(mode="after")
    def _check(self) -> "BackboneConfig":
        if self.expression_weight == 0 and self.va_weight == 0:
            raise ValueError("expression_weight and va_weight cannot both be 0")
        return self


# ------------------------------------------------------------------------------------------- model / train
@dataclass(config=_STRICT)
class ModelConfig:
    modalities: tuple[str, ...] = ("iresnet", "vggish", "mfcc")  # feature stores the model reads, in this order
    lase: bool = True  # LA-SE attention on the visual maps (paper 3.3)
    tcn: bool = True  # a TCN per modality (paper 3.4)
    transformer: bool = True  # Transformer encoder over the concatenation (paper 3.5)
    tcn_channels: int = Field(128, ge=1)
    tcn_levels: int = Field(4, ge=1)
    tcn_kernel: int = Field(5, ge=2)
    tcn_dropout: float = Field(0.1, ge=0, lt=1)
    d_model: int = Field(256, ge=8)
    heads: int = Field(4, ge=1)
    layers: int = Field(4, ge=1)
    ff_dim: int = Field(512, ge=8)
    dropout: float = Field(0.4, ge=0, lt=1)
    positions: Literal["sinusoidal", "learned"] = "sinusoidal"
    head_hidden: int = Field(64, ge=1)
    # False (paper 3.2): forward-filled crops and repeated audio rows reach the model as they are; True: every row
    # without real input (the store's mask) is set to the training mean. A modality a trial has no input for at all
    # (a video without an audio stream) is the training mean either way.
    zero_missing: bool = False

    @model_validator(mode="after")
    def _check(self) -> "ModelConfig":
        if not self.modalities or len(set(self.modalities)) != len(self.modalities):
            raise ValueError(f"modalities must be a non-empty list without repeats, got {list(self.modalities)}")
        bad = [m for m in self.modalities if not NAME.fullmatch(m)]
        if bad:
            raise ValueError(f"modalities must be names of features entries, got {bad[0]!r}")
        if self.d_model % self.heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by heads ({self.heads})")
        return self


@dataclass(config=_STRICT)
class TrainConfig:
    seed: int = 0
    window: int = Field(300, ge=2)  # frames per training window (Su Zhang: 300)
    hop: int = Field(200, ge=1)  # frames between window starts (Su Zhang: 200)
    batch: int = Field(8, ge=1)
    epochs: int = Field(30, ge=1)
    lr: float = Field(3e-4, gt=0)
    weight_decay: float = Field(1e-2, ge=0)
    warmup_epochs: int = Field(2, ge=0)
    patience: int = Field(8, ge=1)  # early stopping on validation mean CCC
    # Where the feature bank keeps each modality's rows (pipeline/training/bank.py): auto | device | pinned | mmap
    bank: Literal["auto", "device", "pinned", "mmap"] = "auto"

    @model_validator(mode="after")
    def _hop_within_window(self) -> "TrainConfig":
        if self.hop > self.window:
            raise ValueError(f"hop ({self.hop}) must not exceed window ({self.window}): frames between windows would never be seen")
        return self


@dataclass(config=_STRICT)
class PostprocessConfig:
    method: Literal["none", "moving_average", "savgol", "median"] = "none"
    window: tuple[int, int] = (1, 1)  # frames, (valence, arousal)

    @field_validator("window")
    @classmethod
    def _odd_positive(cls, v: tuple[int, int]) -> tuple[int, int]:
        if any(w < 1 for w in v):
            raise ValueError(f"windows must be >= 1, got {list(v)}")
        return v


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "demo": DemoConfig,
    "faces": FacesConfig,
    "frames": FramesConfig,
    "split": SplitConfig,
    "features": FeaturesConfig,
    "backbone": BackboneConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "postprocess": PostprocessConfig,
}

T = TypeVar("T")


def read_params(path: str | Path = DEFAULT_PARAMS) -> dict[str, Any]:
    """The raw params mapping; a missing or malformed file is a :class:`ConfigError`."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"{path}: unknown section {unknown[0]!r} (known: {', '.join(SECTIONS)})")
    return raw


def section(name: str, path: str | Path = DEFAULT_PARAMS, raw: dict[str, Any] | None = None) -> Any:
    """Load and validate one params section, e.g. ``section("train")`` -> :class:`TrainConfig`."""
    cls = SECTIONS[name]
    raw = read_params(path) if raw is None else raw
    if cls is FeaturesConfig:
        return FeaturesConfig.from_params(raw.get(name) or {}, prefix=name, source=str(path))
    return build(cls, raw.get(name) or {}, prefix=name, source=str(path))


def check_modalities(model: "ModelConfig", features: FeaturesConfig, source: str = "params.yaml") -> None:
    """Every name in ``model.modalities`` is a ``features`` entry (else a one-line :class:`ConfigError`)."""
    for m in model.modalities:
        if m not in features.entries:
            raise ConfigError(
                f"{source}: model.modalities: {m!r} has no entry in features (declared: {', '.join(features.entries)})"
            )


def build(cls: type[T], values: dict[str, Any], prefix: str, source: str = "params.yaml") -> T:
    """Validate ``values`` into ``cls``; errors name ``source`` and the dotted key."""
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: {prefix}: must be a mapping, got {type(values).__name__}")
    try:
        return cls(**values)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in (prefix, *err["loc"]) if p != "__root__")
        msg = err["msg"]
        if err["type"] == "unexpected_keyword_argument":
            msg = "unknown key"
        return _raise(f"{source}: {loc}: {msg}")
    except TypeError as e:  # pydantic passes some keyword errors through as TypeError
        return _raise(f"{source}: {prefix}: {e}")


def _raise(msg: str) -> Any:
    raise ConfigError(msg)


def as_dict(cfg: Any) -> dict[str, Any]:
    """A plain (JSON-able) dict of a config dataclass, for store attributes and metrics."""
    from dataclasses import asdict

    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(asdict(cfg))
