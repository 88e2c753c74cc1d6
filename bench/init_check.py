"""Initial weights: the loss each comparison network starts from, and what a few epochs make of it.

Why: with the original DLA init (He on fan-out everywhere, the classifier included) a chain of
residual blocks adds one unit of variance per block and its 10-class classifier has std
sqrt(2/10), so the plain chain starts at a loss of about 9 where aggregation nodes (which
normalise) start near 4.  ``train.init=zero-last`` starts every residual branch's last BatchNorm
and the classifier at zero.  This prints, per pattern and init, the loss, the logit std and the
RMS of the pooled features the classifier reads, at initialisation on one training batch (seconds), and with ``--epochs N`` the validation accuracy
after N epochs of the default recipe (minutes per row on 2 CPU cores).

    python bench/init_check.py                         # loss at init, 1M nets and the 2M chain
    python bench/init_check.py --epochs 6 --seeds 0 1  # plus short training runs
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dlasearch.analysis.compare.sizing import size  # noqa: E402
from dlasearch.ir import INITS, module_paths, to_module  # noqa: E402
from dlasearch.patterns import PATTERNS, build  # noqa: E402
from dlasearch.train import TrainConfig, data as datamod, train  # noqa: E402
from dlasearch.train.engine import Feeder  # noqa: E402

CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar-10-subset" / "cifar10_subset.npz"
ROWS = [(p, 1e6) for p in ("chain", "skip", "ida", "tree", "reentrant", "hda", "dla")] + [("chain", 2e6)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(CIFAR), help="a .npz dataset (default: the CIFAR-10 subset)")
    ap.add_argument("--epochs", type=int, default=0, help="also train each row this many epochs (0: init only)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--patterns", nargs="+", default=None, choices=sorted(PATTERNS), help="default: all seven")
    a = ap.parse_args(argv)
    ds = datamod.load("npz", path=a.data, val_fraction=0.1, image_size=32)
    x, y = Feeder(ds, torch.device("cpu")).normalize(ds.x_train[:256]), ds.y_train[:256]
    rows = [r for r in ROWS if a.patterns is None or r[0] in a.patterns]
    head = "| pattern | params | init | loss at init | logit std | pooled feature RMS |" + "".join(
        f" val acc @{a.epochs} seed {s} |" for s in a.seeds if a.epochs)
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for pattern, budget in rows:
        sized = size(pattern, budget, 0.05, in_channels=ds.channels, num_classes=ds.num_classes)
        for init in INITS:
            torch.manual_seed(0)
            graph = build(sized.spec)
            model = to_module(graph, init=init).train()
            head = next(n for n, d in graph.nodes(data=True) if d["kind"] == "head")
            features = []
            hook = model.get_submodule(module_paths(graph, head)["fc"]).register_forward_pre_hook(
                lambda m, args: features.append(args[0]))
            with torch.no_grad():
                out = model(x).float()
            hook.remove()
            cells = [pattern, f"{sized.params:,}", init, f"{F.cross_entropy(out, y).item():.2f}",
                     f"{out.std().item():.2f}", f"{features[0].float().pow(2).mean().sqrt().item():.2f}"]
            for seed in (a.seeds if a.epochs else []):
                t = time.perf_counter()
                torch.manual_seed(seed)
                m = to_module(build(sized.spec), init=init)
                r = train(m, ds, TrainConfig(epochs=a.epochs, seed=seed, progress=False))
                cells.append(f"{r.history[-1]['val_accuracy'] * 100:.1f} ({time.perf_counter() - t:.0f} s)")
            print("| " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
