"""The image decoder against a large hostile corpus: every file processed or rejected, none crashing or hanging.

Writes ``--files`` seeded hostile files (``tests/fixtures/corpus.py``: every mode, bit flips,
truncations, decompression bombs, wrong extensions, bad CRCs), runs prepare's decoder
(``vitfgvc.data.prepare.convert_image``) on each in a worker process with a time limit,
and prints: files tried, processed, rejected (by reason), crashes (a worker that died or
a file over the time limit), the slowest file. The test suite runs the same on 500 files.

    python benchmarks/fuzz_images.py --files 5000 --seed 1
"""

from __future__ import annotations

import argparse
import collections
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.fixtures

from tests.fixtures.corpus import write_corpus  # noqa: E402
from vitfgvc.data.prepare import _Task, convert_image  # noqa: E402


def _timed(task: _Task):
    start = time.perf_counter()
    return convert_image(task), time.perf_counter() - start


def run(files: int, seed: int, workers: int, limit: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        samples = write_corpus(root / "corpus", files, seed=seed)
        (root / "out").mkdir()
        tasks = [_Task(str(s.path), str(root / "out" / f"{i:05d}.jpg"), 448, 90) for i, s in enumerate(samples)]
        reasons: collections.Counter = collections.Counter()
        processed, crashes, slowest = 0, [], (0.0, "")
        start = time.perf_counter()
        with mp.get_context("fork").Pool(workers) as pool:
            jobs = [(s, pool.apply_async(_timed, (t,))) for s, t in zip(samples, tasks)]
            for s, job in jobs:
                try:
                    result, seconds = job.get(timeout=limit)
                except Exception as exc:  # noqa: BLE001 - a hang or a dead worker: a crash of the decoder
                    crashes.append(f"{s.path.name}: {type(exc).__name__}")
                    continue
                slowest = max(slowest, (seconds, f"{s.path.name} ({s.kind})"))
                if isinstance(result, str):
                    reasons[result.split(":")[0] if result.startswith("cannot") else result.split(",")[0][:40]] += 1
                else:
                    processed += 1
        leftovers = len(list((root / "out").iterdir())) - processed
    return {"files": len(samples), "processed": processed, "rejected": sum(reasons.values()), "crashes": crashes,
            "written_for_rejected": leftovers, "slowest": slowest, "reasons": reasons,
            "seconds": time.perf_counter() - start}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--limit", type=float, default=20.0, help="seconds a file may take before it counts as a hang")
    args = ap.parse_args()
    r = run(args.files, args.seed, args.workers, args.limit)
    print(f"{r['files']} files tried: {r['processed']} processed, {r['rejected']} rejected, "
          f"{len(r['crashes'])} crashes, {r['written_for_rejected']} files written for rejected ones; "
          f"slowest {r['slowest'][1]} {1000 * r['slowest'][0]:.0f} ms; {r['seconds']:.1f} s in all")
    for reason, n in r["reasons"].most_common(8):
        print(f"  {n:5d}  {reason}")
    for c in r["crashes"][:10]:
        print(f"  crash: {c}")
    sys.exit(1 if r["crashes"] or r["written_for_rejected"] else 0)


if __name__ == "__main__":
    main()
