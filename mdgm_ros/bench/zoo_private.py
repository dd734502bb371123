"""PolyDigits checks of the families with modality-specific latents (private s_m beside the shared c),
called by ``bench zoo``.

- Disentanglement: a linear probe of the digit label on the private latents (every modality's q(s_m|x_m)
  mean, concatenated) beside the zoo's probe on the shared c. c should carry the label, s_m should not.
- Style transfer: one c (from all modalities of a test tuple) decoded with the s_m of several other test
  tuples, for modality m0: rows = the content (digit), columns = the style; a PNG per family.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..core import MultimodalVAE
from ..core.engine.atomic import write_atomically
from ..data.polydigits import PolyDigits
from .zoo_latents import latent_probe, normalized_images

STYLE_ROWS, STYLE_COLUMNS = 4, 6


def private_code(model: MultimodalVAE, feats: dict[str, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    """Every modality's q(s_m | x_m) mean, concatenated: (B, M * P)."""
    s_mu, _ = model.private_experts(feats, mask)                      # (M, B, P)
    return s_mu.permute(1, 0, 2).reshape(s_mu.shape[1], -1)


def private_probe(model: MultimodalVAE, train: PolyDigits, test: PolyDigits, n_probe: int) -> float:
    """Test accuracy of a logistic regression of the label on the private latents."""
    return latent_probe(model, train, test, n_probe, code=private_code)


@torch.no_grad()
def style_transfer_grid(model: MultimodalVAE, test: PolyDigits, target: str | None = None,
                        rows: int = STYLE_ROWS, columns: int = STYLE_COLUMNS) -> np.ndarray:
    """(rows, columns, 3, H, W) in [0, 1]: row r decodes tuple r's c with tuple (rows + k)'s s_target."""
    target = target or model.names[0]
    j = model.names.index(target)
    feats = normalized_images(model, test, slice(0, rows + columns))
    mask = torch.ones((rows + columns, len(model.names)), dtype=torch.bool, device=model.device)
    c = model.posterior_summary(*model.experts(feats, mask), mask)[0][:rows]                 # (R, D)
    styles = model.private_experts(feats, mask)[0][j, rows:]                                  # (C, P)
    grid = model.decode(target, c[:, None, :].expand(-1, columns, -1), styles[None].expand(rows, -1, -1))
    mean, _ = model.output_moments(target, grid)
    return model.denormalize(target, mean).clamp(0, 1).cpu().numpy()


def private_metrics(model: MultimodalVAE, train: PolyDigits, test: PolyDigits, n_probe: int) -> dict[str, Any]:
    """The zoo's extra fields for a family with private latents ({} for the others)."""
    if not getattr(model, "private_dim", 0):
        return {}
    grid = style_transfer_grid(model, test)
    return {"latent_probe_private": private_probe(model, train, test, n_probe),
            "private_dim": int(model.private_dim),
            "style_transfer": np.round(grid * 255).astype(np.uint8).tolist()}


def plot_style_transfer(grid: np.ndarray, path: Path, title: str) -> None:
    """The grid as one PNG (rows: content c, columns: style s_m), written atomically."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = np.asarray(grid, dtype=np.float32)
    grid = grid / 255.0 if grid.max() > 1.0 else grid
    rows, columns = grid.shape[:2]
    fig, axes = plt.subplots(rows, columns, figsize=(1.1 * columns, 1.1 * rows + 0.4), squeeze=False)
    for r in range(rows):
        for k in range(columns):
            axes[r, k].imshow(np.transpose(grid[r, k], (1, 2, 0)), interpolation="nearest")
            axes[r, k].set_axis_off()
    fig.suptitle(f"{title}: rows = c, columns = s_m", fontsize=8)
    fig.tight_layout()
    write_atomically(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def write_style_transfer(runs: Sequence[dict[str, Any]], out: Path) -> list[Path]:
    """style_<family>.png for the first seed's run of each family that has a style grid."""
    written, done = [], set()
    for run in runs:
        if run.get("style_transfer") is None or run["family"] in done:
            continue
        path = out / f"style_{run['family']}.png"
        plot_style_transfer(np.asarray(run["style_transfer"]), path, run["family"])
        done.add(run["family"])
        written.append(path)
    return written
