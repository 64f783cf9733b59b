"""benchmarks/gpu_check.py: the one-shot GPU check runs end to end (as a CPU smoke run here) and refuses to
pretend without CUDA."""

from __future__ import annotations

import subprocess
import sys

from benchmarks import gpu_check

from .conftest import ROOT, subprocess_env


def test_without_cuda_the_default_says_how_to_check_the_script_and_fails():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks/gpu_check.py")], capture_output=True, text=True,
                          env=subprocess_env(CUDA_VISIBLE_DEVICES=""), timeout=120)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1] == gpu_check.NO_CUDA


def test_a_cpu_smoke_run_writes_every_row_and_says_what_it_is(tmp_path, torch_state):
    out = tmp_path / "rehearsal-gpu.md"
    assert gpu_check.main(["--device", "cpu", "--tiny", "--out", str(out)]) == 0
    text = out.read_text()
    assert "a CPU smoke run of the script" in text and "None of its figures says anything about a GPU" in text
    assert "- device: **" in text and "torch " in text and "CUDA –" in text
    rows = [line for line in text.splitlines() if line.startswith(("| baseline |", "| multistage ("))]
    assert len(rows) == 6  # three models x (frozen, unfrozen)
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        seconds, images_s, gflop = float(cells[2]), float(cells[3]), float(cells[4].replace(",", ""))
        assert seconds > 0 and images_s > 0 and gflop > 0, row
        assert cells[5] == "unknown"  # utilisation: no bf16 peak for a CPU
    assert "Evaluation: a batch of 8 test images" in text
    loader = [line for line in text.splitlines() if line.startswith("| 1 |") or line.startswith("| 2 |")]
    assert len(loader) == 2 and all(line.rstrip(" |").endswith("%") for line in loader)
    # the paper DAG: every training stage of params.yaml, and a total
    assert "| ablate@dogs-no_erase |" in text and "| multistage@aircraft |" in text
    assert "**Total: " in text and "of the toy model: not the paper's cost." in text


def test_bf16_peaks_match_device_names():
    assert gpu_check.bf16_peak("NVIDIA H100 80GB HBM3") == 989.4
    assert gpu_check.bf16_peak("NVIDIA H100 PCIe") == 756.5
    assert gpu_check.bf16_peak("NVIDIA A100-SXM4-80GB") == 312.0
    assert gpu_check.bf16_peak("NVIDIA L40S") == 362.1 and gpu_check.bf16_peak("NVIDIA L4") == 121.0
    assert gpu_check.bf16_peak("Some Future GPU") is None
