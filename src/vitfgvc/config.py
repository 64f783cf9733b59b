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
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, create_model,
                      field_validator, model_validator)

from .errors import UserError

DATASETS = ("cub", "dogs", "cars", "plant", "digits")
MODELS = ("baseline", "multistage")
DatasetName = Literal["cub", "dogs", "cars", "plant", "digits"]


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


class PrepareSection(Section):
    workers: PosInt = 2
    jpeg_quality: Annotated[int, _in(1, 100)] = 95
    max_rejected: Unit = 0.01


class DownloadSection(Section):
    retries: NonNegInt = 5
    backoff: NonNegFloat = 2.0
    timeout: PosFloat = 60.0
    chunk_mib: PosInt = 4
    kaggle_api: str = "https://www.kaggle.com/api/v1"
    cache_dir: str = "data/downloads"


class TrainSection(Section):
    batch_size: PosInt = 16
    eval_batch_size: PosInt = 32
    accum_steps: PosInt = 1
    epochs_frozen: NonNegInt = 2
    epochs: NonNegInt = 4
    lr_frozen: PosFloat = 3.0e-3
    lr: PosFloat = 1.0e-3
    encoder_lr_div: PosFloat = 50.0
    opt: str = "lookahead_radam"
    weight_decay: NonNegFloat = 0.01
    sched: str = "cosine"
    warmup: Unit = 0.5
    min_lr_ratio: Unit = 1.0e-4
    label_smoothing: UnitOpen = 0.1
    grad_clip: NonNegFloat = 0.0
    grad_checkpointing: bool = True
    amp: bool = True
    workers: NonNegInt = 4
    nproc: PosInt = 1
    ckpt_every: NonNegInt = 500
    deterministic: bool = False
    threads: NonNegInt = 0


def _partial(model: type[BaseModel], name: str) -> type[BaseModel]:
    """The same fields and checks as ``model``, all optional (``None`` = inherit)."""
    fields = {}
    for key, f in model.model_fields.items():
        annotated = Annotated[(f.annotation, *f.metadata)] if f.metadata else f.annotation
        fields[key] = (annotated | None, None)
    return create_model(name, __base__=Section, **fields)


TrainOverrides = _partial(TrainSection, "TrainOverrides")


class DatasetConfig(Section):
    path: str | None = Field(default=None, description="local folder with the original files or their extracted tree")
    urls: list[UrlFile] = []
    kaggle: KaggleSource | None = None
    high_res: PosInt = 448
    val_fraction: UnitOpen = 0.0
    test_fraction: UnitOpen = 0.0
    synth: SynthConfig = SynthConfig()
    train: TrainOverrides = TrainOverrides()  # type: ignore[valid-type]


class DatasetsSection(Section):
    cub: DatasetConfig
    dogs: DatasetConfig
    cars: DatasetConfig
    plant: DatasetConfig
    digits: DatasetConfig


# -------------------------------------------------------------------------- model
class ModelSection(Section):
    name: str = "vit_base_patch16_384.orig_in21k_ft_in1k"
    pretrained: bool = True
    weights: str | None = None
    img_size: PosInt = 384
    kwargs: dict[str, int | float | str | bool] = {}
    # defaults of keys added later keep the behaviour a model directory written before them was trained with
    final_norm: Literal["fresh", "pretrained"] = "pretrained"


class TransformSection(Section):
    """Standard augmentation, used by every model."""

    rrc_scale: Annotated[list[Annotated[float, _in(0, 1, lo_open=True)]], Field(min_length=2, max_length=2),
                         AfterValidator(_ordered_pair)] = [0.75, 1.0]
    hflip: Unit = 0.5
    noise: NonNegFloat = 0.0


class MultistageSection(Section):
    start_epoch: NonNegInt = 0
    object: bool = True
    parts: bool = True
    attention: Literal["rollout", "last_layer"] = "rollout"
    head_fusion: Literal["mean", "max", "min"] = "mean"
    discard_ratio: UnitOpen = 0.0
    threshold: Literal["mean", "otsu"] = "mean"
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


# ------------------------------------------------------------------ experiments
class MlflowSection(Section):
    experiment: str = "vitfgvc"


VARIANTS: dict[str, dict[str, Any]] = {
    # each variant differs from ``full`` in exactly the switch its name says
    "full": {},
    "no_erase": {"aug.erase_p": 0.0},
    "no_object": {"multistage.object": False},
    "no_parts": {"multistage.parts": False},
    "crop_aug": {"aug.crop_p": 0.5},
    "last_layer_attention": {"multistage.attention": "last_layer"},
    "otsu_threshold": {"multistage.threshold": "otsu"},
    "max_pool_parts": {"multistage.part_pool": "max"},
    "gem_pool_parts": {"multistage.part_pool": "gem"},
    "mean_part_loss": {"multistage.part_loss": "mean"},
    "parts_from_erased": {"multistage.parts_from_erased": True},
    "random_fallback": {"multistage.fallback": "random"},
}
VariantName = Literal[tuple(VARIANTS)]  # type: ignore[valid-type]


def _unique(v: list) -> list:
    dupes = sorted({x for x in v if v.count(x) > 1})
    if dupes:
        raise ValueError(f"must not repeat entries (repeated: {', '.join(dupes)})")
    return v


class PipelineSection(Section):
    datasets: Annotated[list[DatasetName], Field(min_length=1), AfterValidator(_unique)]
    equal_time: Annotated[list[DatasetName], AfterValidator(_unique)] = []


class AblationSection(Section):
    datasets: Annotated[list[DatasetName], AfterValidator(_unique)] = ["dogs"]
    variants: Annotated[list[VariantName], AfterValidator(_unique)] = list(VARIANTS)  # type: ignore[valid-type]


class FiguresSection(Section):
    images: PosInt = 4
    dpi: PosInt = 100


class ReportSection(Section):
    markdown: str = "reports/tables.md"


class Params(Section):
    seed: NonNegInt = 0
    pipeline: PipelineSection
    download: DownloadSection = DownloadSection()
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
    mlflow: MlflowSection = MlflowSection()

    @model_validator(mode="after")
    def _ablation_in_pipeline(self) -> "Params":
        for key, values in (("ablation.datasets", self.ablation.datasets),
                            ("pipeline.equal_time", self.pipeline.equal_time)):
            extra = [d for d in values if d not in self.pipeline.datasets]
            if extra:
                raise ValueError(f"{key} must be a subset of pipeline.datasets {self.pipeline.datasets} "
                                 f"(they train on prepared data), got {extra}")
        return self

    def dataset(self, name: str) -> DatasetConfig:
        return getattr(self.datasets, name)

    def run_config(self, dataset: str, model: str, variant: str | None = None) -> "RunConfig":
        """The resolved configuration of one training run."""
        if model not in MODELS:
            raise ParamsError(f"unknown model {model!r}; expected one of {', '.join(MODELS)}")
        if variant is not None and model != "multistage":
            raise ParamsError(f"variant {variant!r} only applies to the multistage model")
        ds = self.dataset(dataset)
        train = self.train.model_copy(update=ds.train.model_dump(exclude_none=True))
        data = {
            "dataset": dataset,
            "model": model,
            "variant": variant,
            "seed": self.seed,
            "high_res": ds.high_res,
            "backbone": self.model.model_dump(),
            "transform": self.transform.model_dump(),
            "train": train.model_dump(),
            "multistage": self.multistage.model_dump(),
            "aug": self.aug.model_dump(),
            "experiment": self.mlflow.experiment,
        }
        if model == "baseline":
            data["multistage"] = None
            data["aug"] = None
        if variant is not None:
            if variant not in VARIANTS:
                raise ParamsError(f"unknown variant {variant!r}; expected one of {', '.join(VARIANTS)}")
            for dotted, value in VARIANTS[variant].items():
                section, key = dotted.split(".")
                data[section][key] = value
        return _validate(RunConfig, data, source=f"run {dataset}/{model}" + (f"/{variant}" if variant else ""))


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
    experiment: str

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
