"""``vla-adp flops``: the paper's FLOPs trade-off tables (seed paper Tables 5–9, Eq. 19–25).

Defaults reproduce the printed tables; ``--convention consistent`` counts QKᵀ and AV at 2 FLOPs per
MAC each (= a FlopCounterMode count), ``--mode inline`` prices our in-place cut instead of the
reference's extra probe pass, and ``--gamma-from LOG.jsonl`` takes γ from a run's query records (read as the report reads them).
``--family pi05`` (or ``pi0``) prints the flow-matching family's stage table instead
(:mod:`vla_adp.model.pi0.flops`): SigLIP, prefix, action expert × denoising steps, per keep ratio.
"""

from __future__ import annotations

import json

from vla_adp.cost.flops import gamma_from_records
from vla_adp.seam.flops import CONVENTIONS, LAYER_MODES
from vla_adp.cost.tradeoff import SUMS, format_table, trade_off_table
from vla_adp.seam.budget import ROUNDINGS


def add_arguments(p) -> None:
    p.add_argument("--family", choices=("oft", "pi0", "pi05"), default="oft",
                   help="oft: the paper's tables (default); pi0 / pi05: stage table of the published flow-matching shape")
    p.add_argument("--cameras", type=int, default=None, help="pi0/pi05: real cameras (LIBERO: 2 of 3 slots)")
    p.add_argument("--prompt-tokens", type=int, default=None, help="pi0/pi05: real prompt tokens (of 200 / 48 slots)")
    p.add_argument("--keep", type=float, nargs="+", default=[0.3, 0.4, 0.5, 0.6, 0.7],
                   help="keep ratios, one table each (default: 0.3 0.4 0.5 0.6 0.7)")
    p.add_argument("--layers", type=int, nargs="+", default=[0, 2, 4, 8, 16, 24],
                   help="scoring layers, one ADP column each (default: 0 2 4 8 16 24)")
    p.add_argument("--gamma", type=float, default=0.44, help="share of pruned windows (default 0.44, the paper's)")
    p.add_argument("--gamma-from", default=None, metavar="LOG.jsonl",
                   help="measure gamma from a run log's query records instead")
    p.add_argument("--rounding", choices=ROUNDINGS, default="ceil",
                   help="kept visual tokens r(rho*512): ceil (paper tables, default), round (reference code), floor (Eq. 10)")
    p.add_argument("--convention", choices=CONVENTIONS, default="paper",
                   help="paper: 2S^2D attention (tables, default); consistent: 4S^2D (= FlopCounterMode)")
    p.add_argument("--mode", choices=LAYER_MODES, default="probe",
                   help="probe: extra pass through l layers (reference, tables, default); inline: cut before layer l")
    p.add_argument("--text-tokens", type=int, default=32, help="prompt tokens incl. the trailing '▁' (32 gives S=603)")
    p.add_argument("--sums", choices=SUMS, default="exact",
                   help="exact: add unrounded components (reproduces the tables, default); rounded: add two-decimal components")
    p.add_argument("--json", action="store_true", help="print the tables as JSON (unrounded TFLOPs)")


def measured_gamma(path: str) -> float:
    """γ of a run log: the share of pruned queries among those of finished episodes (as the report's)."""
    from vla_adp.eval.logs import read_log

    return gamma_from_records(q.to_dict() for q in read_log(path).all_queries())


def run(args) -> int:
    if args.family != "oft":
        from vla_adp.model.pi0.flops import run_table

        # one cut layer: the first of --layers (0 by default)
        return run_table(args.family, args.keep, args.layers[0], args.json, args.cameras, args.prompt_tokens)
    gamma = measured_gamma(args.gamma_from) if args.gamma_from else args.gamma
    settings = dict(gamma=gamma, rounding=args.rounding, convention=args.convention, mode=args.mode,
                    text_tokens=args.text_tokens, sums=args.sums)
    tables = [(keep, trade_off_table(keep, args.layers, **settings)) for keep in args.keep]
    if args.json:
        out = [{"keep_ratio": keep, **settings, "columns": [c.to_dict() for c in cols]} for keep, cols in tables]
        print(json.dumps(out, indent=2))
        return 0
    for i, (keep, cols) in enumerate(tables):
        title = (f"FLOPs and speedup with keep ratio {keep:g}  (gamma {gamma:.3g}, {args.convention} convention, "
                 f"{args.mode} scoring, k = {args.rounding}(rho*512), {args.sums} sums)")
        print(("\n" if i else "") + format_table(cols, title))
    return 0
