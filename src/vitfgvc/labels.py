"""The one table of the multistage model's stages, as every output (CLI, tables, figures) names them."""

from __future__ import annotations

from typing import NamedTuple


class Stage(NamedTuple):
    short: str  # in column heads: "a (full image)"
    long: str   # in table rows: "Ours, stage a (full image)"


STAGES: dict[str, Stage] = {
    "a": Stage("full image", "full image"),
    "b": Stage("object", "object crop"),
    "c": Stage("parts", "part crops, mean of the part logits"),
    "combined": Stage("combined", "mean of the stage probabilities"),
}
PER_STAGE = ("a", "b", "c")  # the stages that have their own logits; "combined" averages their probabilities


def column(stage: str) -> str:
    """``"a (full image)"``; ``"combined"``."""
    return stage if stage == "combined" else f"{stage} ({STAGES[stage].short})"


def row(stage: str) -> str:
    """``"Ours, stage a (full image)"``; ``"Ours, combined (mean of the stage probabilities)"``."""
    name = "combined" if stage == "combined" else f"stage {stage}"
    return f"Ours, {name} ({STAGES[stage].long})"


def metric(stage: str) -> str:
    """The metrics key of a stage's accuracy: ``accuracy_a``; ``accuracy`` for the combined prediction."""
    return "accuracy" if stage == "combined" else f"accuracy_{stage}"
