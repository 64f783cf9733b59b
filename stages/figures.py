"""DVC stage ``figures``: where each trained multistage model looks, as the paper's Figures 4 and 5.

For every dataset, ``figures.images`` test images (spread over the test split):
the input with the object box and the part boxes, the attention map over it, the
image after attention erasing, the object crop with its attention, and the part
crops; one PNG per image in ``<report.dir>/figures/``.
"""

import argparse
from pathlib import Path

import numpy as np

from vitfgvc.config import load_params
from vitfgvc.data.loader import Manifest, ManifestDataset
from vitfgvc.errors import run_main
from vitfgvc.inference import load_model_dir
from vitfgvc.viz import erase_threshold, explain_items, grid_figure, select


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args()
    params = load_params(args.params)
    out = Path(params.report.dir) / "figures"
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):
        old.unlink()
    written = 0
    for dataset in params.pipeline.datasets:
        loaded = load_model_dir(f"models/{dataset}/multistage")
        test = ManifestDataset(Manifest.read(f"data/prepared/{dataset}"), "test", loaded.input_size, train=False)
        picks = np.linspace(0, len(test) - 1, min(params.figures.images, len(test))).round().astype(int)
        images, result, titles = explain_items(loaded.model, test, picks, loaded.classes)
        for k, title in enumerate(titles):
            fig = grid_figure(images[k:k + 1], select(result, k), [title], erase_threshold=erase_threshold(loaded.cfg))
            fig.savefig(out / f"{dataset}_{k + 1}.png", dpi=params.figures.dpi)
            written += 1
    print(f"figures: {written} PNGs in {out}/")


if __name__ == "__main__":
    run_main(main)
