"""DVC stage ``pretrain@<source>``: the profile's encoder trained on a pretraining source (``pipeline.pretrain``).

Writes ``models/pretrain/<source>/`` (the run's model directory and ``encoder.safetensors``, which
trainings name in ``model.weights``), ``metrics/pretrain/<source>.json`` (images, classes, epochs,
seconds, FLOPs), the training record and history. With ``runtime.nproc`` > 1 it runs under torchrun
(DDP) as every training; started again after a kill, it resumes from its last checkpoint.
"""

import argparse
import sys

from vitfgvc.config import load_params
from vitfgvc.devices import run_under_torchrun
from vitfgvc.errors import UserError, run_main
from vitfgvc.pretrain import pretrain
from vitfgvc.tracking import Tracker


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", required=True, help="an entry of pipeline.pretrain (a datasets: entry)")
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args()
    params = load_params(args.params)
    if args.source not in params.pipeline.pretrain:
        raise UserError(f"--source {args.source!r}: not in pipeline.pretrain {params.pipeline.pretrain}")
    if run_under_torchrun(params.runtime, __file__, sys.argv[1:], f"pretrain-{args.source}"):
        return
    record = pretrain(params, args.source, tracker_factory=lambda: Tracker(params.runtime.mlflow_experiment))
    if record is not None:
        print(f"pretrain@{args.source}: {record['train_images']} images of {record['classes']} classes, "
              f"{record['epochs']} epochs in {record['train_seconds']:.0f} s -> {record['encoder']}")


if __name__ == "__main__":
    run_main(main)
