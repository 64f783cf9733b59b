"""DVC stage ``figures@<dataset>``: where the dataset's multistage model looks, as the paper's Figures 4 and 5.

``figures.images`` test images (spread over the test split), one PNG each in
``<report.dir>/figures/<dataset>/``: the input with the object box and the part boxes,
the attention map over it, the image after attention erasing, the object crop with its
attention, and the part crops.
"""

import argparse
from pathlib import Path

import numpy as np

from vitfgvc.config import load_params
from vitfgvc.data.loader import Manifest, ManifestDataset
from vitfgvc.errors import run_main
from vitfgvc.inference import load_model_dir
from vitfgvc.io import replacing_dir
from vitfgvc.viz import erase_threshold, explain_items, grid_figure, select


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dataset", required=True, help="an entry under datasets: in the params file")
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args()
    params = load_params(args.params)
    loaded = load_model_dir(Path("models") / args.dataset / "multistage")
    test = ManifestDataset(Manifest.read(Path("data/prepared") / args.dataset), "test", loaded.input_size,
                           train=False, transform=loaded.cfg.transform, on_device=params.runtime.augment == "device")
    picks = np.linspace(0, len(test) - 1, min(params.figures.images, len(test))).round().astype(int)
    images, result, titles = explain_items(loaded.model, test, picks, loaded.classes)
    out = Path(params.report.dir) / "figures" / args.dataset
    with replacing_dir(out) as tmp:
        for k, title in enumerate(titles):
            fig = grid_figure(images[k:k + 1], select(result, k), [title],
                              erase_threshold=erase_threshold(loaded.cfg))
            fig.savefig(tmp / f"{k + 1}.png", dpi=params.figures.dpi)
    print(f"figures@{args.dataset}: {len(titles)} PNGs in {out}/")


if __name__ == "__main__":
    run_main(main)
