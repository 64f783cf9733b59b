"""``vitfgvc``: command-line use of a trained model, and the pipeline on many GPUs.

    vitfgvc predict MODEL_DIR IMAGE_OR_FOLDER... [--top-k 5] [--explain OUT_DIR] [--json] [--device auto]
    vitfgvc repro [--jobs N] [--address ADDR] [--dry] [--force] [TARGETS...]

``repro`` runs the stages ``dvc repro [TARGETS]`` would, up to N at once on Ray
(:mod:`vitfgvc.scheduler`), and records each in DVC as ``dvc repro`` does.

``MODEL_DIR`` is a directory written by a training stage (``models/<dataset>/<model>``).
Images are JPEG, PNG or WebP files of any mode and size, folders (searched
recursively) or glob patterns. Each image gets the top-k classes of the combined
prediction with each stage's probability for them; ``--explain`` also writes one
PNG per image showing where the model looked. An unreadable file is reported by
name with the reason while the others are still processed; the exit status is 1
if any failed.
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from . import labels
from .images import MAX_PIXELS

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}


@dataclass
class Prediction:
    image: str
    top_k: list[dict] = field(default_factory=list)
    stages: dict[str, list[dict]] = field(default_factory=dict)
    error: str | None = None

    def as_json(self) -> dict:
        if self.error is not None:
            return {"image": self.image, "error": self.error}
        return {"image": self.image, "top_k": self.top_k, "stages": self.stages}


def expand_inputs(inputs: list[str]) -> tuple[list[Path], list[Prediction]]:
    """Files, folders (recursively, image files only) and globs -> image paths; what matches nothing fails."""
    paths: list[Path] = []
    failed: list[Prediction] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                failed.append(Prediction(item, error="folder holds no .jpg, .jpeg, .png or .webp file"))
            paths += found
        elif p.is_file():
            paths.append(p)
        elif glob.has_magic(item):
            found = sorted(Path(f) for f in glob.glob(item, recursive=True) if Path(f).is_file())
            if not found:
                failed.append(Prediction(item, error="the pattern matches no file"))
            paths += found
        else:
            failed.append(Prediction(item, error="no such file or folder"))
    return paths, failed


def _read(path: Path, max_pixels: int, fit: int | None):
    from .images import ImageRejected, open_rgb

    try:
        return open_rgb(path, max_pixels=max_pixels, fit=fit)[0], None
    except ImageRejected as exc:
        return None, str(exc)


def _top(probs, classes: list[str], labels) -> list[dict]:
    return [{"class_name": classes[i], "label": int(i), "prob": round(float(probs[i]), 6)} for i in labels]


def predict(model_dir: str, inputs: list[str], *, top_k: int = 5, explain: str | None = None,
            device: str = "auto", batch_size: int = 16, progress: bool | None = None,
            max_pixels: int | None = None) -> list[Prediction]:
    import torch
    from tqdm import tqdm

    from .inference import load_model_dir
    from .viz import explain as explain_batch
    from .viz import erase_threshold, grid_figure, select

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    loaded = load_model_dir(model_dir, device)
    paths, results = expand_inputs(inputs)
    k = min(top_k, len(loaded.classes))
    out_dir = Path(explain) if explain else None
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
    used_names: set[str] = set()
    show = progress if progress is not None else len(paths) > 32
    bar = tqdm(total=len(paths), unit="img", desc="predict", disable=not show, file=sys.stderr)
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        images, ok = [], []
        for path in chunk:
            img, error = _read(path, max_pixels or MAX_PIXELS, loaded.cfg.high_res)
            if error:
                results.append(Prediction(str(path), error=error))
            else:
                images.append(loaded.preprocess(img))
                ok.append(path)
        bar.update(len(chunk))
        if not ok:
            continue
        batch = torch.stack(images).to(loaded.device)
        out = explain_batch(loaded.model, batch) if out_dir else _forward(loaded.model, batch)
        probs = {s: p.float().cpu() for s, p in out.probabilities().items()}
        for i, path in enumerate(ok):
            order = probs["combined"][i].argsort(descending=True)[:k].tolist()
            pred = Prediction(str(path), _top(probs["combined"][i], loaded.classes, order),
                              {s: _top(p[i], loaded.classes, order) for s, p in probs.items() if s != "combined"})
            results.append(pred)
            if out_dir:
                name = path.stem
                while name in used_names:
                    name += "_"
                used_names.add(name)
                best = pred.top_k[0]
                fig = grid_figure(batch[i:i + 1].cpu(), select(out, i),
                                  [f"{path.name}\n{best['class_name']} ({best['prob']:.2f})"],
                                  erase_threshold=erase_threshold(loaded.cfg))
                fig.savefig(out_dir / f"{name}.png", dpi=100)
    bar.close()
    order = {str(p): i for i, p in enumerate(paths)}
    return sorted(results, key=lambda r: order.get(r.image, -1))


def _forward(model, batch):
    import torch

    with torch.no_grad():
        return model(batch)


def render(results: list[Prediction]) -> str:
    lines = []
    for r in results:
        lines.append(r.image)
        if r.error is not None:
            lines += [f"  error: {r.error}", ""]
            continue
        stages = [s for s in labels.PER_STAGE if s in r.stages]
        width = max(5, *(len(t["class_name"]) for t in r.top_k))
        head = f"  {'#':>2}  {'class':<{width}}  {'combined':>8}" + "".join(f"  {labels.column(s):>14}" for s in stages)
        lines += [head]
        for n, t in enumerate(r.top_k):
            row = f"  {n + 1:>2}  {t['class_name']:<{width}}  {t['prob']:>8.3f}"
            row += "".join(f"  {r.stages[s][n]['prob']:>14.3f}" for s in stages)
            lines.append(row)
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vitfgvc", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("predict", help="classify images with a trained model and show where it looked")
    p.add_argument("model_dir", metavar="MODEL_DIR", help="a model directory written by training, e.g. models/cub/multistage")
    p.add_argument("inputs", metavar="IMAGE_OR_FOLDER", nargs="+", help="image files, folders or glob patterns")
    p.add_argument("--top-k", type=int, default=5, help="classes to show per image (default 5)")
    p.add_argument("--explain", metavar="OUT_DIR", help="write one PNG per image: boxes, attention, crops")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    p.add_argument("--device", default="auto", help="auto (GPU when there is one), cpu, cuda, cuda:1, ...")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-pixels", type=int, default=MAX_PIXELS,
                   help=f"refuse an image that declares more pixels, before decoding it (default {MAX_PIXELS:,}, PIL's)")
    r = sub.add_parser("repro", help="the stages `dvc repro` would run, up to N at once on Ray",
                       description="Reproduce exactly the stages `dvc repro [TARGETS]` would, up to --jobs at once "
                                   "through Ray; this process alone touches DVC and records each stage as it ends.")
    r.add_argument("targets", metavar="TARGETS", nargs="*", help="stages or groups, as `dvc repro` takes them")
    r.add_argument("--jobs", "-j", type=int, default=1, help="stages at once (default 1; one per GPU you have)")
    r.add_argument("--address", help="a running Ray cluster (auto, or host:port); default: a local Ray for this run")
    r.add_argument("--dry", action="store_true", help="print the plan (waves, critical path, estimate); run nothing")
    r.add_argument("--force", "-f", action="store_true", help="run every planned stage, changed or not")
    r.add_argument("--project", default=".", help="the project's folder (default: here)")
    args = parser.parse_args(argv)
    if args.command == "repro":
        return _repro(args)
    if args.top_k < 1:
        parser.error(f"--top-k must be at least 1, got {args.top_k}")
    if args.max_pixels < 1:
        parser.error(f"--max-pixels must be at least 1, got {args.max_pixels}")

    from .errors import UserError

    try:
        results = predict(args.model_dir, args.inputs, top_k=args.top_k, explain=args.explain, device=args.device,
                          batch_size=args.batch_size, max_pixels=args.max_pixels)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([r.as_json() for r in results], indent=2))
    else:
        print(render(results))
    failed = [r for r in results if r.error is not None]
    for r in failed:
        print(f"error: {r.image}: {r.error}", file=sys.stderr)
    return 1 if failed else 0


def _repro(args) -> int:
    from .errors import UserError
    from .scheduler import repro

    if args.jobs < 1:
        print(f"error: --jobs must be at least 1, got {args.jobs}", file=sys.stderr)
        return 2
    from dvc.exceptions import DvcException

    try:
        return repro(Path(args.project), args.targets, jobs=args.jobs, address=args.address, dry=args.dry,
                     force=args.force)
    except (UserError, DvcException) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
