"""Training throughput of DLA models on CPU, and how much of the machine's fp32 peak it reaches.

For each model, with and without ``channels_last``: images/s of a full SGD
step (forward, loss, backward, momentum update) at 32x32, batch 128, and the
GFLOP/s that implies (a training step costs about 3x the forward MACs, 2 FLOPs
per MAC), as a fraction of a large fp32 matmul's GFLOP/s measured in the same
run.  The same GEMM run as a 1x1 convolution is reported too: on CPU it goes
through oneDNN, the library the model's convolutions use, while ``torch.matmul``
goes through the BLAS (MKL), which may not reach the peak on every CPU (AMD).
Usage: ``python bench/train_throughput.py [--models dla34 dla46_c] [--repeats 3]``
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from tabulate import tabulate

from dlasearch import measure
from dlasearch import zoo


def _gflops(fn, flops: float, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return flops / statistics.median(times) / 1e9


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of an n x n fp32 matmul (median of ``repeats``): the practical peak of this machine."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    return _gflops(lambda: a @ b, 2 * n ** 3, repeats)


@torch.no_grad()
def conv_gemm_gflops(n: int = 2048, repeats: int = 5) -> float:
    """The same n x n x n GEMM as a 1x1 convolution (n channels, n pixels), i.e. through oneDNN on CPU."""
    conv = torch.nn.Conv2d(n, n, 1, bias=False)
    x = torch.randn(1, n, n // 32, 32)
    return _gflops(lambda: conv(x), 2 * n ** 3, repeats)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["dla34", "dla46_c"])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    with measure.CPUShare() as cpu:  # over the whole measurement, the peaks included
        peaks = [matmul_gflops()]
        convs = [conv_gemm_gflops()]
        rows = []
        for name in a.models:
            model = zoo.create(name, 10)
            macs = measure.macs(model, (1, 3, a.size, a.size))
            for cl in (False, True):
                lat = measure.latency(model, (a.batch, 3, a.size, a.size), repeats=a.repeats, warmup=1,
                                      channels_last=cl, inference=False)
                rows.append((name, cl, macs, lat["train_step_ms"], lat["train_images_per_s"]))
        peaks.append(matmul_gflops())  # before and after: the better one, in case the machine was busy once
        convs.append(conv_gemm_gflops())
    peak, conv_peak = max(peaks), max(convs)
    table = []
    for name, cl, macs, ms, ips in rows:
        gflops = ips * 3 * macs * 2 / 1e9
        table.append([name, "yes" if cl else "no", f"{macs / 1e6:.1f}", f"{ms:.0f}", f"{ips:.0f}",
                      f"{gflops:.1f}", f"{gflops / peak:.1%}", f"{gflops / conv_peak:.1%}"])
    print(f"CPU, {torch.get_num_threads()} threads, torch {torch.__version__}; batch {a.batch}, "
          f"{a.size}x{a.size}; fp32 2048^3 GEMM: matmul {peak:.1f} GFLOP/s, as 1x1 conv {conv_peak:.1f} GFLOP/s "
          f"(runs: {', '.join(f'{g:.1f}' for g in peaks)} / {', '.join(f'{g:.1f}' for g in convs)})")
    if warning := cpu.warning():
        print(warning)
    print(tabulate(table, headers=["model", "channels_last", "fwd MMACs/img", "step ms", "train img/s",
                                   "GFLOP/s", "of matmul", "of 1x1-conv GEMM"], tablefmt="github"))


if __name__ == "__main__":
    main()
