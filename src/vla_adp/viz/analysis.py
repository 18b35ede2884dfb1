"""Layer-wise analysis of text→vision importance (seed paper §5.4 "Observation of Attention Weights",
Fig. 6, Fig. 7, Eq. 26).

For one checkpoint and one observation, the unpruned decoder runs layer by layer; at the input of
every layer ℓ we compute

* Φ^(ℓ), the ADP importance of every visual token (Eq. 7–9, :func:`text_vision_scores` with layer
  ℓ's ``input_layernorm``, ``q_proj`` and ``k_proj``) — Fig. 6c;
* the participation ratio PR = 1 / Σ p_i² and the entropy H = −Σ p_i log p_i of p = Φ / ΣΦ
  (Eq. 26, :func:`participation_ratio`, :func:`entropy`; Φ shifted to be non-negative) — Fig. 7;
* at chosen layers, the cosine self-similarity of the visual hidden states (the residual stream
  entering the layer) — Fig. 6a.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vla_adp.pruning.scoring import entropy, participation_ratio, text_vision_scores
from vla_adp.viz.figures import pyplot, save_figure


@dataclass
class LayerAnalysis:
    """Per-layer numbers of one query.

    Args:
        phi: (n_layers, V) importance Φ at each layer's input.
        pr / entropy: (n_layers,) Eq. 26 statistics of Φ.
        similarity: layer -> (V, V) cosine similarity of the visual hidden states.
        views: visual tokens per camera; grid: patches per side of one camera.
    """

    phi: np.ndarray
    pr: np.ndarray
    entropy: np.ndarray
    views: tuple[int, ...]
    grid: int
    similarity: dict[int, np.ndarray] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "n_layers": int(self.phi.shape[0]), "n_visual": int(self.phi.shape[1]), "views": list(self.views),
            "grid": self.grid, "similarity_layers": sorted(self.similarity),
            "layers": [{"layer": i, "participation_ratio": float(self.pr[i]), "entropy": float(self.entropy[i]),
                        "phi": [float(v) for v in self.phi[i]]} for i in range(self.phi.shape[0])],
        }


def pr_and_entropy(phi: torch.Tensor) -> tuple[float, float]:
    """Eq. 26 of one Φ vector; a constant Φ (no preference at all) counts as uniform: PR = V, H = log V."""
    phi = phi.float()
    if float(phi.max() - phi.min()) == 0.0:
        # The min-shift of scoring._distribution maps a constant Φ to all zeros (0/0); uniform is
        # the limit of any Φ whose spread goes to zero.
        return float(phi.numel()), math.log(phi.numel())
    return float(participation_ratio(phi)), float(entropy(phi))


def cosine_similarity(x: torch.Tensor) -> np.ndarray:
    """(V, D) -> (V, V) cosine similarity."""
    x = torch.nn.functional.normalize(x.float(), dim=-1)
    return (x @ x.T).cpu().numpy()


@torch.inference_mode()
def analyze_layers(policy, obs: dict, similarity_layers: list[int] | None = None) -> LayerAnalysis:
    """Φ, PR and entropy at the input of every decoder layer; self-similarity at ``similarity_layers``
    (default: first, middle and last)."""
    model = policy.model
    llm = model.language_model
    n = len(llm.layers)
    sim_layers = _check_layers(similarity_layers, n)
    inputs, _ = policy.inputs(obs)
    emb = model.embed(inputs)
    x, pos, layout = emb.hidden, emb.position_ids, emb.layout
    phis, sims = [], {}
    for i in range(n):
        if i:
            x = llm.run_layers(x, pos, i - 1, i)
        attn = llm.layers[i].self_attn
        normed = llm.layers[i].input_layernorm(x)
        phis.append(text_vision_scores(normed, attn.q_proj, attn.k_proj, attn.n_heads, attn.n_kv_heads, layout)[0])
        if i in sim_layers:
            sims[i] = cosine_similarity(x[0, layout.visual])
    stats = [pr_and_entropy(p) for p in phis]
    return LayerAnalysis(torch.stack(phis).cpu().numpy(), np.array([s[0] for s in stats]),
                         np.array([s[1] for s in stats]), layout.views, int(math.isqrt(layout.views[0])), sims)


def _check_layers(layers: list[int] | None, n: int) -> list[int]:
    if layers is None:
        return sorted({0, n // 2, n - 1})
    bad = [l for l in layers if not 0 <= l < n]
    if bad:
        raise ValueError(f"layers {bad} out of range: the decoder has layers 0..{n - 1}")
    return sorted(set(layers))


# -- pictures ----------------------------------------------------------------------------------
def plot_layers(layers: list[int], n: int) -> list[int]:
    """Layers to draw: all of them up to 8, else 8 evenly spaced ones including the first and last."""
    return list(range(n)) if n <= 8 else sorted({int(round(x)) for x in np.linspace(0, n - 1, 8)} | set(layers))


def plot_phi(a: LayerAnalysis, path: Path, layers: list[int], dpi: int = 100) -> Path:
    """Φ over the visual tokens, one row per layer, camera boundaries dotted (Fig. 6c)."""
    plt = pyplot()
    fig, axes = plt.subplots(len(layers), 1, figsize=(8, 1.3 * len(layers) + 0.6), dpi=dpi, sharex=True, squeeze=False)
    bounds = np.cumsum(a.views)[:-1]
    for ax, i in zip(axes[:, 0], layers):
        ax.plot(a.phi[i], lw=0.8)
        for b in bounds:
            ax.axvline(b - 0.5, color="gray", ls=":", lw=0.8)
        ax.set_ylabel(f"Φ L{i}", fontsize=8)
    axes[-1, 0].set_xlabel("visual token (camera 0, camera 1, ...)")
    fig.tight_layout()
    return save_figure(fig, path, dpi)


def plot_phi_maps(a: LayerAnalysis, path: Path, layers: list[int], dpi: int = 100) -> Path:
    """Φ of each camera as its G×G patch grid (rows: layers, columns: cameras)."""
    plt = pyplot()
    g, c = a.grid, len(a.views)
    fig, axes = plt.subplots(len(layers), c, figsize=(2.2 * c, 2.1 * len(layers)), dpi=dpi, squeeze=False)
    starts = np.concatenate([[0], np.cumsum(a.views)])
    for r, i in enumerate(layers):
        for cam in range(c):
            ax = axes[r, cam]
            ax.imshow(a.phi[i, starts[cam]:starts[cam + 1]].reshape(g, g), cmap="viridis")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"L{i} camera {cam}", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi)


def plot_pr_entropy(a: LayerAnalysis, path: Path, dpi: int = 100) -> Path:
    """PR and entropy per layer (Fig. 7a, 7b)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), dpi=dpi)
    x = np.arange(len(a.pr))
    axes[0].plot(x, a.pr, "o-")
    axes[0].set_ylabel("participation ratio")
    axes[1].plot(x, a.entropy, "o-", color="tab:orange")
    axes[1].set_ylabel("entropy (nats)")
    for ax in axes:
        ax.set_xlabel("layer")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path, dpi)


def plot_similarity(a: LayerAnalysis, path: Path, dpi: int = 100) -> Path:
    """Vision–vision cosine self-similarity at the chosen layers (Fig. 6a)."""
    plt = pyplot()
    layers = sorted(a.similarity)
    fig, axes = plt.subplots(1, len(layers), figsize=(3.2 * len(layers), 3.2), dpi=dpi, squeeze=False)
    for ax, i in zip(axes[0], layers):
        im = ax.imshow(a.similarity[i], cmap="magma", vmin=-1, vmax=1)
        ax.set_title(f"layer {i}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8)
    return save_figure(fig, path, dpi)


def write_analysis(a: LayerAnalysis, out_dir: str | Path, meta: dict | None = None) -> dict[str, Path]:
    """All pictures, ``layers.json`` (Φ, PR, H per layer) and ``similarity.npz``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    layers = plot_layers(sorted(a.similarity), len(a.pr))
    files = {
        "phi": plot_phi(a, out / "phi_per_layer.png", layers),
        "phi_maps": plot_phi_maps(a, out / "phi_maps.png", layers),
        "pr_entropy": plot_pr_entropy(a, out / "pr_entropy.png"),
        "similarity": plot_similarity(a, out / "self_similarity.png"),
    }
    (out / "layers.json").write_text(json.dumps({**(meta or {}), **a.to_json()}, indent=1))
    np.savez_compressed(out / "similarity.npz", **{f"layer_{i}": m for i, m in a.similarity.items()})
    files["json"], files["npz"] = out / "layers.json", out / "similarity.npz"
    return files
