"""DVC stage ``download@<name>``: the dataset's original files, verified and extracted, in ``data/raw/<name>/``."""

import argparse
import time

from vitfgvc.config import load_params
from vitfgvc.data.acquire import acquire
from vitfgvc.errors import run_main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dataset", required=True, help="an entry under datasets: in the params file")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", default=None, help="default: data/raw/<dataset>")
    args = ap.parse_args()
    params = load_params(args.params)
    start = time.perf_counter()
    summary = acquire(args.dataset, params.dataset(args.dataset), params.runtime.download,
                      args.out or f"data/raw/{args.dataset}")
    images = f", {summary['labelled_images']} labelled images" if summary["labelled_images"] is not None else ""
    print(f"download@{args.dataset}: {summary['origin']}{images} ({time.perf_counter() - start:.1f}s)")


if __name__ == "__main__":
    run_main(main)
