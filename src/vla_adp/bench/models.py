"""Random-weight OpenVLA-OFT models and synthetic queries for the latency benchmark.

Three shapes, all with the real LIBERO token counts — two 224-px views of 16×16 patches (512 visual
tokens), one proprio token, a 32-token prompt incl. the trailing '▁' (the paper's L_txt), 56 action
slots and </s>: 1 + 512 + 1 + 32 + 56 + 1 = 603 tokens (docs/reference.md §2, paper Tables 5–9):

* ``7b``: the published shapes (:func:`~vla_adp.model.config.openvla_7b_args`), GPU only.
* ``scaled``: every width ÷ 4 and every depth ÷ 4 of the 7B: decoder D=1024, M=2752 (the 7B's
  M/D = 11008/4096), 8 layers of 8 heads × 128 (the 7B's head size), DINOv2 256×6, SigLIP 288×7,
  projector and action head ÷ 4. Per-token FLOPs of each part shrink by ~64, so the shares of vision,
  LLM and head stay close to the 7B's, while one CPU thread runs a query in about a second.
  One thing does not scale alike: a layer-0 scorer costs a share of *one* layer, and the scaled
  decoder has 8 layers instead of 32, so its scoring share is ~4× the 7B's (the report says so).
* ``tiny``: :func:`~vla_adp.model.tiny.tiny_args` (the test checkpoints: D=64, 2 layers).

``family="openvla"`` builds autoregressive OpenVLA (:mod:`vla_adp.model.openvla`) of the same towers,
projector and decoder, with one 224-px image as ``openvla/openvla-7b`` (256 visual tokens, no proprio,
no action slots: 1 + 256 + 32 = 289 prefill tokens) and seven greedy action tokens decoded after it.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace

import numpy as np
import torch

from vla_adp.constants import BOS_ID, get_platform
from vla_adp.model.config import LlamaArgs, OFTArgs, VisionTowerArgs, openvla_7b_args
from vla_adp.model.openvla.config import OpenVLAArgs
from vla_adp.model.openvla.openvla import OpenVLA, OpenVLAInputs
from vla_adp.model.openvla_oft import OFTInputs, OpenVLAOFT

MODELS = ("tiny", "scaled", "7b")
PROMPT_TOKENS = 32  # the paper's L_txt on LIBERO (incl. the trailing '▁'): 603 tokens in all
TINY_VOCAB = 384


def scaled_args(width_div: int = 4, depth_div: int = 4) -> OFTArgs:
    """The 7B's shapes with widths ÷ ``width_div`` and depths ÷ ``depth_div`` (head size kept)."""
    full = openvla_7b_args()
    towers = tuple(_scale_tower(t, width_div, depth_div) for t in full.towers)
    f = full.llm
    llm = LlamaArgs(dim=f.dim // width_div, n_layers=f.n_layers // depth_div, n_heads=f.n_heads // width_div,
                    n_kv_heads=f.n_kv_heads // width_div, ffn_dim=f.ffn_dim // width_div, vocab_size=f.vocab_size)
    vision = sum(t.width for t in towers)
    return replace(full, towers=towers, llm=llm, projector_hidden=(4 * vision, llm.dim), head_hidden=llm.dim)


def _scale_tower(t: VisionTowerArgs, width_div: int, depth_div: int) -> VisionTowerArgs:
    width, heads = t.width // width_div, t.heads // width_div
    return replace(t, width=width, heads=heads, depth=max(2, t.depth // depth_div), mlp_hidden=t.mlp_hidden // width_div)


def model_args(name: str) -> OFTArgs:
    """OFTArgs of a benchmark model: ``tiny``, ``scaled`` or ``7b``."""
    if name == "7b":
        return openvla_7b_args()
    if name == "scaled":
        return scaled_args()
    if name == "tiny":
        from vla_adp.model.tiny import tiny_args

        return tiny_args(TINY_VOCAB, get_platform("libero"))
    raise ValueError(f"benchmark model must be one of {MODELS}, got {name!r}")


def openvla_args(name: str) -> OpenVLAArgs:
    """OpenVLA with the towers, projector and decoder of benchmark model ``name``, one image (as openvla-7b)."""
    a = model_args(name)
    return OpenVLAArgs(towers=a.towers, llm=a.llm, projector_hidden=a.projector_hidden, n_images=1,
                       pad_to_multiple_of=a.pad_to_multiple_of)


# family -> (args of a benchmark model, the model class); families without a benchmark model are refused
BENCH_MODELS = {"oft": (model_args, OpenVLAOFT), "openvla": (openvla_args, OpenVLA)}


@contextmanager
def _default_dtype(dtype: torch.dtype):
    saved = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(saved)


def build_model(name: str, dtype: torch.dtype, device: str = "cpu", seed: int = 0, family: str = "oft"):
    """A random-weight model of ``family`` built directly in ``dtype`` on ``device`` (no fp32 copy of the 7B).

    Weights use the modules' default initialisations (finite, no denormal-heavy tensors); timing
    does not depend on their values.
    """
    if family not in BENCH_MODELS:
        raise ValueError(f"no benchmark model for family {family!r}; the benchmark builds {sorted(BENCH_MODELS)}")
    if name == "7b" and torch.device(device).type == "cpu":
        raise ValueError("the full 7B model is benchmarked on a GPU only (--device cuda); on the CPU use --model scaled")
    make_args, cls = BENCH_MODELS[family]
    torch.manual_seed(seed)
    with _default_dtype(dtype), torch.device(device):
        model = cls(make_args(name))
    return model.eval()


def synthetic_inputs(args: OFTArgs | OpenVLAArgs, device: str = "cpu", n_prompt: int = PROMPT_TOKENS,
                     seed: int = 0) -> OFTInputs | OpenVLAInputs:
    """Model inputs of the real shapes: normalised pixels, BOS + ``n_prompt`` ids, a proprio state (OFT)."""
    if n_prompt < 1:
        raise ValueError(f"the prompt needs at least one token (the trailing '▁'), got n_prompt={n_prompt!r}")
    g = torch.Generator().manual_seed(seed)
    channels = 3 * len(args.towers) * args.n_images
    pixels = torch.randn(1, channels, args.image_size, args.image_size, generator=g)
    n_real = args.llm.vocab_size - args.pad_to_multiple_of
    ids = torch.randint(3, max(4, n_real), (1, n_prompt), generator=g)
    ids = torch.cat([torch.tensor([[BOS_ID]]), ids], dim=1)
    if isinstance(args, OpenVLAArgs):
        return OpenVLAInputs(pixels.to(device), ids.to(device))
    proprio = torch.randn(1, args.proprio_dim, generator=g) if args.use_proprio else None
    return OFTInputs(pixels.to(device), ids.to(device), None if proprio is None else proprio.to(device))


def synthetic_images(args: OFTArgs, size: int = 256, seed: int = 0) -> list[np.ndarray]:
    """Raw uint8 camera frames as LIBERO renders them (256 px), for the transforms stage."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(args.n_images)]


def build_model_on_device(name: str, dtype: torch.dtype, device: str, seed: int = 0) -> OpenVLAOFT:
    """A random-weight model allocated straight on ``device``: built on the meta device (no memory,
    no initialisers run), ``to_empty`` there, then filled by :func:`init_random_` — no 15 GB file and
    no host copy of the 7B."""
    with _default_dtype(dtype), torch.device("meta"):
        model = OpenVLAOFT(model_args(name))
    buffers = [n for n, _ in model.named_buffers()]
    if buffers:  # to_empty leaves them uninitialised and we would not know what to fill in
        raise ValueError(f"the {name} model has buffers {buffers[:5]}; init_random_ does not know how to fill them")
    model = model.to_empty(device=device)
    init_random_(model, seed)
    return model.eval()


@torch.no_grad()
def init_random_(model: torch.nn.Module, seed: int = 0) -> None:
    """Weights of the scale the modules' own initialisers give, drawn on the model's device.

    Matrices U(−1/√fan_in, 1/√fan_in) (nn.Linear's bound), embeddings and ViT position/prefix tokens
    N(0, 0.02²), norm weights 1, biases 0, LayerScale γ 0.1: activations stay finite through the 7B in
    bf16; timing does not depend on the values.
    """
    first = next(model.parameters())
    g = torch.Generator(device=first.device).manual_seed(seed)
    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "gamma":
            p.fill_(0.1)
        elif p.dim() == 1:
            p.fill_(1.0 if leaf == "weight" else 0.0)
        elif "embed_tokens" in name or leaf in ("pos_embed", "cls_token", "reg_token"):
            p.normal_(0.0, 0.02, generator=g)
        else:
            bound = 1.0 / (p[0].numel() ** 0.5)
            p.uniform_(-bound, bound, generator=g)
