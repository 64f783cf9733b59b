"""DVC stages ``evaluate@<dataset>-<model>``, ``evaluate_ablation@<dataset>-<variant>``, ``evaluate_equal_time@<dataset>``.

Evaluates a trained model directory ``models/<dataset>/<run>/`` on the test split (the
final epoch, never a best one) and writes ``evaluation/<dataset>/<run>/`` (test
predictions, per-class accuracy, confusion matrix, a sample attention figure) and the
metrics ``metrics/<dataset>/<run>.json``; they are logged to the training's MLflow run.
"""

import argparse
from pathlib import Path

from vitfgvc.config import load_params
from vitfgvc.errors import run_main
from vitfgvc.evaluate import evaluate_model
from vitfgvc.tracking import Tracker


def stage_name(args) -> str:
    if args.run.startswith("ablation/"):
        return f"evaluate_ablation@{args.dataset}-{args.run.split('/', 1)[1]}"
    if args.run == "baseline_equal_time":
        return f"evaluate_equal_time@{args.dataset}"
    return f"evaluate@{args.dataset}-{args.run}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True, help="an entry under datasets: in the params file")
    ap.add_argument("--run", required=True, help="baseline, multistage, ablation/<variant> or baseline_equal_time")
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args()
    params = load_params(args.params)
    runtime = params.runtime
    result = evaluate_model(Path("models") / args.dataset / args.run, Path("data/prepared") / args.dataset,
                            Path("evaluation") / args.dataset / args.run,
                            Path("metrics") / args.dataset / f"{args.run}.json", runtime, stage=stage_name(args),
                            tracker_factory=lambda: Tracker(runtime.mlflow_experiment),
                            auc=params.spec(args.dataset).auc)
    stages = ", ".join(f"{k[-1]} {result[k]:.2f}" for k in ("accuracy_a", "accuracy_b", "accuracy_c")
                       if result.get(k) is not None)
    print(f"evaluate {args.dataset}/{args.run}: test accuracy {result['accuracy']:.2f}% ({result['images']} images"
          + (f"; stages {stages}" if result["model"] == "multistage" else "") + ")")


if __name__ == "__main__":
    run_main(main)
