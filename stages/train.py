"""DVC stages ``baseline@<dataset>``, ``multistage@<dataset>`` and ``ablate@<dataset>-<variant>``.

Trains one model, evaluates its final epoch on the test split and writes
``models/<dataset>/<name>/``, ``metrics/<dataset>/<name>.json`` and
``metrics/<dataset>/<name>_history.csv`` (``<name>`` is the model, or
``ablation/<variant>``); the run is logged to MLflow. With ``train.nproc`` > 1
the script runs itself under torchrun (DDP); started again after a kill, it
resumes from its last checkpoint.
"""

import argparse
import json
import os
import sys
from pathlib import Path

from vitfgvc.config import DATASETS, MODELS, VARIANTS, load_params
from vitfgvc.errors import UserError, run_main


def read_metrics(path: str, model: str) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{path} not found: the {model} stage must run first") from None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True, choices=DATASETS)
    ap.add_argument("--model", required=True, choices=MODELS)
    ap.add_argument("--variant", choices=list(VARIANTS), help="an ablation variant of the multistage model")
    ap.add_argument("--equal-time", action="store_true",
                    help="the baseline, trained as long (wall clock) as the multistage model took")
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args()
    params = load_params(args.params)
    cfg = params.run_config(args.dataset, args.model, args.variant)
    if args.equal_time:
        from vitfgvc.training import equal_time_config

        if args.model != "baseline":
            ap.error("--equal-time is for the baseline")
        cfg = equal_time_config(cfg, *(read_metrics(f"metrics/{args.dataset}/{m}.json", m)
                                       for m in ("multistage", "baseline")))
    if cfg.train.nproc > 1 and "LOCAL_RANK" not in os.environ:
        from torch.distributed.run import main as torchrun

        torchrun(["--standalone", f"--nproc-per-node={cfg.train.nproc}", __file__, *sys.argv[1:]])
        return

    from vitfgvc.tracking import Tracker
    from vitfgvc.training import RunPaths, train

    if args.equal_time:
        name, stage = "baseline_equal_time", f"baseline_equal_time@{args.dataset}"
    elif args.variant:
        name, stage = f"ablation/{args.variant}", f"ablate@{args.dataset}-{args.variant}"
    else:
        name, stage = args.model, f"{args.model}@{args.dataset}"
    result = train(cfg, RunPaths.for_run(args.dataset, name), stage=stage,
                   tracker_factory=lambda: Tracker(cfg.experiment))
    if result is not None:
        stages = ", ".join(f"{k[-1]} {result[k]:.2f}" for k in ("accuracy_a", "accuracy_b", "accuracy_c")
                           if result.get(k) is not None)
        print(f"{stage}: test accuracy {result['accuracy']:.2f}% ({result['images']} images"
              + (f"; stages {stages}" if args.model == "multistage" else "") + ")")


if __name__ == "__main__":
    run_main(main)
