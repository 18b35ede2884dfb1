"""Roofline floors of a policy query: bytes and FLOPs per stage against a named GPU (docs/latency.md).

At batch 1 a stage cannot finish faster than it takes to move its bytes or to do its arithmetic:

    floor(stage) = max(bytes / bandwidth, FLOPs / peak)          (Williams et al., "Roofline", CACM 2009)

and it is *memory-bound* when the first term wins. Pruning visual tokens shortens the decoder's
sequence and so its FLOPs, but every layer's weights are read once per query whatever the length:
once a pruned decoder is memory-bound, keeping fewer tokens no longer makes it faster. The keep ratio
where that happens is :func:`memory_bound_keep`.

Counting conventions (a floor must not overstate the work):

* FLOPs: every matmul at 2 FLOPs per multiply-accumulate, attention QKᵀ and AV included — the
  ``consistent`` convention of :func:`vla_adp.cost.flops.layer_flops`; norms, softmax, RoPE and
  element-wise products left out.
* Bytes: each stage's parameters read once *per call the implementation makes* (our vision backbone
  runs the views one at a time, :class:`~vla_adp.model.vision.FusedFeaturizer`, so its weights are read
  once per view), plus the stage's input and output activations once; intermediate activations, which
  a fused kernel can keep on chip, are left out. Autoregressive decoding also reads the KV cache.
* Peaks: datasheet dense bf16 tensor throughput (no 2:4 sparsity) and DRAM bandwidth, below. Real
  kernels reach ~70–80 % of the FLOP peak (``derate`` scales the peak for a comparison at measured
  rates); the floors are the datasheet ones unless asked.

Shapes: :func:`oft_stages` (OpenVLA-OFT: one parallel-decoding pass, L1 head) and
:func:`openvla_stages` (OpenVLA: prefill, then one decoder step per further action token with a KV
cache, the LM head on each). π0.5 (a PaliGemma prefix and an action expert run for 10 flow steps) is
not modelled yet: add a function returning its :class:`Stage` list and register it in :data:`SHAPES`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from vla_adp.seam.flops import attention_rows_flops, layer_flops, lightvla_flops, scoring_flops
from vla_adp.model.config import LlamaArgs, OFTArgs, VisionTowerArgs

BF16_BYTES = 2


@dataclass(frozen=True)
class GPU:
    """Datasheet peaks of one GPU.

    Args:
        name: the product as its datasheet names it.
        bandwidth_gbs: DRAM bandwidth, GB/s (10⁹ bytes).
        bf16_tflops: dense bf16 tensor-core throughput with fp32 accumulation, TFLOP/s (10¹²).
        source: where the numbers are printed.
    """

    name: str
    bandwidth_gbs: float
    bf16_tflops: float
    source: str

    def __post_init__(self) -> None:
        if self.bandwidth_gbs <= 0 or self.bf16_tflops <= 0:
            raise ValueError(f"GPU {self.name!r}: bandwidth and peak must be positive, got "
                             f"{self.bandwidth_gbs!r} GB/s, {self.bf16_tflops!r} TFLOP/s")

    @property
    def ridge(self) -> float:
        """FLOPs per byte above which a stage is compute-bound."""
        return self.bf16_tflops * 1e12 / (self.bandwidth_gbs * 1e9)


GPUS: dict[str, GPU] = {
    "h100-sxm": GPU("NVIDIA H100 SXM5 80GB", 3350, 989.4,
                    "NVIDIA H100 Tensor Core GPU datasheet (2023): 3.35 TB/s HBM3; BF16 Tensor Core 1,979 TFLOPS "
                    "with sparsity, i.e. 989.4 dense"),
    "h100-pcie": GPU("NVIDIA H100 PCIe 80GB", 2000, 756.0,
                     "NVIDIA H100 Tensor Core GPU datasheet (2023): 2 TB/s HBM2e; BF16 1,513 TFLOPS with sparsity"),
    "h200": GPU("NVIDIA H200 SXM 141GB", 4800, 989.4,
                "NVIDIA H200 Tensor Core GPU datasheet (2024): 4.8 TB/s HBM3e; BF16 Tensor Core 1,979 TFLOPS "
                "with sparsity (the H100's SM, more and faster memory)"),
    "a100": GPU("NVIDIA A100 SXM4 80GB", 2039, 312.0,
                "NVIDIA A100 Tensor Core GPU datasheet (2021): 2,039 GB/s HBM2e; BF16 Tensor Core 312 TFLOPS "
                "(624 with sparsity)"),
    "rtx4090": GPU("NVIDIA GeForce RTX 4090", 1008, 165.2,
                   "NVIDIA Ada Lovelace GPU architecture whitepaper v2.02, Appendix A: 1,008 GB/s GDDR6X; "
                   "peak BF16 Tensor TFLOPS with FP32 accumulate 165.2 (330.4 with sparsity)"),
}


def get_gpu(name: str) -> GPU:
    """A GPU of :data:`GPUS` by key (``h100-sxm``, ``h200``, ...), or a clear error listing them."""
    key = name.lower().replace("_", "-")
    key = {"h100": "h100-sxm", "4090": "rtx4090", "rtx-4090": "rtx4090"}.get(key, key)
    if key not in GPUS:
        raise ValueError(f"unknown GPU {name!r}; expected one of {sorted(GPUS)}")
    return GPUS[key]


@dataclass(frozen=True)
class Stage:
    """One stage of a query: its arithmetic and its minimum DRAM traffic.

    Args:
        parts: sub-stages that run one after another (the decoder's runs of layers at one length);
            the floor is then the sum of theirs, which is tighter than the max over the totals when
            some parts are compute-bound and others memory-bound (FastV: 2 full layers, 30 pruned).
    """

    name: str
    flops: float
    bytes: float
    parts: tuple["Stage", ...] = ()

    def memory_ms(self, gpu: GPU) -> float:
        return 1e3 * self.bytes / (gpu.bandwidth_gbs * 1e9)

    def compute_ms(self, gpu: GPU, derate: float = 1.0) -> float:
        return 1e3 * self.flops / (gpu.bf16_tflops * 1e12 * derate)

    def floor_ms(self, gpu: GPU, derate: float = 1.0) -> float:
        """max(bytes / bandwidth, FLOPs / peak), summed over ``parts`` where there are any."""
        if self.parts:
            return sum(p.floor_ms(gpu, derate) for p in self.parts)
        return max(self.memory_ms(gpu), self.compute_ms(gpu, derate))

    def bound(self, gpu: GPU, derate: float = 1.0) -> str:
        """``memory``, ``compute``, or ``mixed`` when its parts disagree."""
        if self.parts:
            kinds = {p.bound(gpu, derate) for p in self.parts}
            return kinds.pop() if len(kinds) == 1 else "mixed"
        return "memory" if self.memory_ms(gpu) >= self.compute_ms(gpu, derate) else "compute"


# -- parameter counts (pure) -------------------------------------------------------------------
def vit_block_params(t: VisionTowerArgs) -> int:
    """qkv + proj (4W²) and the MLP (2·W·M) of one ViT block; biases and norms left out."""
    return 4 * t.width * t.width + 2 * t.width * t.mlp_hidden


def llm_layer_params(a: LlamaArgs) -> int:
    """Q, O (D² each), K, V (D·N_kv·d each) and the SwiGLU MLP (3·D·M) of one decoder layer."""
    kv = a.n_kv_heads * a.head_dim
    return 2 * a.dim * a.dim + 2 * a.dim * kv + 3 * a.dim * a.ffn_dim


def mlp_params(dims: Sequence[int]) -> int:
    """Weights of a chain of linear layers dims[0] → dims[1] → …"""
    return sum(a * b for a, b in zip(dims[:-1], dims[1:]))


# -- stages ------------------------------------------------------------------------------------
def vision_stage(args: OFTArgs, b: int = BF16_BYTES) -> Stage:
    """Every tower up to its feature block (depth − 1 blocks run), once per view.

    Per block at T tokens (patches + class/register tokens): 2·T·(4W² + 2WM) + 4·T²·W FLOPs.
    """
    flops = params = 0.0
    for t in args.towers:
        tokens = t.n_patches + t.reg_tokens + int(t.class_token)
        blocks = t.feature_block + 1
        patch_embed = 3 * t.patch_size ** 2 * t.width
        flops += blocks * (2 * tokens * vit_block_params(t) + 4 * tokens ** 2 * t.width) + 2 * t.n_patches * patch_embed
        params += blocks * vit_block_params(t) + patch_embed
    pixels = 3 * len(args.towers) * args.image_size ** 2 * 4  # fp32 pixels in
    feats = args.patches_per_image * args.vision_dim * b
    n = args.n_images
    return Stage("vision", n * flops, n * (params * b + pixels + feats))


def projector_stage(args: OFTArgs, b: int = BF16_BYTES) -> Stage:
    """The fused GELU MLP on every visual token (and the proprio projector on one token)."""
    dims = (args.vision_dim, *args.projector_hidden, args.llm.dim)
    v = args.patches_per_image * args.n_images
    params = mlp_params(dims)
    proprio = mlp_params((args.proprio_dim, args.llm.dim, args.llm.dim)) if args.use_proprio else 0
    flops = 2 * v * params + 2 * proprio
    io = v * (args.vision_dim + args.llm.dim) * b
    return Stage("projector", flops, (params + proprio) * b + io)


def llm_stage(llm: LlamaArgs, seq_lens: Sequence[int], b: int = BF16_BYTES) -> Stage:
    """The decoder when layer i runs on ``seq_lens[i]`` tokens: weights once, each run of layers at
    one length reading its input and writing its output once (one part per run)."""
    if len(seq_lens) != llm.n_layers:
        raise ValueError(f"need one sequence length per layer ({llm.n_layers}), got {len(seq_lens)}")
    parts, start = [], 0
    for i in range(1, len(seq_lens) + 1):
        if i == len(seq_lens) or seq_lens[i] != seq_lens[start]:
            s, n = seq_lens[start], i - start
            parts.append(Stage(f"layers {start}-{i - 1}", n * layer_flops(s, llm.dim, llm.ffn_dim, "consistent"),
                               n * llm_layer_params(llm) * b + 2 * s * llm.dim * b))
            start = i
    return Stage("llm", sum(p.flops for p in parts), sum(p.bytes for p in parts),
                 tuple(parts) if len(parts) > 1 else ())


def head_stage(args: OFTArgs, b: int = BF16_BYTES) -> Stage:
    """The L1 MLP-ResNet on the chunk's action hidden states (chunk rows of action_dim·D)."""
    d_in, h = args.action_dim * args.llm.dim, args.head_hidden
    params = d_in * h + args.head_blocks * h * h + h * args.action_dim
    return Stage("head", 2 * args.chunk * params, params * b + args.n_action_slots * args.llm.dim * b)


def scoring_stage(llm: LlamaArgs, scorer: str, n_visual: int, n_text: int, seq_len: int,
                  n_action: int = 56, b: int = BF16_BYTES) -> Stage:
    """The pruner's scoring (before the cut): its matmuls and the projection weights it reads.

    ``adp`` (fused Φ, Eq. 22 with the text mean projected once) and ``adp:exact`` read W_Q and W_K of
    the scoring layer; ``fastv`` recomputes one query row's attention, ``vla_pruner`` the action slots'
    (both read W_Q, W_K); ``lightvla`` is parameter-free (activations only); ``random``/``inverse``
    cost nothing here (inverse selection scores as ADP does).
    """
    d, kv = llm.dim, llm.n_kv_heads * llm.head_dim
    proj = (d * d + d * kv) * b
    if scorer in ("adp", "inverse"):
        return Stage("scoring", scoring_flops(llm, n_text, n_visual, "fused"), proj + seq_len * d * b)
    if scorer == "adp:exact":
        return Stage("scoring", scoring_flops(llm, n_text, n_visual, "exact"), proj + seq_len * d * b)
    if scorer == "fastv":
        return Stage("scoring", attention_rows_flops(llm, 1, seq_len), proj + seq_len * d * b)
    if scorer == "vla_pruner":
        return Stage("scoring", attention_rows_flops(llm, n_action, seq_len), proj + seq_len * d * b)
    if scorer == "lightvla":
        return Stage("scoring", lightvla_flops(n_visual, n_text, d), (n_visual + n_text) * d * b)
    if scorer in ("random", "none"):
        return Stage("scoring", 0.0, 0.0)
    raise ValueError(f"unknown scorer {scorer!r}; expected adp, adp:exact, inverse, fastv, vla_pruner, lightvla, "
                     "random or none")


def gather_stage(llm: LlamaArgs, seq_len: int, kept_len: int, b: int = BF16_BYTES) -> Stage:
    """Reading the full sequence and writing the kept one (no arithmetic)."""
    return Stage("gather", 0.0, (seq_len + kept_len) * llm.dim * b if kept_len < seq_len else 0.0)


# -- whole queries -----------------------------------------------------------------------------
def oft_seq_len(args: OFTArgs, n_prompt: int) -> int:
    """BOS + visual + proprio + prompt (incl. '▁') + action slots + </s> (603 on LIBERO, 32-token prompt)."""
    return 1 + args.patches_per_image * args.n_images + int(args.use_proprio) + n_prompt + args.n_action_slots + 1


def oft_stages(args: OFTArgs, n_prompt: int = 32, kept: int | None = None, prune_layer: int = 0,
               scorer: str = "adp", seq_lens: Sequence[int] | None = None) -> list[Stage]:
    """Stages of one OpenVLA-OFT query (vision, projector, scoring, gather, llm, head).

    Args:
        kept: visual tokens kept (None: unpruned, no scoring or gather).
        prune_layer: the cut happens before this decoder layer (ADP 0, FastV K = 2, ...).
        scorer: the pruner's scoring cost (:func:`scoring_stage`).
        seq_lens: per-layer lengths measured in a run; overrides ``kept``/``prune_layer`` for the LLM.
    """
    s = oft_seq_len(args, n_prompt)
    v = args.patches_per_image * args.n_images
    if kept is not None and not 0 <= kept <= v:
        raise ValueError(f"kept visual tokens must be in [0, {v}], got {kept!r}")
    n = args.llm.n_layers
    if not 0 <= prune_layer < n:
        raise ValueError(f"prune_layer must be in [0, {n - 1}], got {prune_layer!r}")
    pruned = s if kept is None else s - v + kept
    lens = list(seq_lens) if seq_lens is not None else [s] * prune_layer + [pruned] * (n - prune_layer)
    stages = [vision_stage(args), projector_stage(args)]
    if kept is not None or (seq_lens is not None and lens[-1] < s):
        stages += [scoring_stage(args.llm, scorer, v, n_prompt + 2, s, args.n_action_slots),
                   gather_stage(args.llm, s, lens[-1])]
    return stages + [llm_stage(args.llm, lens), head_stage(args)]


def openvla_stages(args: OFTArgs, n_prompt: int = 20, kept: int | None = None, action_tokens: int = 7,
                   scorer: str = "adp") -> list[Stage]:
    """Stages of one OpenVLA query: one view, prefill, then ``action_tokens − 1`` single-token steps.

    The prefill's last logits give the first action token; each later token is one decoder step at
    batch 1 that reads every weight, the LM head and the KV cache of the context so far — pruning
    shortens the prefill and the cache, not the weights each step reads.
    """
    llm, b = args.llm, BF16_BYTES
    v = args.patches_per_image * args.n_images
    s = 1 + v + n_prompt
    ctx = s if kept is None else s - v + kept
    lm_head = llm.dim * llm.vocab_size
    stages = [vision_stage(args), projector_stage(args)]
    if kept is not None:
        stages += [scoring_stage(llm, scorer, v, n_prompt + 1, s), gather_stage(llm, s, ctx)]
    prefill = llm_stage(llm, [ctx] * llm.n_layers)
    stages.append(Stage("prefill", prefill.flops + 2 * lm_head, prefill.bytes + lm_head * b))
    kv = 2 * llm.n_kv_heads * llm.head_dim
    decode_flops = decode_bytes = 0.0
    for step in range(1, action_tokens):
        context = ctx + step
        step_flops = sum(layer_flops(1, llm.dim, llm.ffn_dim, "consistent") for _ in range(llm.n_layers))
        step_flops += llm.n_layers * 4 * context * llm.dim + 2 * lm_head  # q·K and p·V over the cache
        decode_flops += step_flops
        decode_bytes += (llm.n_layers * (llm_layer_params(llm) + context * kv) + lm_head) * b
    stages.append(Stage("decode", decode_flops, decode_bytes))
    return stages


@dataclass(frozen=True)
class QueryShape:
    """A named policy query for `vla-adp bench --predict`.

    Args:
        title: one line for the report.
        args: the model's shapes (:class:`~vla_adp.model.config.OFTArgs`).
        stages: ``stages(args, kept=None | int, scorer=..., [prune_layer=...]) -> list[Stage]``.
        cut_layers: (pruner, decoder layer it cuts before, scorer) rows the report shows at every keep
            ratio: ADP cuts before layer 0, FastV (K = 2) before layer 2; layer 0 passes no ``prune_layer``.
    """

    title: str
    args: Callable[[], OFTArgs]
    stages: Callable[..., list[Stage]]
    cut_layers: tuple[tuple[str, int, str], ...] = (("adp", 0, "adp"),)


def _oft_args() -> OFTArgs:
    from vla_adp.model.config import openvla_7b_args

    return openvla_7b_args(n_images=2)


def _openvla_args() -> OFTArgs:
    from vla_adp.model.config import openvla_7b_args

    return openvla_7b_args(n_images=1)


# Named query shapes. π0.5 (PaliGemma prefix + action expert, 10 flow-matching steps) goes here once
# a ``pi05_stages`` function returns its Stage list.
SHAPES: dict[str, QueryShape] = {
    "oft": QueryShape("OpenVLA-OFT (LIBERO: 2 views, proprio, 56 action slots, one parallel pass)", _oft_args,
                      oft_stages, (("adp", 0, "adp"), ("fastv", 2, "fastv"))),
    "openvla": QueryShape("OpenVLA (1 view, prefill + 6 single-token steps with a KV cache)", _openvla_args,
                          openvla_stages, (("adp", 0, "adp"),)),
}


def total(stages: Sequence[Stage], gpu: GPU, derate: float = 1.0) -> float:
    """Floor of the whole query: the stages run one after another, so their floors add."""
    return sum(st.floor_ms(gpu, derate) for st in stages)


def memory_bound_keep(args: OFTArgs, gpu: GPU, n_prompt: int = 32, derate: float = 1.0) -> float:
    """The keep ratio below which an OFT decoder pruned before layer 0 is memory-bound.

    Below it the LLM floor is the weight read, so keeping fewer tokens saves nothing more there.
    Found by bisection on the LLM stage's compute time vs its memory time: the smallest kept share at
    which it is still compute-bound. 1.0 when even the unpruned decoder is memory-bound; 0.0 when it
    stays compute-bound with every visual token cut.
    """
    v = args.patches_per_image * args.n_images

    def compute_bound(kept: int) -> bool:
        st = llm_stage(args.llm, [oft_seq_len(args, n_prompt) - v + kept] * args.llm.n_layers)
        return st.compute_ms(gpu, derate) > st.memory_ms(gpu)

    if not compute_bound(v):
        return 1.0
    lo, hi = 0, v  # compute_bound(hi) is True
    if compute_bound(0):
        return 0.0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if compute_bound(mid) else (mid, hi)
    return hi / v
