"""DVC stages ``baseline@<dataset>``, ``multistage@<dataset>``, ``ablate@<dataset>-<variant>``, ``baseline_equal_time@<dataset>``.

Trains one model and writes ``models/<dataset>/<name>/`` (weights, resolved config,
classes, training summary) and ``metrics/<dataset>/<name>_history.csv`` (``<name>`` is
the model, ``ablation/<variant>`` or ``baseline_equal_time``); the run is logged to
MLflow. The test split is the evaluation stage's. With ``runtime.nproc`` > 1 the script
runs itself under torchrun (DDP); started again after a kill, it resumes from its last
checkpoint.
"""

import argparse
import json
import os
import sys
from pathlib import Path

from vitfgvc.config import MODELS, load_params
from vitfgvc.errors import UserError, run_main
from vitfgvc.inference import TRAINING_SUMMARY
from vitfgvc.tracking import Tracker
from vitfgvc.training import RunPaths, equal_time_config, train


def read_summary(dataset: str, model: str) -> dict:
    path = Path("models") / dataset / model / TRAINING_SUMMARY
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path} not found: the {model}@{dataset} stage must run first") from None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True, help="an entry under datasets: in the params file")
    ap.add_argument("--model", required=True, choices=MODELS)
    ap.add_argument("--variant", help="an ablation variant of the multistage model (a key of ablation.variants)")
    ap.add_argument("--equal-time", action="store_true",
                    help="the baseline, trained as long (wall clock) as the multistage model took")
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args()
    if args.equal_time and args.model != "baseline":
        ap.error("--equal-time is for the baseline")
    params = load_params(args.params)
    cfg = params.run_config(args.dataset, args.model, args.variant)
    if args.equal_time:
        cfg = equal_time_config(cfg, read_summary(args.dataset, "multistage"), read_summary(args.dataset, "baseline"))
    if params.runtime.nproc > 1 and "LOCAL_RANK" not in os.environ:
        from torch.distributed.run import main as torchrun

        torchrun(["--standalone", f"--nproc-per-node={params.runtime.nproc}", __file__, *sys.argv[1:]])
        return

    if args.equal_time:
        name, stage = "baseline_equal_time", f"baseline_equal_time@{args.dataset}"
    elif args.variant:
        name, stage = f"ablation/{args.variant}", f"ablate@{args.dataset}-{args.variant}"
    else:
        name, stage = args.model, f"{args.model}@{args.dataset}"
    summary = train(cfg, params.runtime, RunPaths.for_run(args.dataset, name), stage=stage,
                    tracker_factory=lambda: Tracker(params.runtime.mlflow_experiment))
    if summary is not None:
        print(f"{stage}: {summary['epochs']} epochs in {summary['train_seconds']:.0f} s -> models/{args.dataset}/{name}")


if __name__ == "__main__":
    run_main(main)
