"""A picture of what a dense trial learned: a few validation scenes as image | truth | prediction.

A score such as foreground mIoU 0.12 says little until one sees the masks: whether the net finds
the objects and confuses their classes, or paints background everywhere.  ``dlasearch report`` draws
this grid for the best trial of a dense study when the study kept that trial's weights.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dlasearch.analysis.compare import plot_style, save_figure
from dlasearch.deploy import checkpoint
from dlasearch.deploy.predict import palette
from dlasearch.errors import DLASearchError
from dlasearch.search import load_data
from dlasearch.search.study import stored_space

__all__ = ['SCENES', 'prediction_grid']

SCENES = 4  # validation scenes shown: enough to see the pattern of mistakes, small enough to read


@torch.inference_mode()
def _predict(model, x: torch.Tensor) -> np.ndarray:
    y = model(model.preprocess(x))
    return y.argmax(1).to(torch.uint8).cpu().numpy()


def prediction_grid(study, trial, out: Path, storage: str | None = None, n: int = SCENES) -> tuple[list[Path], str]:
    """Draw ``trial``'s predictions on the first ``n`` validation scenes of ``study``'s data beside their
    ground truth; returns (files, note).  A trial without kept weights, or data that cannot be loaded
    here, gives no files and a note saying why."""
    try:
        model = checkpoint.load(study=study.study_name, trial=trial.number, storage=storage)
    except DLASearchError as e:
        return [], f"No predictions drawn: trial {trial.number}'s weights are not available ({e})."
    try:
        data = load_data(stored_space(study))
    except DLASearchError as e:
        return [], f"No predictions drawn: the study's data cannot be loaded here ({e})."
    if not data.dense:
        return [], ""
    x, truth = data.x_val[:n].cpu(), data.y_val[:n].cpu().numpy()
    pred = _predict(model, x)
    return _draw(x.numpy(), truth, pred, trial.number, out / "predictions"), ""


@plot_style()
def _draw(images: np.ndarray, truth: np.ndarray, pred: np.ndarray, number: int, stem: Path) -> list[Path]:
    from matplotlib.figure import Figure  # heavy: only a report draws

    colours = np.asarray(palette(), dtype=np.uint8).reshape(256, 3)
    rows = len(images)
    fig = Figure(figsize=(6.6, 2.2 * rows))
    axes = fig.subplots(rows, 3, squeeze=False)
    for i in range(rows):
        img = images[i].transpose(1, 2, 0)
        panels = (img[..., 0] if img.shape[2] == 1 else img[..., :3], colours[truth[i]], colours[pred[i]])
        for j, (ax, panel) in enumerate(zip(axes[i], panels)):
            ax.imshow(panel, cmap="gray" if panel.ndim == 2 else None, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(("image", "truth", "prediction")[j], fontsize=10)
    fig.suptitle(f"trial {number}: validation scenes (class 0 black; VOC colours, as dlasearch predict writes)",
                 fontsize=9)
    stem.parent.mkdir(parents=True, exist_ok=True)
    return save_figure(fig, stem)
