"""DVC stage ``prepare@<name>``: decoded, resized images, the manifest and the splits in ``data/prepared/<name>/``."""

import argparse
import time

from vitfgvc.config import load_params
from vitfgvc.data.prepare import prepare
from vitfgvc.errors import run_main
from vitfgvc.io import write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dataset", required=True, help="an entry under datasets: in the params file")
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args()
    params = load_params(args.params)
    start = time.perf_counter()
    summary = prepare(args.dataset, params, f"data/raw/{args.dataset}", f"data/prepared/{args.dataset}")
    seconds = time.perf_counter() - start
    write_json(f"metrics/prepare/{args.dataset}.json", summary)
    print(f"prepare@{args.dataset}: {summary['images']} images ({summary['train']} train, {summary['val']} val, "
          f"{summary['test']} test), {summary['classes']} classes, {summary['rejected']} rejected"
          + (f", {summary['duplicates']} duplicate files left out (see rejected.csv)" if summary.get("duplicates")
             else "") + "; "
          f"{seconds:.1f}s, {(summary['images'] + summary['rejected']) / seconds:.0f} images/s")


if __name__ == "__main__":
    run_main(main)
