"""The one typed schema of ``params.yaml`` (and of every profile beside it).

Every stage calls :func:`load_params` before doing any work. An unknown key, a
wrong type or an out-of-range value raises :class:`ParamsError` whose message
names the key, the value and what is allowed, e.g.
``params.yaml: aug.erase_p must be in [0, 1], got 1.5``.

:meth:`Params.run_config` merges the global sections with a dataset's overrides
and an ablation variant into the :class:`RunConfig` a training reads; that
resolved config is what a model directory stores next to its weights.
"""

from __future__ import annotations

import copy
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

import yaml
from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, create_model,
                      field_validator, model_validator)

from .errors import UserError

from .data.registry import NAMED, SPECS, DatasetSpec, FormatOptions, spec

MODELS = ("baseline", "multistage")
# A dataset entry's name: any, for a user's own data; the named ones (data/datasets.py, the one place a
# format is declared) read their own format by default. No '-': stage names join dataset and run with it.
DatasetName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]


class ParamsError(UserError, ValueError):
    """Invalid parameters; the message lists every problem, one per line."""


def _in(lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False):
    def check(v: float) -> float:
        if (v <= lo if lo_open else v < lo) or (v >= hi if hi_open else v > hi):
            if hi == float("inf"):
                raise ValueError(f"must be {'>' if lo_open else '>='} {lo:g}")
            left = "(" if lo_open else "["
            right = ")" if hi_open else "]"
            raise ValueError(f"must be in {left}{lo:g}, {hi:g}{right}")
        return v

    return AfterValidator(check)


def _host_port(v: str) -> str:
    host, sep, port = v.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("must be host:port (a port of 1-65535 on a host every node reaches)")
    return v


def _ordered_pair(v: list[float]) -> list[float]:
    if v[0] > v[1]:
        raise ValueError("must be [low, high] with low <= high")
    return v


Unit = Annotated[float, _in(0, 1)]
UnitOpen = Annotated[float, _in(0, 1, hi_open=True)]
PosFloat = Annotated[float, _in(0, float("inf"), lo_open=True)]
NonNegFloat = Annotated[float, _in(0, float("inf"))]
PosInt = Annotated[int, _in(1, float("inf"))]
NonNegInt = Annotated[int, _in(0, float("inf"))]
UnitPair = Annotated[list[Unit], Field(min_length=2, max_length=2), AfterValidator(_ordered_pair)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# --------------------------------------------------------------------------- data
class UrlFile(Section):
    """One file of an HTTP(S) source."""

    url: str
    file: str = Field(description="name the file is saved under (the dataset's original name)")
    sha256: str | None = None
    md5: str | None = None
    size: PosInt | None = None


class KaggleSource(Section):
    """A Kaggle competition or dataset, downloaded through Kaggle's public API."""

    competition: str | None = None
    dataset: str | None = Field(default=None, description="owner/name")
    file: str | None = Field(default=None, description="name to save the archive under")
    sha256: str | None = None
    md5: str | None = None


class SynthConfig(Section):
    """How the ``digits`` canvases are drawn (ignored by the other datasets)."""

    train: PosInt = 6000
    test: PosInt = 1000
    test_source_fraction: Annotated[float, _in(0, 1, lo_open=True, hi_open=True)] = 0.3
    digit_size: Annotated[list[PosInt], Field(min_length=2, max_length=2)] = [40, 64]
    clutter: NonNegInt = 8
    clutter_size: Annotated[list[PosInt], Field(min_length=2, max_length=2)] = [12, 24]
    noise: NonNegFloat = 0.0


class FractalConfig(Section):
    """How the ``fractals`` categories are drawn (format fractals, a pretraining source; ignored by the others)."""

    classes: Annotated[int, _in(2, float("inf"))] = 40
    train: PosInt = 100          # training images per category (val_fraction of them hold out for validation)
    test: PosInt = 5             # test images per category (a pretraining is never tested: kept small)
    maps: Annotated[list[PosInt], Field(min_length=2, max_length=2)] = [2, 4]   # affine maps per code, inclusive
    fill_rate: UnitOpen = 0.1    # a code is a category when its points fill this share of a 32x32 grid
    variation: Annotated[float, _in(0, 1, hi_open=True)] = 0.2   # an instance scales one parameter by 1 +- this
    points: Annotated[int, _in(100, float("inf"))] = 10000     # chaos-game points per image
    object_size: Annotated[list[PosInt], Field(min_length=2, max_length=2)] = [48, 112]  # side in canvas pixels


class PrepareSection(Section):
    jpeg_quality: Annotated[int, _in(1, 100)] = 95
    max_rejected: Unit = 0.01
    # PIL's limit, as vitfgvc.images.MAX_PIXELS (not imported: every stage reads this schema, few decode images)
    max_pixels: PosInt = Field(default=89_478_485, description="an image declaring more pixels is rejected before "
                               "it is decoded (a decompression bomb); PIL's default limit")


class DownloadSection(Section):
    """How files are fetched (transport only: the files themselves are verified against their checksums)."""

    retries: NonNegInt = 5
    backoff: NonNegFloat = 2.0
    timeout: PosFloat = 60.0
    chunk_mib: PosInt = 4
    kaggle_api: str = "https://www.kaggle.com/api/v1"
    cache_dir: str = "data/downloads"
    max_unpacked_gib: PosFloat = Field(default=200.0, description="an archive unpacking to more is refused")
    max_unpack_ratio: PosFloat = Field(default=100.0, description="an archive unpacking to more than this many "
                                       "times its size (past 64 MiB) is refused: a zip bomb")


# fastai's one-cycle (torch's OneCycleLR), or a per-step timm scheduler (not "plateau": it needs a metric)
Schedule = Literal["one_cycle", "cosine", "tanh", "step", "multistep", "poly", "constant", "wsd", "rsqrt"]


class TrainSection(Section):
    batch_size: PosInt = 16
    epochs_frozen: NonNegInt = 2
    epochs: NonNegInt = 4
    lr_frozen: PosFloat = 3.0e-3
    lr: PosFloat = 1.0e-3
    epochs_final: NonNegInt = Field(default=0, description="a third phase, all layers at lr_final (0 = none)")
    lr_final: PosFloat = 1.0e-4
    encoder_lr_div: PosFloat = 50.0
    frozen_norms: Literal["final", "all"] = Field(
        default="final", description="what trains besides the head in the frozen phase: the final norm, or every "
        "norm layer of the encoder (fastai's train_bn as written; the original's reentrant checkpointing cut the "
        "gradient to the block norms, so it trained the final norm only)")
    # optimiser and schedule (vitfgvc.optim): the original's fastai `ranger` + `fit_one_cycle` by default
    opt: str = Field(default="ranger", description="'ranger' (Lookahead over RAdam) or a timm optimiser name")
    betas: Annotated[list[UnitOpen], Field(min_length=2, max_length=2)] = [0.95, 0.99]
    eps: PosFloat = 1.0e-6
    weight_decay: NonNegFloat = 0.01
    lookahead_k: PosInt = 6
    lookahead_alpha: Unit = 0.5
    sched: Schedule = "one_cycle"
    warmup: Unit = 0.5
    div: PosFloat = 25.0
    div_final: PosFloat = 1.0e5
    moms: Annotated[list[UnitOpen], Field(min_length=2, max_length=2)] = [0.95, 0.85]
    min_lr_ratio: Unit = 1.0e-4
    label_smoothing: UnitOpen = 0.1
    grad_clip: NonNegFloat = 0.0
    eval_every: NonNegInt = Field(
        default=1, description="validate every this many epochs, and before the first step, after the first epoch "
        "and after the last one (0 = never); only where the dataset has a validation split (val_fraction > 0)")
    amp: bool = True
    deterministic: bool = False

    @field_validator("warmup")
    @classmethod
    def _one_cycle_warms_up(cls, v: float, info: ValidationInfo) -> float:
        if v == 0 and info.data.get("sched") == "one_cycle":
            raise ValueError("must be > 0 with sched one_cycle (the fraction of each phase's steps before the peak)")
        return v


def _partial(model: type[BaseModel], name: str) -> type[BaseModel]:
    """The same fields and checks as ``model``, all optional (``None`` = inherit)."""
    fields = {}
    for key, f in model.model_fields.items():
        annotated = Annotated[(f.annotation, *f.metadata)] if f.metadata else f.annotation
        fields[key] = (annotated | None, None)
    return create_model(name, __base__=Section, **fields)


PosPair = Annotated[list[PosFloat], Field(min_length=2, max_length=2), AfterValidator(_ordered_pair)]


class TransformSection(Section):
    """The standard views of every model: fastai's ``RandomResizedCrop`` + ``aug_transforms()``.

    Training: a random resized crop of the stored image to ``high_res``, then per sample a
    flip, one affine/perspective resampling (rotation, zoom, warp; reflection padding) and
    lighting (brightness, contrast in logit space), then normalisation and optional noise.
    Evaluation: ``eval_view``. See ``vitfgvc.data.per_item`` for the exact draws.
    """

    rrc_scale: Annotated[list[Annotated[float, _in(0, 1, lo_open=True)]], Field(min_length=2, max_length=2),
                         AfterValidator(_ordered_pair)] = Field(
        default=[0.75, 1.0], description="area of the random resized crop, fraction of the image")
    rrc_ratio: PosPair = Field(default=[3 / 4, 4 / 3], description="aspect (w/h) of the crop, in the image's pixels")
    hflip: Unit = Field(default=0.5, description="probability of a horizontal flip")
    affine_p: Unit = Field(default=0.75, description="probability of each of rotation, zoom, warp x, warp y")
    max_rotate: Annotated[float, _in(0, 180)] = Field(default=10.0, description="degrees, drawn in [-max, max]")
    zoom: PosPair = Field(default=[1.0, 1.1], description="zoom factor range (>1 zooms in) at a random centre")
    max_warp: Annotated[float, _in(0, 1, hi_open=True)] = Field(
        default=0.2, description="perspective warp magnitude, drawn in [-max, max] per axis")
    lighting_p: Unit = Field(default=0.75, description="probability of each of brightness, contrast")
    max_lighting: Annotated[float, _in(0, 1, hi_open=True)] = Field(
        default=0.2, description="brightness in 0.5*(1 +- max) and contrast in (1-max)^(+-1), logit space")
    noise: NonNegFloat = Field(default=0.0, description="std of additive Gaussian noise on the normalised image")
    eval_view: Literal["center_crop", "squash"] = Field(
        default="center_crop", description="center_crop: squash to size + extra, centre-crop size; squash: "
                                           "the whole image squashed to size")
    eval_extra: NonNegFloat = Field(
        default=0.14, description="center_crop's margin: extra = ceil(size * eval_extra / 8) * 8 px")


TrainOverrides = _partial(TrainSection, "TrainOverrides")
TransformOverrides = _partial(TransformSection, "TransformOverrides")


class DatasetConfig(Section):
    format: str | None = Field(default=None, description="how its files are laid out: a named dataset's (cub, dogs, "
                               "cars, plant, aircraft, digits; default: the entry's name) or imagefolder | csv")
    options: dict[str, str] = Field(default={}, description="the keys only some formats read: aircraft: level "
                                    "(variant | family | manufacturer); csv: annotations (the CSV's file name)")
    path: str | None = Field(default=None, description="local folder with the original files or their extracted tree")
    urls: list[UrlFile] = []
    kaggle: KaggleSource | None = None
    high_res: PosInt = Field(default=448, description="side of the square views (training and evaluation) and "
                             "the most the shorter side of a stored image keeps; objects and parts are cut from it")
    val_fraction: UnitOpen = 0.0
    test_fraction: UnitOpen = 0.0
    synth: SynthConfig = SynthConfig()
    fractal: FractalConfig = FractalConfig()
    train: TrainOverrides = TrainOverrides()  # type: ignore[valid-type]
    transform: TransformOverrides = TransformOverrides()  # type: ignore[valid-type]


DatasetsSection = dict[DatasetName, DatasetConfig]


# -------------------------------------------------------------------------- model
class ModelSection(Section):
    name: str = "vit_base_patch16_384.orig_in21k_ft_in1k"
    pretrained: bool = True
    weights: str | None = None
    img_size: PosInt = 384
    kwargs: dict[str, int | float | str | bool] = {}
    # defaults of keys added later keep the behaviour a model directory written before them was trained with
    final_norm: Literal["fresh", "pretrained"] = "pretrained"




class MultistageSection(Section):
    start_epoch: NonNegInt = 0
    object: bool = True
    parts: bool = True
    attention: Literal["rollout", "last_layer"] = "rollout"
    head_fusion: Literal["mean", "max", "min"] = "mean"
    discard_ratio: UnitOpen = 0.0
    threshold: Literal["mean", "otsu", "mean_std"] = "mean"
    threshold_k: NonNegFloat = Field(default=1.0, description="mean_std: the threshold is mean + k * std of the map")
    map_size: PosInt = 448
    closing: NonNegInt = 3
    closing_footprint: Literal["square", "cross"] = "square"
    min_area: Unit = 0.0
    small_components: Literal["fallback", "skip"] = "fallback"
    fallback: Literal["full", "random"] = "full"
    num_parts: PosInt = 2
    part_window: Annotated[float, _in(0, 1, lo_open=True)] = 1 / 3
    part_iou: Unit = 0.1
    part_pool: Literal["avg", "max", "gem"] = "avg"
    gem_p: PosFloat = 3.0
    part_grid: PosInt = 128
    part_loss: Literal["sum", "mean"] = "sum"
    parts_from_erased: bool = False
    object_size: PosInt | None = Field(default=None, description="input side of the object crop (None = model.img_size)")
    part_size: PosInt | None = Field(default=None, description="input side of the part crops (None = model.img_size)")

    @field_validator("closing_footprint")
    @classmethod
    def _odd_cross(cls, v: str, info: ValidationInfo) -> str:
        closing = info.data.get("closing", 0)
        if v == "cross" and closing > 1 and closing % 2 == 0:
            raise ValueError(f"must be square with an even multistage.closing ({closing}): a cross needs a centre "
                             "row and column")
        return v


class AugSection(Section):
    """Attention-guided augmentation (multistage training only)."""

    erase_p: Unit = 0.5
    erase_threshold: Unit = 0.7
    crop_p: Unit = 0.0
    crop_threshold: UnitPair = [0.4, 0.6]
    crop_pad: Annotated[float, _in(0, 1)] = 0.1


# ------------------------------------------------------------------ runtime
class RuntimeSection(Section):
    """How to run, never what is computed: no stage declares these keys as params, so changing
    one re-runs nothing, and a training resumed with other values continues its checkpoint."""

    # where the training views' flip, rotation, zoom, warp and lighting run: batched on the training device after
    # the loader (vitfgvc.data.on_device), or per item in the loader's workers; the same views to float rounding
    augment: Literal["device", "per_sample"] = "device"
    workers: NonNegInt = 4
    threads: NonNegInt = 0
    nproc: PosInt = 1
    # one training over several machines: nnodes > 1 runs each training stage under torchrun's c10d rendezvous at
    # rdzv_endpoint (host:port, reachable from every node); node_rank null lets the rendezvous number the nodes
    nnodes: PosInt = 1
    node_rank: NonNegInt | None = None
    rdzv_endpoint: Annotated[str, AfterValidator(_host_port)] | None = None
    accum_steps: PosInt = 1
    grad_checkpointing: bool = True
    eval_batch_size: PosInt = 32
    ckpt_every: NonNegInt = 500
    prepare_workers: PosInt = 2
    mlflow_experiment: str = "vitfgvc"
    download: DownloadSection = DownloadSection()
    # A rehearsal (benchmarks/profiles.py rehearsal), never a result: each training phase stops after this many
    # optimiser steps, and evaluation after this many test images (0 = off). The outputs say they were limited.
    limit_steps: NonNegInt = 0
    limit_eval: NonNegInt = 0


# ------------------------------------------------------------------ experiments
# The sections of a run config an ablation variant may change.
VARIANT_SECTIONS = ("model", "transform", "train", "multistage", "aug")
VariantName = Annotated[str, Field(pattern=r"^[a-z0-9_]+$")]


def _unique(v: list) -> list:
    dupes = sorted({x for x in v if v.count(x) > 1})
    if dupes:
        raise ValueError(f"must not repeat entries (repeated: {', '.join(dupes)})")
    return v


ENCODER_FROM_HUB = "src/vitfgvc/model.py"
PRETRAIN_DIR = "models/pretrain"


class PipelineSection(Section):
    datasets: Annotated[list[DatasetName], Field(min_length=1), AfterValidator(_unique)]
    equal_time: Annotated[list[DatasetName], AfterValidator(_unique)] = []
    # sources a pretrain@<source> stage trains the encoder on (dvc.yaml), and the path every training depends on
    # for its starting weights: model.py (timm's hub, or none) or a pretraining's folder models/pretrain/<source>
    pretrain: Annotated[list[DatasetName], AfterValidator(_unique)] = []
    encoder: str = ENCODER_FROM_HUB


def _variants(v: dict) -> dict:
    for name, overrides in v.items():
        if name == "full":
            raise ValueError("must not define 'full': the unchanged model is the multistage run itself")
        if not overrides:
            raise ValueError(f"{name} changes nothing (give it the keys it changes, e.g. {{aug: {{erase_p: 0.0}}}})")
        bad = sorted(set(overrides) - set(VARIANT_SECTIONS))
        if bad:
            raise ValueError(f"{name} may only change the sections {', '.join(VARIANT_SECTIONS)}, got {bad}")
    return v


class AblationSection(Section):
    """Variants of the multistage model: each is ``{section: {key: value}}``, the keys it changes."""

    datasets: Annotated[list[DatasetName], AfterValidator(_unique)] = ["dogs"]
    variants: Annotated[dict[VariantName, dict[str, dict[str, Any]]], AfterValidator(_variants)] = {}


class FiguresSection(Section):
    images: PosInt = 4
    dpi: PosInt = 100


class ReportSection(Section):
    dir: str = Field(default="reports", description="the profile's own report folder: tables.md, tables/, figures/")


class Params(Section):
    seed: NonNegInt = 0
    pipeline: PipelineSection
    prepare: PrepareSection = PrepareSection()
    datasets: DatasetsSection
    model: ModelSection = ModelSection()
    transform: TransformSection = TransformSection()
    train: TrainSection = TrainSection()
    multistage: MultistageSection = MultistageSection()
    aug: AugSection = AugSection()
    ablation: AblationSection = AblationSection()
    figures: FiguresSection = FiguresSection()
    report: ReportSection = ReportSection()
    runtime: RuntimeSection = RuntimeSection()

    @model_validator(mode="before")
    @classmethod
    def _named_formats(cls, data: Any) -> Any:
        """``datasets.cub`` reads format cub unless it says otherwise."""
        if isinstance(data, dict) and isinstance(data.get("datasets"), dict):
            data = {**data, "datasets": {
                name: ({**entry, "format": name} if isinstance(entry, dict) and entry.get("format") is None
                       and name in NAMED else entry) for name, entry in data["datasets"].items()}}
        return data

    @model_validator(mode="after")
    def _nodes(self) -> "Params":
        rt = self.runtime
        if rt.nnodes > 1 and rt.rdzv_endpoint is None:
            raise ValueError(f"runtime.nnodes is {rt.nnodes}: runtime.rdzv_endpoint (host:port of the rendezvous, "
                             "reachable from every node) is required")
        if rt.node_rank is not None and rt.node_rank >= rt.nnodes:
            raise ValueError(f"runtime.node_rank must be below runtime.nnodes ({rt.nnodes}), got {rt.node_rank}")
        return self

    @model_validator(mode="after")
    def _ablation_in_pipeline(self) -> "Params":
        for name, entry in self.datasets.items():
            if entry.format is None:
                raise ValueError(f"datasets.{name}.format is required (a dataset not named {', '.join(NAMED)} "
                                 f"says how its files are laid out: imagefolder or csv)")
            if entry.format not in SPECS:
                raise ValueError(f"datasets.{name}.format must be one of {', '.join(SPECS)}, got {entry.format!r}")
            if name in NAMED and entry.format != name:
                raise ValueError(f"datasets.{name} is the built-in {spec(name).title} (format {name}), got format "
                                 f"{entry.format!r}; give your own dataset another name")
            try:
                FormatOptions.of(entry.format, entry.options)
            except ValueError as exc:
                raise ValueError(f"datasets.{name}.options: {exc}") from None
        missing = [d for d in self.pipeline.datasets if d not in self.datasets]
        if missing:
            raise ValueError(f"pipeline.datasets names {missing}, which have no entry under datasets: "
                             f"(entries: {', '.join(self.datasets)})")
        for key, values in (("ablation.datasets", self.ablation.datasets),
                            ("pipeline.equal_time", self.pipeline.equal_time)):
            extra = [d for d in values if d not in self.pipeline.datasets]
            if extra:
                raise ValueError(f"{key} must be a subset of pipeline.datasets {self.pipeline.datasets} "
                                 f"(they train on prepared data), got {extra}")
        for dataset in self.ablation.datasets:  # every variant resolves to a valid run that differs from multistage
            base = self.run_config(dataset, "multistage").model_dump()
            for variant in self.ablation.variants:
                cfg = self.run_config(dataset, "multistage", variant).model_dump()
                if {k: v for k, v in cfg.items() if k != "variant"} == {k: v for k, v in base.items()
                                                                        if k != "variant"}:
                    raise ValueError(f"ablation.variants.{variant} changes nothing on {dataset}: the multistage "
                                     "run already has these values")
        return self

    @model_validator(mode="after")
    def _pretraining(self) -> "Params":
        pipe, weights = self.pipeline, self.model.weights
        for name in pipe.pretrain:
            if name not in self.datasets:
                raise ValueError(f"pipeline.pretrain names {name!r}, which has no entry under datasets: "
                                 f"(entries: {', '.join(self.datasets)})")
            if not spec(self.datasets[name].format).pretraining:
                raise ValueError(f"pipeline.pretrain: datasets.{name} has format {self.datasets[name].format!r}; a "
                                 f"pretraining source is one of {', '.join(s for s in SPECS if SPECS[s].pretraining)}")
        for name in pipe.datasets:
            if spec(self.datasets[name].format).pretraining:
                raise ValueError(f"pipeline.datasets names {name!r}, a pretraining source (format "
                                 f"{self.datasets[name].format}): list it under pipeline.pretrain")
        parts = PurePosixPath(weights).parts if weights else ()
        from_stage = parts[:2] == tuple(PRETRAIN_DIR.split("/"))
        if from_stage:
            if len(parts) < 4 or parts[2] not in pipe.pretrain:
                raise ValueError(f"model.weights {weights!r} is a pretraining's output: expected "
                                 f"{PRETRAIN_DIR}/<source>/<file> with <source> in pipeline.pretrain {pipe.pretrain}")
            expected = f"{PRETRAIN_DIR}/{parts[2]}"
        else:
            expected = weights or ENCODER_FROM_HUB
        if pipe.encoder != expected:
            raise ValueError(f"pipeline.encoder must be {expected!r} (what the trainings' encoder starts from, with "
                             f"model.weights {weights!r}), got {pipe.encoder!r}")
        return self

    def dataset(self, name: str) -> DatasetConfig:
        try:
            return self.datasets[name]
        except KeyError:
            raise ParamsError(f"no dataset {name!r} under datasets: (entries: {', '.join(self.datasets)})") from None

    def spec(self, name: str) -> DatasetSpec:
        """The format spec dataset ``name`` reads."""
        return spec(self.dataset(name).format)

    def options(self, name: str) -> FormatOptions:
        cfg = self.dataset(name)
        return FormatOptions.of(cfg.format, cfg.options)

    def run_config(self, dataset: str, model: str, variant: str | None = None) -> "RunConfig":
        """The resolved configuration of one training run."""
        if model not in MODELS:
            raise ParamsError(f"unknown model {model!r}; expected one of {', '.join(MODELS)}")
        if variant is not None and model != "multistage":
            raise ParamsError(f"variant {variant!r} only applies to the multistage model")
        ds = self.dataset(dataset)
        train = self.train.model_copy(update=ds.train.model_dump(exclude_none=True))
        if variant is not None and variant not in self.ablation.variants:
            raise ParamsError(f"unknown variant {variant!r}; ablation.variants has "
                              f"{', '.join(self.ablation.variants) or 'none'}")
        data = {
            "dataset": dataset,
            "model": model,
            "variant": variant,
            "seed": self.seed,
            "high_res": ds.high_res,
            "backbone": self.model.model_dump(),
            "transform": self.transform.model_copy(update=ds.transform.model_dump(exclude_none=True)).model_dump(),
            "train": train.model_dump(),
            "multistage": self.multistage.model_dump(),
            "aug": self.aug.model_dump(),
        }
        if model == "baseline":
            data["multistage"] = None
            data["aug"] = None
        source = f"run {dataset}/{model}"
        if variant is not None:
            source = f"ablation.variants.{variant}"
            for section, keys in self.ablation.variants[variant].items():
                if not isinstance(keys, dict):
                    raise ParamsError(f"{source}.{section} must be a mapping of keys to values, got {keys!r}")
                key = "backbone" if section == "model" else section  # the run config's name for model:
                data[key] = {**data[key], **keys}
        return _validate(RunConfig, data, source=source)


class RunConfig(Section):
    """Everything one training run reads; stored as ``config.yaml`` in the model directory."""

    dataset: DatasetName
    model: Literal["baseline", "multistage"]
    variant: str | None = None
    seed: NonNegInt
    high_res: PosInt
    backbone: ModelSection
    transform: TransformSection
    train: TrainSection
    multistage: MultistageSection | None
    aug: AugSection | None

    @property
    def run_name(self) -> str:
        return "/".join(x for x in (self.dataset, self.model, self.variant) if x)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "RunConfig":
        return _validate(cls, _read_yaml(Path(path)), source=str(path))


# ------------------------------------------------------------------------ loading
def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None


def _describe(err: dict) -> str:
    key = ".".join(str(p) for p in err["loc"]) or "<top level>"
    kind = err["type"]
    value = err.get("input")
    if kind == "missing":
        return f"{key} is required but missing"
    if kind == "extra_forbidden":
        return f"{key} is not a known key (check the spelling; see params.yaml for every key)"
    if kind == "value_error":
        msg = str(err["ctx"]["error"])
        if not err["loc"]:  # a check across sections names its keys itself
            return msg
    elif kind == "literal_error":
        msg = f"must be one of {err['ctx']['expected']}"
    elif kind == "string_pattern_mismatch":
        msg = f"must match the pattern {err['ctx']['pattern']} (lower-case letters, digits and _)"
    else:
        msg = err["msg"].replace("Input should be", "must be").replace("Value should", "must")
    text = f"{key} {msg}, got {value!r}"
    if isinstance(value, str) and kind in ("float_type", "int_type"):
        try:
            float(value)
            text += " (YAML reads '1e-3' as text: write 1.0e-3)"
        except ValueError:
            pass
    return text


def _validate(model: type[BaseModel], data: Any, source: str):
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        lines = [_describe(e) for e in exc.errors()]
        raise ParamsError("\n".join(f"{source}: {line}" for line in lines)) from None


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate a params file; raise :class:`ParamsError` naming each bad key."""
    path = Path(path)
    data = _read_yaml(path)
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    return _validate(Params, data, source=str(path))


def flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists are kept as values)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = copy.deepcopy(value)
    return out
