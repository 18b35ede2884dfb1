"""Analytic FLOPs of one π0 / π0.5 query: SigLIP per camera, the PaliGemma prefix once, the action
expert once per denoising step (π0 paper §3: the prefix cache is reused across the 10 steps).

Every matmul counts 2 FLOPs per multiply-accumulate (the ``consistent`` convention of
:mod:`vla_adp.cost.flops`), so the count equals ``torch.utils.flop_counter.FlopCounterMode`` on
:class:`vla_adp.model.pi0.Pi0Model` (tested); norms, RoPE, softmax and activations are left out.
With H query heads of size d, K kv heads, width D, MLP width M, S tokens attending to T keys:

    Gemma layer   2·S·D·(H·d) + 2·2·S·D·(K·d) + 2·S·(H·d)·D   q, k, v, o
                + 2·S·T·(H·d) · 2                            QKᵀ and AV (eager, per query head)
                + 3 · 2·S·D·M                                 GeGLU gate, up, down
                + adaRMS (π0.5 expert): 3 · 2·D·3D per sample  two layer norms + (final norm once)
    SigLIP layer  4 · 2·N·W² + 2 · 2·N²·W + 2 · 2·N·W·M_v      (N = T = patches)

Pruning the prefix from VLM layer ℓ on (``prefix_lens``) shortens S = T at those prefix layers and T
for the expert at the same layers; SigLIP runs on every patch of every camera slot that is present in
some batch row (LeRobot also runs it on the empty slot; ``cameras`` counts what runs here).
The stages stay the family's own: the seam's :mod:`vla_adp.seam.flops` describes one decoder at one length.
"""

from __future__ import annotations

from dataclasses import dataclass

from vla_adp.model.pi0.config import GemmaArgs, Pi0Args, SiglipArgs


def gemma_layer_flops(g: GemmaArgs, s: int, t: int) -> int:
    """One Gemma layer: ``s`` query tokens attending to ``t`` keys (``t`` includes cached ones)."""
    hd, kvd = g.num_heads * g.head_dim, g.num_kv_heads * g.head_dim
    proj = 2 * s * g.width * hd * 2 + 2 * s * g.width * kvd * 2
    attn = 2 * 2 * s * t * hd
    return proj + attn + 3 * 2 * s * g.width * g.mlp_dim


def siglip_flops(v: SiglipArgs) -> int:
    """One image through the tower (patch embedding + every block)."""
    n, w = v.num_patches, v.width
    layer = 4 * 2 * n * w * w + 2 * 2 * n * n * w + 2 * 2 * n * w * v.mlp_dim
    return 2 * n * 3 * v.patch_size ** 2 * w + v.depth * layer


@dataclass(frozen=True)
class Pi0Flops:
    """FLOPs of one query, by stage."""

    vision: int
    projector: int
    prefix: int
    expert_step: int
    steps: int

    @property
    def expert(self) -> int:
        return self.steps * self.expert_step

    @property
    def total(self) -> int:
        return self.vision + self.projector + self.prefix + self.expert

    def to_dict(self) -> dict:
        return {"vision": self.vision, "projector": self.projector, "prefix": self.prefix,
                "expert_step": self.expert_step, "steps": self.steps, "expert": self.expert, "total": self.total}


def expert_step_flops(a: Pi0Args, prefix_lens: list[int]) -> int:
    """One denoising step: suffix embedding, the expert's layers over [cached prefix, suffix], output."""
    e, s = a.expert, a.suffix_len
    layers = sum(gemma_layer_flops(e, s, p + s) for p in prefix_lens)
    embed = 2 * a.chunk_size * a.max_action_dim * e.width + 2 * a.chunk_size * e.width * a.max_action_dim
    if a.pi05:  # time MLP (2 linears on one vector) + adaRMS dense (2 per layer + final) per sample
        cond = 2 * 2 * e.width * e.width + (2 * e.depth + 1) * 2 * e.width * 3 * e.width
    else:  # state token + action-time MLP over the chunk
        cond = 2 * a.max_state_dim * e.width + 2 * a.chunk_size * (2 * e.width * e.width + e.width * e.width)
    return layers + embed + cond


def pi0_flops(a: Pi0Args, prefix_lens: list[int] | None = None, steps: int | None = None,
              cameras: int | None = None) -> Pi0Flops:
    """FLOPs of ``sample_actions`` for batch 1; ``prefix_lens[i]`` = prefix tokens at VLM layer i;
    ``cameras`` present (the model skips SigLIP on a slot masked in every row; default: all)."""
    full = a.prefix_len
    prefix_lens = prefix_lens or [full] * a.vlm.depth
    if len(prefix_lens) != a.vlm.depth or any(not 0 < p <= full for p in prefix_lens):
        raise ValueError(f"need {a.vlm.depth} prefix lengths in 1..{full}, got {prefix_lens}")
    cameras = a.n_cameras if cameras is None else cameras
    n = a.vision.num_patches * cameras
    return Pi0Flops(
        vision=cameras * siglip_flops(a.vision),
        projector=2 * n * a.vision.width * a.vlm.width,
        prefix=sum(gemma_layer_flops(a.vlm, p, p) for p in prefix_lens),
        expert_step=expert_step_flops(a, prefix_lens),
        steps=steps or a.num_steps,
    )


def pruned_prefix_lens(a: Pi0Args, keep_ratio: float, layer: int, cameras: int | None = None,
                       prompt_tokens: int | None = None) -> list[int]:
    """Prefix lengths when ``round(keep_ratio · image tokens)`` image tokens stay from ``layer`` on.

    ``cameras`` / ``prompt_tokens`` (real ones; default: every slot) also drop the masked camera slots
    and prompt padding, which changes no output (what :meth:`vla_adp.model.pi0.Pi0Model.prefix` leaves out).
    """
    if not 0 < keep_ratio <= 1:
        raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio}")
    if not 0 <= layer < a.vlm.depth:
        raise ValueError(f"layer must be in 0..{a.vlm.depth - 1}, got {layer}")
    cameras = a.n_cameras if cameras is None else cameras
    prompt_tokens = a.tokenizer_max_length if prompt_tokens is None else prompt_tokens
    if not 1 <= cameras <= a.n_cameras or not 1 <= prompt_tokens <= a.tokenizer_max_length:
        raise ValueError(f"need 1..{a.n_cameras} cameras and 1..{a.tokenizer_max_length} prompt tokens, "
                         f"got {cameras} and {prompt_tokens}")
    images = a.vision.num_patches * cameras
    kept = prompt_tokens + max(1, round(keep_ratio * images))
    return [a.prefix_len] * layer + [kept] * (a.vlm.depth - layer)


def parameter_counts(a: Pi0Args) -> dict[str, int]:
    """Parameters per tower, counted on the meta device (nothing is allocated)."""
    import torch

    from vla_adp.model.pi0.pi0 import Pi0Model

    with torch.device("meta"):
        m = Pi0Model(a)
    count = lambda mod: sum(p.numel() for p in mod.parameters())  # noqa: E731
    towers = {"vision": count(m.vision) + count(m.projector), "vlm": count(m.vlm), "expert": count(m.expert)}
    towers["heads"] = count(m) - sum(towers.values())
    towers["total"] = count(m)
    return towers


def format_pi0_table(a: Pi0Args, keeps: list[float], layer: int, cameras: int | None = None,
                     prompt_tokens: int | None = None) -> str:
    """The stage table for the unpruned model and each keep ratio (TFLOPs per query); with
    ``cameras`` / ``prompt_tokens``, also the lossless drop of masked tokens, and the ratios on top."""
    base = pi0_flops(a)
    real = cameras is not None or prompt_tokens is not None
    rows = [("keep 1 (unpruned)", base)]
    if real:
        rows.append(("drop masked tokens", pi0_flops(a, pruned_prefix_lens(a, 1.0, layer, cameras, prompt_tokens),
                                                     cameras=cameras)))
    rows += [(f"keep {k:g} from layer {layer}", pi0_flops(a, pruned_prefix_lens(a, k, layer, cameras, prompt_tokens),
                                                          cameras=cameras)) for k in keeps]
    head = (f"{'':26}{'SigLIP':>8}{'proj':>7}{'prefix':>8}{'expert/step':>12}{'expert x' + str(base.steps):>11}"
            f"{'total':>8}{'speedup':>9}")
    lines = [head]
    for name, f in rows:
        t = [x / 1e12 for x in (f.vision, f.projector, f.prefix, f.expert_step, f.expert, f.total)]
        lines.append(f"{name:26}{t[0]:8.3f}{t[1]:7.3f}{t[2]:8.3f}{t[3]:12.4f}{t[4]:11.3f}{t[5]:8.3f}"
                     f"{base.total / f.total:9.3f}")
    return "\n".join(lines)


def run_table(family: str, keeps: list[float], layer: int, as_json: bool = False, cameras: int | None = None,
              prompt_tokens: int | None = None) -> int:
    """``vla-adp flops --family pi0|pi05``: parameters and the stage table of the published shape."""
    import json

    from vla_adp.model.pi0.config import published_args

    a = published_args(family)
    for k in keeps:
        pruned_prefix_lens(a, k, layer, cameras, prompt_tokens)  # validates before printing anything
    counts = parameter_counts(a)
    if as_json:
        rows = {"unpruned": pi0_flops(a).to_dict(),
                **{str(k): pi0_flops(a, pruned_prefix_lens(a, k, layer, cameras, prompt_tokens), cameras=cameras).to_dict()
                   for k in keeps}}
        print(json.dumps({"family": family, "layer": layer, "parameters": counts, "flops": rows}, indent=2))
        return 0
    print(f"{family}: {a.n_cameras} cameras x {a.vision.num_patches} image tokens + {a.tokenizer_max_length} prompt "
          f"tokens = {a.prefix_len} prefix tokens; suffix {a.suffix_len} tokens; {a.num_steps} Euler steps")
    print("parameters: " + ", ".join(f"{k} {v / 1e6:,.1f} M" for k, v in counts.items()))
    print(f"TFLOPs per query (2 FLOPs per multiply-accumulate; image tokens pruned in the prefix from layer {layer}):")
    if cameras is not None or prompt_tokens is not None:
        print(f"real input: {cameras or a.n_cameras} cameras, {prompt_tokens or a.tokenizer_max_length} prompt tokens; "
              "masked slots are dropped first (lossless), the keep ratio applies to the real image tokens")
    print(format_pi0_table(a, keeps, layer, cameras, prompt_tokens))
    return 0
