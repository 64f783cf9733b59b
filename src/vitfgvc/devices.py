"""Where a run computes: its device, mixed precision, data loaders and (with DDP) its processes."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader


@dataclass(frozen=True)
class Dist:
    """This process's place among the DDP processes (one process: rank 0 of 1)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> "Dist":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        return cls(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def all_true(self, flag: bool, device) -> bool:
        if self.world == 1:
            return flag
        t = torch.tensor([1 if flag else 0], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return bool(t.item())

    def gather(self, obj) -> list:
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out


def device_for(d: Dist = Dist()) -> torch.device:
    """This process's GPU when there is one, else the CPU."""
    if torch.cuda.is_available():
        torch.cuda.set_device(d.local_rank)
        return torch.device("cuda", d.local_rank)
    return torch.device("cpu")


def autocast_for(device: torch.device, enabled: bool):
    """A context factory: bf16 autocast on CUDA (fp16 where bf16 is unsupported), nothing on the CPU."""
    if device.type == "cuda" and enabled:
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return lambda: torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext


def make_loader(ds, *, workers: int, device: torch.device, **batching) -> DataLoader:
    return DataLoader(ds, num_workers=workers, pin_memory=device.type == "cuda",
                      prefetch_factor=4 if workers else None, **batching)


def peak_memory_mib(device: torch.device) -> tuple[float, str]:
    """The run's peak memory so far and what it counts: CUDA memory allocated by torch on a GPU, else the
    process's peak resident set (weights, optimiser state, activations, allocator slack; not loader workers)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda max_memory_allocated"
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process peak RSS"  # KiB on Linux


def keep_freed_memory() -> bool:
    """Make glibc keep the memory a training step frees for the next step (Linux; elsewhere a no-op).

    A CPU training step allocates and frees the same large activation buffers every step. By
    default glibc serves each one above its (adaptive) mmap threshold with a fresh mmap and
    returns it on free, so every step page-faults its activations in again, and how often that
    happens depends on what the process allocated before. With mmap off for the heap and a high
    trim threshold the buffers are reused: a multistage step on 2 cores was 4-12 % faster and
    steadier between processes (``benchmarks/bench_train_step.py``). Returns whether it applied.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_top_pad, m_mmap_max = -1, -2, -4  # malloc.h
    return all(mallopt(option, value) == 1 for option, value in
               ((m_mmap_max, 0), (m_trim_threshold, 1 << 30), (m_top_pad, 64 << 20)))


def run_under_torchrun(runtime, script: str, argv: list[str], run_id: str) -> bool:
    """Start ``script argv`` under torchrun when ``runtime`` asks for several processes or nodes and this process is
    not one of them yet (no ``LOCAL_RANK``); True when it did (the caller then returns). With ``runtime.nnodes`` > 1
    every node runs the same command and torchrun's c10d rendezvous joins them (``run_id`` names the rendezvous)."""
    import re

    if not (runtime.nproc > 1 or runtime.nnodes > 1) or "LOCAL_RANK" in os.environ:
        return False
    from torch.distributed.run import main as torchrun

    if runtime.nnodes > 1:
        where = ["--nnodes", str(runtime.nnodes), "--rdzv-backend", "c10d", "--rdzv-endpoint", runtime.rdzv_endpoint,
                 "--rdzv-id", re.sub(r"[^A-Za-z0-9_-]", "-", run_id)]
        if runtime.node_rank is not None:
            where += ["--node-rank", str(runtime.node_rank)]
    else:
        where = ["--standalone"]
    torchrun([*where, f"--nproc-per-node={runtime.nproc}", script, *argv])
    return True
