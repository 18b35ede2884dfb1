"""``vla-adp viz overlay|video|timeline|tradeoff|tables``: pictures and tables from run logs.

Everything reads JSONL logs (:mod:`vla_adp.eval.schema`); ``overlay`` and ``video`` also need the
camera frames (PNG files, an observation file, or an ``.npz`` of an episode's frames).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vla_adp.utils.files import read_json
from vla_adp.viz.overlay import ImagePipeline, OverlayConfig

SUBCOMMANDS = ("overlay", "video", "timeline", "tradeoff", "tables")


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="viz_command", metavar="WHAT", required=True)
    _overlay_args(sub.add_parser("overlay", help="kept/pruned patches of one logged query drawn on its frames"))
    _video_args(sub.add_parser("video", help="episode mp4 from saved frames and the episode's log"))
    _timeline_args(sub.add_parser("timeline", help="gate timeline PNG per episode"))
    _tradeoff_args(sub.add_parser("tradeoff", help="success vs expected FLOPs / speedup per configuration"))
    _tables_args(sub.add_parser("tables", help="per-task table (paper Tables 10-13) or inversion table (Table 4)"))


# -- shared options ----------------------------------------------------------------------------
def _log_arg(p) -> None:
    p.add_argument("--log", nargs="+", required=True, help="JSONL log files or folders (merged)")


def _select_args(p) -> None:
    p.add_argument("--config", default=None,
                   help="method: method/config hash prefix or label (e.g. 'adp ρ=0.5', 'unpruned')")
    p.add_argument("--suite", default=None)
    p.add_argument("--task-id", type=int, default=None)
    p.add_argument("--episode", type=int, default=None)


def _pipeline_args(p) -> None:
    g = p.add_argument_group("image pipeline (how the frames became the model's input)")
    g.add_argument("--image-size", type=int, default=224, help="model input side (default 224)")
    g.add_argument("--patch-size", type=int, default=14, help="ViT patch side (default 14)")
    g.add_argument("--crop-area", type=float, default=0.9, help="center-crop area share (default 0.9)")
    g.add_argument("--no-center-crop", action="store_true", help="the policy ran without the center crop")
    g.add_argument("--rotate-180", action="store_true",
                   help="frames are the raw renders, upside down (LIBERO); the policy turned them by 180°")
    g = p.add_argument_group("drawing")
    g.add_argument("--overlay-config", default=None,
                   help="JSON file with color/alpha/fps (reference names overlay_pruned_color, "
                        "overlay_pruned_alpha, video_fps accepted)")
    g.add_argument("--color", default=None, help="R,G,B tint of pruned patches (default 0,0,255)")
    g.add_argument("--alpha", type=int, default=None, help="tint opacity 0..255 (default 120)")
    g.add_argument("--fps", type=int, default=None, help="video frames per second (default 10)")
    g.add_argument("--outline", action="store_true", help="draw the patch grid")


def _overlay_config(args) -> OverlayConfig:
    data = {}
    if args.overlay_config:
        data = read_json(args.overlay_config, "overlay config")
    if args.color is not None:
        try:
            data["color"] = [int(c) for c in args.color.split(",")]
        except ValueError:
            raise ValueError(f"--color must be R,G,B integers, got {args.color!r}") from None
    for name in ("alpha", "fps"):
        if getattr(args, name, None) is not None:
            data[name] = getattr(args, name)
    data["outline"] = args.outline or data.get("outline", False)
    return OverlayConfig.from_dict(data)


def _pipeline(args, frame: np.ndarray) -> ImagePipeline:
    return ImagePipeline(model_size=args.image_size, patch_size=args.patch_size,
                         crop_area=None if args.no_center_crop else args.crop_area,
                         raw_size=tuple(frame.shape[:2]), rotate_180=args.rotate_180)


def _configs(log, args) -> set[str] | None:
    """Config hashes of the method ``--config`` names (``None`` = all)."""
    from vla_adp.report.summary import methods, resolve_method

    return methods(log)[resolve_method(log, args.config)] if args.config else None


# -- overlay -----------------------------------------------------------------------------------
def _overlay_args(p) -> None:
    _log_arg(p)
    _select_args(p)
    p.add_argument("--query", type=int, default=None, help="query index within the episode")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--frame", nargs="+", help="PNG/JPEG frame per camera, in the policy's camera order")
    src.add_argument("--obs", help=".npz/.json observation (full_image, wrist_image...)")
    src.add_argument("--frames", help="episode frames .npz (as for `viz video`; EpisodeRecorder(frames_path=...)): "
                                      "the frame at the query's step is used")
    p.add_argument("--out", required=True, help="output PNG")
    _pipeline_args(p)


def read_frames(args, step: int) -> list[np.ndarray]:
    """The cameras' frames for a query at env ``step`` from --frame, --obs or --frames."""
    if args.frames:
        frames, steps = read_episode_frames(args.frames)
        steps = steps if steps is not None else list(range(len(next(iter(frames.values())))))
        if step not in steps:
            raise ValueError(f"{args.frames} has no frame at step {step} (steps {steps[0]}..{steps[-1]})")
        return [a[steps.index(step)] for a in frames.values()]
    if args.frame:
        from PIL import Image

        frames = []
        for f in args.frame:
            if not Path(f).is_file():
                raise FileNotFoundError(f"frame not found: {f}")
            frames.append(np.asarray(Image.open(f).convert("RGB")))
        return frames
    from vla_adp.commands.predict import read_obs
    from vla_adp.policy import camera_keys

    obs = read_obs(args.obs, None)
    return [np.asarray(obs[k]) for k in camera_keys(obs) if k in obs]


def _require_indices(queries) -> None:
    missing = [q.query for q in queries if q.pruned and q.kept_indices is None]
    if missing:
        raise ValueError(f"queries {missing} ran pruned but their log lines carry no kept_indices, so there is "
                         "nothing to draw; log them (the evaluation runner's --log-indices)")


def _one(items: list, what: str, args) -> object:
    if len(items) != 1:
        given = {k: getattr(args, k) for k in ("config", "suite", "task_id", "episode", "query") if getattr(args, k, None) is not None}
        raise ValueError(f"{len(items)} {what} match {given or 'no filter'}; narrow it down with --config/--suite/"
                         f"--task-id/--episode{'/--query' if what == 'queries' else ''}")
    return items[0]


def run_overlay(args) -> int:
    from vla_adp.eval.logs import read_logs, select_queries
    from vla_adp.viz.video import compose_frame

    log = read_logs(args.log)
    q = _one(select_queries(log, _configs(log, args), suite=args.suite, task_id=args.task_id,
                            episode=args.episode, query=args.query), "queries", args)
    _require_indices([q])
    frames = read_frames(args, q.step)
    if q.kept_indices is not None and len(q.kept_indices) != len(frames):
        raise ValueError(f"the query kept tokens of {len(q.kept_indices)} cameras; {len(frames)} frames given")
    image = compose_frame(frames, q.to_dict(), [_pipeline(args, f) for f in frames], _overlay_config(args), q.step)
    from PIL import Image

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(args.out)
    state = "unpruned (nothing tinted)" if q.kept_indices is None else f"kept {q.kept_visual}/{q.n_visual}"
    print(f"wrote {args.out}: {q.suite} task {q.task_id} episode {q.episode} query {q.query}, {state}")
    return 0


# -- video -------------------------------------------------------------------------------------
def _video_args(p) -> None:
    _log_arg(p)
    _select_args(p)
    p.add_argument("--frames", required=True,
                   help=".npz with one (T, H, W, 3) uint8 array per camera (in camera order) and optionally "
                        "'steps' (T,) env step of each frame (default 0..T-1)")
    p.add_argument("--out", required=True, help="output .mp4")
    _pipeline_args(p)


def read_episode_frames(path: str) -> tuple[dict[str, np.ndarray], list[int] | None]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"frames file not found: {p}")
    with np.load(p, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    steps = data.pop("steps", None)
    if not data:
        raise ValueError(f"{p}: no camera arrays (expected (T, H, W, 3) uint8 arrays)")
    return data, None if steps is None else [int(s) for s in steps]


def run_video(args) -> int:
    from vla_adp.eval.logs import episode_keys, read_logs
    from vla_adp.viz.video import write_episode_video

    log = read_logs(args.log)
    keys = episode_keys(log, _configs(log, args), suite=args.suite, task_id=args.task_id, episode=args.episode)
    key = _one(keys, "episodes", args)
    _require_indices(log.queries[key])
    frames, steps = read_episode_frames(args.frames)
    pipelines = [_pipeline(args, a[0]) for a in frames.values()]
    out = write_episode_video(args.out, frames, log.queries[key], pipelines, steps, _overlay_config(args))
    print(f"wrote {out}: {next(iter(frames.values())).shape[0]} frames, {len(log.queries[key])} queries")
    return 0


# -- timeline / tradeoff / tables --------------------------------------------------------------
def _timeline_args(p) -> None:
    _log_arg(p)
    _select_args(p)
    p.add_argument("--out", required=True, help="output folder (one PNG per episode), or a .png file when the "
                                                "filters select exactly one episode")


def run_timeline(args) -> int:
    from vla_adp.eval.logs import episode_keys, read_logs
    from vla_adp.report.timeline import episode_timeline, plot_timeline, timelines

    log = read_logs(args.log)
    select = dict(suite=args.suite, task_id=args.task_id, episode=args.episode)
    if args.out.lower().endswith(".png"):
        key = _one(episode_keys(log, _configs(log, args), **select), "episodes", args)
        paths = [plot_timeline(episode_timeline(log.queries[key], log.episodes.get(key)), args.out)]
    else:
        paths = timelines(log, args.out, _configs(log, args), **select)
    if not paths:
        raise ValueError("no episode with query records matches the filters")
    for path in paths:
        print(f"wrote {path}")
    return 0


def _tradeoff_args(p) -> None:
    _log_arg(p)
    p.add_argument("--baseline", default=None, help="config (hash prefix or label) the speedup is relative to; "
                                                    "default: the one unpruned configuration")
    p.add_argument("--out", required=True, help="output PNG (the numbers go to the same name with .json)")


def run_tradeoff(args) -> int:
    from vla_adp.eval.logs import read_logs
    from vla_adp.report.summary import resolve_method
    from vla_adp.report.tradeoff import plot_tradeoff, tradeoff_points, write_points

    log = read_logs(args.log)
    base = resolve_method(log, args.baseline) if args.baseline else None
    points = tradeoff_points(log, base)
    out = plot_tradeoff(points, args.out)
    write_points(points, out.with_suffix(".json"))
    for p in points:
        print(f"{p.label:22s} SR {100 * p.success:5.1f}% [{100 * p.low:.1f}, {100 * p.high:.1f}] n={p.episodes:<4d} "
              f"{p.expected_flops / 1e12:.4f} TFLOPs  speedup {p.speedup:.2f}  pruned {100 * p.pruned_share:.0f}%")
    print(f"wrote {out} and {out.with_suffix('.json')}")
    return 0


def _tables_args(p) -> None:
    p.add_argument("kind", choices=["tasks", "inversion"],
                   help="tasks: per-task A vs B with gap (Tables 10-13); inversion: direct vs inverse (Table 4)")
    _log_arg(p)
    p.add_argument("--a", default=None, help="tasks: first config (hash prefix or label), e.g. 'adp ρ=0.5'")
    p.add_argument("--b", default=None, help="tasks: second config, e.g. 'unpruned'")
    p.add_argument("--suite", default=None, help="tasks: only this suite")
    p.add_argument("--out", default=None, help="write the Markdown table here (default: print it)")
    p.add_argument("--csv", default=None, help="also write the numbers as CSV")


def run_tables(args) -> int:
    from vla_adp.report import tables as T
    from vla_adp.eval.logs import read_logs
    from vla_adp.report.summary import resolve_method, traits

    log = read_logs(args.log)
    if args.kind == "tasks":
        if not (args.a and args.b):
            raise ValueError("`tables tasks` needs --a and --b (config hash prefixes or labels)")
        a, b = resolve_method(log, args.a), resolve_method(log, args.b)
        names = traits(log, a).label, traits(log, b).label
        rows = T.task_rows(log, a, b, args.suite)
        md, csv_text = T.task_table_markdown(rows, *names), T.task_table_csv(rows, *names)
    else:
        cells = T.inversion_cells(log)
        md, csv_text = T.inversion_markdown(cells), T.inversion_csv(cells)
    if args.out:
        Path(args.out).write_text(md)
        print(f"wrote {args.out}")
    else:
        print(md, end="")
    if args.csv:
        Path(args.csv).write_text(csv_text)
        print(f"wrote {args.csv}")
    return 0


RUNNERS = {"overlay": run_overlay, "video": run_video, "timeline": run_timeline, "tradeoff": run_tradeoff,
           "tables": run_tables}


def run(args) -> int:
    return RUNNERS[args.viz_command](args)
