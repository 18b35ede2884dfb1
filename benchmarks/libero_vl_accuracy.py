"""Does a policy answer the scene-text questions of held-out placements? (the vision-language stage's check)

For each checkpoint, the held-out placements of a ``vla-adp collect libero-vl`` dataset (placement
index a multiple of ``--holdout-every``, never trained on), up to ``--pairs`` per text form, evenly
spaced: the share of answers decoded exactly (``lm_head`` on the rows the action head reads, every
token and ``</s>``), the token accuracy, and the exact-match rate of always giving the form's most
common training answer (the bar a model that ignores the image clears). The same numbers
``vla-adp train --stage vl`` prints at its end, here for any checkpoint (weights as saved, bf16).

    PYTHONPATH=src python benchmarks/libero_vl_accuracy.py --data data/libero_vl \\
        --checkpoint src/vla_adp/assets/libero_policy runs/libero_vl
"""

from __future__ import annotations

import argparse
import sys
import tempfile

import torch

from vla_adp.train.vl_stage import VLTrainConfig, VLTrainer


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="scene-text folder from `vla-adp collect libero-vl`")
    p.add_argument("--checkpoint", nargs="+", required=True)
    p.add_argument("--pairs", type=int, default=200, help="held-out pairs per form")
    p.add_argument("--holdout-every", type=int, default=10)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    print("| checkpoint | form | held-out pairs | exact | tokens | majority answer |")
    print("|---|---|---|---|---|---|")
    for ckpt in args.checkpoint:
        with tempfile.TemporaryDirectory() as out:
            cfg = VLTrainConfig(args.data, out, init=ckpt, eval_pairs=args.pairs, holdout_every=args.holdout_every)
            for form, a in VLTrainer(cfg, progress=False).accuracy().items():
                print(f"| {ckpt} | {form} | {a['n']} | {100 * a['exact']:.1f} % | {100 * a['token']:.1f} % | "
                      f"{100 * a['majority']:.1f} % |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
