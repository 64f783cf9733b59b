"""DVC stages ``baseline@<dataset>``, ``multistage@<dataset>``, ``ablate@<dataset>-<variant>``, ``baseline_equal_time@<dataset>``.

Trains one model and writes ``models/<dataset>/<name>/`` (weights, resolved config,
classes, training summary) and ``metrics/<dataset>/<name>_history.csv`` (``<name>`` is
the model, ``ablation/<variant>`` or ``baseline_equal_time``) and how it ran,
``metrics/<dataset>/<name>_training.json`` (seconds, hardware, the MLflow run); the run is logged to
MLflow. The test split is the evaluation stage's. With ``runtime.nproc`` > 1 the script
runs itself under torchrun (DDP); with ``runtime.nnodes`` > 1 every node runs this same
command and torchrun's c10d rendezvous at ``runtime.rdzv_endpoint`` joins them into one
training (global rank 0 writes every output). Started again after a kill, it resumes from
its last checkpoint.
"""

import argparse
import json
import sys

from vitfgvc.config import MODELS, load_params
from vitfgvc.devices import run_under_torchrun
from vitfgvc.errors import UserError, run_main
from vitfgvc.tracking import Tracker
from vitfgvc.training import RunPaths, equal_time_config, train


def read_record(dataset: str, model: str) -> dict:
    """How the ``model@dataset`` training ran (its seconds): metrics/<dataset>/<model>_training.json."""
    path = RunPaths.for_run(dataset, model).record
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
        cfg = equal_time_config(cfg, read_record(args.dataset, "multistage"), read_record(args.dataset, "baseline"))
    if run_under_torchrun(params.runtime, __file__, sys.argv[1:], f"{cfg.run_name}-{args.equal_time}"):
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
