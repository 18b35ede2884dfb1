"""Projector, proprio projector and action heads of OpenVLA-OFT (docs/reference.md §1; moojink/openvla-oft ``prismatic/models/action_heads.py``, ``projectors.py``).

    patch features ─► Projector (fused GELU MLP) ─► visual tokens
    normalised proprio ─► ProprioProjector ─► one token after the visual tokens
    56 hidden states ─► (chunk, action_dim·D) ─► L1RegressionActionHead (MLP-ResNet) ─► (chunk, action_dim)

Module and parameter names match the published checkpoints (``projector.fc1..fc3``,
``proprio_projector--*.pt``: ``fc1/fc2``, ``action_head--*.pt``: ``model.*``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Projector(nn.Module):
    """``fused-gelu-mlp`` (3 layers) or ``gelu-mlp`` (2 layers); exact GELU between layers."""

    def __init__(self, vision_dim: int, hidden: tuple[int, ...], llm_dim: int):
        super().__init__()
        dims = (vision_dim, *hidden, llm_dim)
        for i in range(len(dims) - 1):
            self.add_module(f"fc{i + 1}", nn.Linear(dims[i], dims[i + 1]))
        self.n_layers = len(dims) - 1

    def forward(self, x: Tensor) -> Tensor:
        for i in range(1, self.n_layers + 1):
            x = getattr(self, f"fc{i}")(x)
            if i < self.n_layers:
                x = F.gelu(x)
        return x


class ProprioProjector(nn.Module):
    def __init__(self, proprio_dim: int, llm_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(proprio_dim, llm_dim)
        self.fc2 = nn.Linear(llm_dim, llm_dim)

    def forward(self, proprio: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(proprio)))


class MLPResNetBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.ffn = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.ReLU())

    def forward(self, x: Tensor) -> Tensor:
        return x + self.ffn(x)


class MLPResNet(nn.Module):
    def __init__(self, n_blocks: int, input_dim: int, hidden: int, output_dim: int):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(input_dim)
        self.fc1 = nn.Linear(input_dim, hidden)
        self.relu = nn.ReLU()
        self.mlp_resnet_blocks = nn.ModuleList(MLPResNetBlock(hidden) for _ in range(n_blocks))
        self.layer_norm2 = nn.LayerNorm(hidden)
        self.fc2 = nn.Linear(hidden, output_dim)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.fc1(self.layer_norm1(x)))
        for block in self.mlp_resnet_blocks:
            x = block(x)
        return self.fc2(self.layer_norm2(x))


class L1RegressionActionHead(nn.Module):
    """Action hidden states (B, chunk·dim, D) -> normalised actions (B, chunk, dim); no tanh/clip."""

    def __init__(self, llm_dim: int, action_dim: int, hidden: int, n_blocks: int = 2):
        super().__init__()
        self.action_dim = action_dim
        self.model = MLPResNet(n_blocks, llm_dim * action_dim, hidden, action_dim)

    def forward(self, hidden: Tensor) -> Tensor:
        b, slots, d = hidden.shape
        chunk = slots // self.action_dim
        # Row-major grouping: timestep j reads slots 7j..7j+6 concatenated (docs/reference.md §1).
        return self.model(hidden.reshape(b, chunk, self.action_dim * d))


def bin_centers(n_bins: int = 256) -> Tensor:
    """The 255 centres of ``linspace(-1, 1, n_bins)`` used by OpenVLA's action tokenizer."""
    edges = torch.linspace(-1, 1, n_bins, dtype=torch.float64)
    return (edges[:-1] + edges[1:]) / 2


def discrete_actions(logits: Tensor, n_real_vocab: int, n_bins: int = 256) -> Tensor:
    """Argmax token ids over the action slice -> normalised actions (docs/reference.md §1, discrete path).

    bin = clip(n_real_vocab - token_id - 1, 0, n_bins - 2); value = bin_centers[bin].
    """
    token_ids = logits.argmax(dim=-1)
    bins = (n_real_vocab - token_ids - 1).clamp(0, n_bins - 2)
    return bin_centers(n_bins).to(logits.device)[bins]
