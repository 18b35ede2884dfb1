"""Pictures, videos and tables of what was pruned and when.

The logs are real: the tiny policy with the ADP pruner (its gate driven by a scripted end-effector
path) runs on a few observations per episode and the records are written with the schema classes.
Episode outcomes are scripted (``success_of``) so that the tables can be checked by hand; the
closed-loop runners own real outcomes.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import make_obs
from vla_adp.cli import main
from vla_adp.eval.schema import EpisodeRecord, QueryRecord
from vla_adp.model import transforms as T
from vla_adp.pruning.scoring import entropy, layer_text_vision_scores, participation_ratio
from vla_adp.viz import overlay as O
from vla_adp.eval.logs import read_logs, write_records
from vla_adp.eval.stats import wilson

GREY = 128
BLUE_120 = tuple(round((1 - 120 / 255) * GREY + 120 / 255 * c) for c in (0, 0, 255))  # (75, 75, 181)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # The tiny model is latency-bound; on a shared 2-core machine two threads are up to 10x slower.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- a real log ---------------------------------------------------------------------------------
# Window displacements .1, .05, .15, .02, .18 (x√3): gate states 0, 0, 0 (cold start), 1, 0, 1.
STEPS = np.array([0.0, 0.1, 0.15, 0.3, 0.32, 0.5])
CONFIGS = {  # method hash -> (pruner, keep, selection); the config hash adds the suite, as the runner's does
    "base0000": (None, None, None),
    "adp50top": ("adp", 0.5, "top"),
    "adp50inv": ("adp", 0.5, "inverse"),
    "adp25top": ("adp", 0.25, "top"),
}
EPISODES = {"base0000": 1, "adp50top": 2, "adp50inv": 1, "adp25top": 1}
QUERIES = {"base0000": 4, "adp50top": 6, "adp50inv": 4, "adp25top": 4}  # kept small: CPU time
TASKS = {"libero_spatial": ["pick up the black bowl and place it on the plate", "put the bowl on the stove"],
         "libero_object": ["pick up the milk and place it in the basket"]}


def cfg(method: str, suite: str) -> str:
    return f"{method}-{suite}"


def success_of(h: str, suite: str, task_id: int, episode: int) -> bool:
    """Deterministic outcomes with known counts (the tables are checked against these)."""
    fails = {"base0000": 0, "adp50top": 1, "adp50inv": 3, "adp25top": 2}[h]
    return (task_id * 2 + episode + len(suite)) % 4 >= fails


def run_episode(policy, h, suite, task_id, task, episode, n_queries):
    policy.reset()
    records = []
    for i in range(n_queries):
        obs = make_obs(seed=100 * task_id + i, instruction=task)
        obs["state"][:3] = STEPS[i] + 0.01 * episode
        info = policy.infer(obs)["info"]
        extra = {k: info[k] for k in ("gate_upper", "gate_lower", "gate_mean", "gate_reason", "gate_streak") if k in info}
        records.append(QueryRecord(
            h, suite, task_id, task, episode, i, 8 * i, info["pruner"], info["pruned"], info.get("gate_state"),
            info.get("displacement"), info["kept_visual"], info["n_visual"], info["kept_per_view"], info["seq_len"],
            info["seq_len_pruned"], info["flops"], info["timing_ms"], obs["state"][:3].tolist(),
            info["kept_indices"], extra))
    ok = success_of(h.split("-")[0], suite, task_id, episode)
    records.append(EpisodeRecord(h, suite, task_id, task, episode, 7, ok, 8 * n_queries, n_queries,
                                 sum(r.pruned for r in records), sum(r.flops for r in records), 1.0))
    return records


@pytest.fixture(scope="module")
def run_log(tiny_policy, tmp_path_factory):
    from vla_adp.policy import Policy
    from vla_adp.pruning.registry import build_pruner

    path = tmp_path_factory.mktemp("logs") / "run.jsonl"
    for h, (name, keep, selection) in CONFIGS.items():
        pruner = build_pruner(name, keep_ratio=keep, selection=selection) if name else None
        p = Policy(tiny_policy.ckpt, tiny_policy.config, pruner)
        identity = {"name": name, "config": dataclasses.asdict(pruner.config)} if pruner else None
        for suite, tasks in TASKS.items():
            config = {"suite": suite, "method": {"pruner": identity, "seed": 7}}
            write_records(path, [{"kind": "run", "config_hash": cfg(h, suite), "method_hash": h, "config": config}])
            for task_id, task in enumerate(tasks):
                for e in range(EPISODES[h]):
                    write_records(path, run_episode(p, cfg(h, suite), suite, task_id, task, e, QUERIES[h]))
    return path


def grey(h=224, w=224) -> np.ndarray:
    return np.full((h, w, 3), GREY, np.uint8)


def interior(box, margin=1.5):
    """Integer pixel ranges strictly inside a (top, left, bottom, right) edge box."""
    t, l, b, r = box
    return slice(math.ceil(t + margin), math.floor(b - margin)), slice(math.ceil(l + margin), math.floor(r - margin))


# -- geometry -----------------------------------------------------------------------------------
def coordinate_frame(h=256, w=256) -> np.ndarray:
    """R encodes the column, G the row: a patch's mean colour says where in the raw frame it came from."""
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return np.stack([xx * 255 / (w - 1), yy * 255 / (h - 1), np.full_like(xx, 128)], -1).round().astype(np.uint8)


def real_pipeline(raw: np.ndarray, rotate: bool, crop: bool) -> np.ndarray:
    """The policy's own transforms: env rotation, resize for the policy, center crop."""
    img = T.rotate_180(raw) if rotate else raw
    img = T.resize_for_policy(img, 224) if img.shape[:2] != (224, 224) else img
    return T.center_crop(img) if crop else img


@pytest.mark.parametrize("rotate", [False, True])
@pytest.mark.parametrize("crop", [False, True])
@pytest.mark.parametrize("raw_side", [224, 256])
def test_patch_boxes_match_the_real_image_transforms(rotate, crop, raw_side):
    raw = coordinate_frame(raw_side, raw_side)
    model_img = real_pipeline(raw, rotate, crop).astype(np.float64)
    p = O.ImagePipeline(crop_area=0.9 if crop else None, raw_size=(raw_side, raw_side), rotate_180=rotate)
    boxes = O.patch_boxes(p)
    for j in range(p.n_patches):
        r, c = divmod(j, p.grid)
        patch = model_img[14 * r:14 * (r + 1), 14 * c:14 * (c + 1)]
        x = patch[..., 0].mean() * (raw_side - 1) / 255 + 0.5  # decoded raw centre (edge coordinates)
        y = patch[..., 1].mean() * (raw_side - 1) / 255 + 0.5
        top, left, bottom, right = boxes[j]
        # One grey level ~ one pixel here; a wrong crop, flip or scale is off by 5-250 px. Upstream's JPEG
        # round trip (fast integer IDCT, 4:2:0 chroma) moves a patch's mean colour by up to 2.1 levels.
        assert abs(y - (top + bottom) / 2) < 2.5 and abs(x - (left + right) / 2) < 2.5, (j, y, x, boxes[j])


def test_patch_geometry_known_values():
    plain = O.ImagePipeline(crop_area=None, raw_size=(256, 256))
    np.testing.assert_allclose(O.patch_boxes(plain)[17], [16, 16, 32, 32])  # row 1, col 1 at 256/224 scale
    libero = O.ImagePipeline(raw_size=(256, 256), rotate_180=True)
    top, left, bottom, right = O.patch_boxes(libero)[0]
    assert bottom > 240 and right > 240  # token 0 (model top-left) is the raw frame's bottom-right
    index = O.patch_index_map(libero)
    assert index[0, 0] == -1 and index[255, 255] == -1  # corners fall outside the 90 % crop
    assert index[int(top) + 3, int(left) + 3] == 0 and index[128, 128] in (119, 120, 135, 136)


@pytest.mark.parametrize("rotate", [False, True])
@pytest.mark.parametrize("crop", [False, True])
def test_overlay_of_a_known_keep_set_lands_on_the_right_patches(rotate, crop):
    frame = grey(256, 256)
    p = O.ImagePipeline(crop_area=0.9 if crop else None, raw_size=(256, 256), rotate_180=rotate)
    kept = [0, 1, 17, 100, 255]
    out = O.draw_overlay(frame, kept, p)
    boxes = O.patch_boxes(p)
    for j in range(256):
        ys, xs = interior(boxes[j])
        expect = (GREY,) * 3 if j in kept else BLUE_120
        assert (out[ys, xs] == expect).all(), j
    # The kept model-image corner patch sits at the raw frame's corner the rotation says.
    corner = out[246, 246] if rotate else out[9, 9]
    assert tuple(corner) == (GREY,) * 3
    if crop:  # pixels the crop discarded are not tinted, only dimmed
        assert tuple(out[0, 0]) == (GREY // 2,) * 3 and tuple(out[255, 128]) == (GREY // 2,) * 3
    else:
        assert (O.kept_mask(p, kept) >= 0).all()


def test_unpruned_query_draws_nothing_and_config_is_honoured():
    frame = grey()
    p = O.ImagePipeline()
    seen = O.kept_mask(p.for_frame(frame), None) >= 0
    assert (O.draw_overlay(frame, None, p)[seen] == frame[seen]).all()
    assert (O.draw_overlay(frame, None, p, O.OverlayConfig(unseen_dim=0)) == frame).all()
    cfg = O.OverlayConfig.from_dict({"overlay_pruned_color": [255, 0, 0], "overlay_pruned_alpha": 255,
                                     "video_fps": 5, "num_trials_per_task": 50})
    assert (cfg.color, cfg.alpha, cfg.fps) == ((255, 0, 0), 255, 5)
    paper = O.OverlayConfig.from_dict(json.loads((Path(__file__).parents[1] / "configs/adp_paper.json").read_text()))
    assert (paper.color, paper.alpha, paper.fps) == ((0, 0, 255), 120, 10) and paper == O.OverlayConfig()
    out = O.draw_overlay(frame, [], p, cfg)
    ys, xs = interior(O.patch_boxes(p)[120])
    assert (out[ys, xs] == (255, 0, 0)).all()


@pytest.mark.parametrize("bad", [{"color": (0, 0)}, {"color": (0, 0, 256)}, {"alpha": 300}, {"alpha": 1.5},
                                 {"fps": 0}, {"unseen_dim": 2}])
def test_overlay_config_rejects_bad_values(bad):
    with pytest.raises(ValueError, match=str(list(bad)[0])):
        O.OverlayConfig(**bad)


def test_kept_indices_are_local_per_camera_and_others_are_refused():
    p = O.ImagePipeline()
    local = O.draw_cameras([grey(), grey()], [[0, 5], [3, 255]], [p, p])
    assert (local[1] == O.draw_overlay(grey(), [3, 255], p)).all()
    with pytest.raises(ValueError, match=r"camera 1: kept token indices must be local .* 0..255, got 259..511"):
        O.draw_cameras([grey(), grey()], [[0, 5], [259, 511]], [p, p])  # the old global convention
    with pytest.raises(ValueError, match="0..255"):
        O.draw_overlay(grey(), [256], O.ImagePipeline())
    with pytest.raises(ValueError, match="raw_size"):
        O.draw_overlay(grey(100, 100), [1], O.ImagePipeline(raw_size=(256, 256)))


def test_pipeline_for_reads_the_policy(tiny_policy):
    p = O.pipeline_for(tiny_policy.model.args, tiny_policy.center_crop, (256, 256), rotate_180=True)
    assert (p.model_size, p.patch_size, p.grid, p.crop_area) == (224, 14, 16, 0.9)
    assert p.n_patches == tiny_policy.model.args.patches_per_image


# -- logs ---------------------------------------------------------------------------------------
def test_log_reader_merges_and_reports_bad_lines(run_log, tmp_path):
    log = read_logs(run_log)
    assert set(log.config_hashes) == {cfg(h, s) for h in CONFIGS for s in TASKS}
    assert len(log.episodes) == 3 * sum(EPISODES.values())
    again = read_logs([run_log, run_log])  # concatenated duplicates: last one wins, nothing doubles
    assert len(again.episodes) == len(log.episodes) and sum(map(len, again.queries.values())) == sum(
        map(len, log.queries.values()))
    torn = tmp_path / "torn.jsonl"
    torn.write_text(run_log.read_text() + '{"kind": "query", "config_')
    with pytest.warns(UserWarning, match="torn last line"):
        assert len(read_logs(torn).episodes) == len(log.episodes)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"kind": "episode", "suite": "x"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: not a valid episode record: lacks fields"):
        read_logs(bad)
    bad.write_text("not json\n{}\n")
    with pytest.raises(ValueError, match="bad.jsonl:1: not valid JSON"):
        read_logs(bad)


def test_traits_without_run_records_come_from_the_queries(run_log, tmp_path):
    from vla_adp.report.summary import methods, resolve_method, traits

    bare = tmp_path / "bare.jsonl"
    bare.write_text("".join(l + "\n" for l in run_log.read_text().splitlines() if json.loads(l)["kind"] != "run"))
    log = read_logs(bare)
    assert set(methods(log)) == set(log.config_hashes)  # without method hashes every config stands alone
    t = traits(log, cfg("adp25top", "libero_spatial"))
    assert (t.pruner, t.keep_ratio, t.selection, t.label) == ("adp", 0.25, None, "adp ρ=0.25")
    assert traits(log, cfg("base0000", "libero_object")).label == "unpruned"
    with pytest.raises(ValueError, match="matches 2"):
        resolve_method(log, "adp50top")  # one per suite now


def test_the_gate_both_prunes_and_restores(run_log):
    log = read_logs(run_log)
    qs = log.queries[(cfg("adp50top", "libero_spatial"), "libero_spatial", 0, 0)]
    assert [q.gate_state for q in qs] == [0, 0, 0, 1, 0, 1]
    assert [q.kept_visual for q in qs] == [512, 512, 512, 256, 512, 256]
    assert qs[3].kept_per_view == [102, 154] and len(qs[3].kept_indices[1]) == 154


# -- pictures from logs -------------------------------------------------------------------------
def decode_png(path) -> np.ndarray:
    with Image.open(path) as im:
        im.verify()
    return np.asarray(Image.open(path).convert("RGB"))


def test_overlay_command_draws_the_logged_keep_set(run_log, tmp_path):
    frames = []
    for c in range(2):
        f = tmp_path / f"cam{c}.png"
        Image.fromarray(grey()).save(f)
        frames.append(str(f))
    out = tmp_path / "overlay.png"
    rc = main(["viz", "overlay", "--log", str(run_log), "--config", "adp50top", "--suite", "libero_spatial",
               "--task-id", "0", "--episode", "0", "--query", "3", "--frame", *frames, "--out", str(out)])
    assert rc == 0
    img = decode_png(out)
    assert img.shape[1] >= 2 * 224 and img.shape[0] % 16 == 0 and img.shape[1] % 16 == 0
    q = read_logs(run_log).queries[(cfg("adp50top", "libero_spatial"), "libero_spatial", 0, 0)][3]
    local = q.kept_indices
    boxes = O.patch_boxes(O.ImagePipeline(raw_size=(224, 224)))
    for cam, x0 in ((0, 0), (1, 224 + 4)):
        kept = set(local[cam])
        assert len(kept) == q.kept_per_view[cam]
        for j in range(256):
            ys, xs = interior(boxes[j])
            patch = img[ys, slice(xs.start + x0, xs.stop + x0)]
            assert (patch == ((GREY,) * 3 if j in kept else BLUE_120)).all(), (cam, j)


def test_overlay_command_errors_are_clear(run_log, tmp_path, capsys):
    rc = main(["viz", "overlay", "--log", str(run_log), "--frame", str(tmp_path / "x.png"), "--out", str(tmp_path / "o.png")])
    assert rc == 2
    assert "queries match" in capsys.readouterr().err
    lines = [json.loads(l) for l in run_log.read_text().splitlines()]
    for d in lines:
        d.pop("kept_indices", None)  # the runner logs indices only when asked
    stripped = tmp_path / "no_indices.jsonl"
    write_records(stripped, lines)
    select = ["--config", "adp50top", "--suite", "libero_spatial", "--task-id", "0", "--episode", "0"]
    Image.fromarray(grey()).save(tmp_path / "g.png")
    rc = main(["viz", "overlay", "--log", str(stripped), *select, "--query", "3", "--frame", str(tmp_path / "g.png"),
               str(tmp_path / "g.png"), "--out", str(tmp_path / "o.png")])
    assert rc == 2 and "no kept_indices" in capsys.readouterr().err
    assert not (tmp_path / "o.png").exists()


def test_recorder_writes_a_decodable_video_with_masks(tiny_policy, run_log, tmp_path):
    from vla_adp.viz.video import EpisodeRecorder

    log = read_logs(run_log)
    queries = log.queries[(cfg("adp50top", "libero_spatial"), "libero_spatial", 0, 0)]
    p = O.ImagePipeline(raw_size=(256, 256), rotate_180=True)
    path = tmp_path / "episode.mp4"
    with EpisodeRecorder(path, [p, p], frames_path=tmp_path / "frames.npz") as rec:
        for q in queries:  # two env steps per query: the chunk's mask stays on the second frame
            rec.add({"agentview": grey(256, 256), "wrist": grey(256, 256)}, q.to_dict(), step=q.step)
            rec.add({"agentview": grey(256, 256), "wrist": grey(256, 256)}, step=q.step + 1)
    assert rec.n_frames == 2 * len(queries)
    reader = imageio.get_reader(path)
    assert reader.get_meta_data()["fps"] == 10
    frames = [f for f in reader]
    assert len(frames) == 2 * len(queries)
    assert frames[0].shape == (256 + 48, 256 * 2 + 4 + 12, 3)  # caption band + padding to 16
    pruned_q = [i for i, q in enumerate(queries) if q.kept_indices]
    boxes = O.patch_boxes(p)
    for i in pruned_q:
        local = queries[i].kept_indices
        for f in (frames[2 * i], frames[2 * i + 1]):
            for j in range(0, 256, 5):
                mean = f[interior(boxes[j], 3)].reshape(-1, 3).mean(0)  # H.264 is lossy: compare means
                expect = np.array((GREY,) * 3 if j in local[0] else BLUE_120)
                assert np.abs(mean - expect).max() < 12, (i, j, mean)
    unpruned = frames[0][interior(boxes[40], 3)].reshape(-1, 3).mean(0)
    assert np.abs(unpruned - GREY).max() < 6
    with np.load(tmp_path / "frames.npz") as z:  # saved raw frames redraw exactly, from the log alone
        assert z["agentview"].shape == (2 * len(queries), 256, 256, 3) and z["steps"][:3].tolist() == [0, 1, 8]
    i = pruned_q[0]
    out = tmp_path / "from_frames.png"
    assert main(["viz", "overlay", "--log", str(run_log), "--config", "adp50top", "--suite", "libero_spatial",
                 "--task-id", "0", "--episode", "0", "--query", str(i), "--frames", str(tmp_path / "frames.npz"),
                 "--rotate-180", "--out", str(out)]) == 0
    img = decode_png(out)
    local = queries[i].kept_indices
    for cam, x0 in ((0, 0), (1, 256 + 4)):
        for j in range(256):
            ys, xs = interior(boxes[j])
            patch = img[ys, slice(xs.start + x0, xs.stop + x0)]
            assert (patch == ((GREY,) * 3 if j in local[cam] else BLUE_120)).all(), (cam, j)


def test_video_command_from_saved_frames(run_log, tmp_path):
    frames = tmp_path / "frames.npz"
    t = 12
    np.savez(frames, agentview=np.full((t, 224, 224, 3), GREY, np.uint8),
             wrist=np.full((t, 224, 224, 3), GREY, np.uint8), steps=np.arange(t) * 4)
    out = tmp_path / "ep.mp4"
    rc = main(["viz", "video", "--log", str(run_log), "--config", "adp50top", "--suite", "libero_object",
               "--task-id", "0", "--episode", "1", "--frames", str(frames), "--out", str(out), "--fps", "5"])
    assert rc == 0
    reader = imageio.get_reader(out)
    assert reader.get_meta_data()["fps"] == 5
    decoded = [f for f in reader]
    assert len(decoded) == t and decoded[0].shape == (272, 464, 3)  # 224 + caption, 2·224 + gap, padded to 16
    # step 24 (frame 6) executes query 3, which the gate pruned: its pruned patches are blue.
    q = read_logs(run_log).queries[(cfg("adp50top", "libero_object"), "libero_object", 0, 1)][3]
    assert q.pruned
    local = q.kept_indices
    j = next(i for i in range(256) if i not in local[0])
    box = O.patch_boxes(O.ImagePipeline(raw_size=(224, 224)))[j]
    assert decoded[6][interior(box, 3)].reshape(-1, 3).mean(0)[2] > GREY + 30
    assert np.abs(decoded[8][interior(box, 3)].reshape(-1, 3).mean(0) - GREY).max() < 6  # step 32: query 4, full


def test_timeline_from_logs(run_log, tmp_path):
    from vla_adp.report.timeline import episode_timeline

    log = read_logs(run_log)
    key = (cfg("adp50top", "libero_spatial"), "libero_spatial", 0, 0)
    tl = episode_timeline(log.queries[key], log.episodes[key])
    qs = log.queries[key]
    np.testing.assert_allclose(tl.displacement, [np.nan if q.displacement is None else q.displacement for q in qs])
    np.testing.assert_allclose(tl.upper[3:], [q.extra["gate_upper"] for q in qs[3:]])
    assert np.isnan(tl.upper[:3]).all() and tl.state.tolist() == [0, 0, 0, 1, 0, 1]
    assert tl.kept.sum(1).tolist() == [q.kept_visual for q in qs]
    rc = main(["viz", "timeline", "--log", str(run_log), "--config", "adp50", "--suite", "libero_spatial",
               "--out", str(tmp_path / "tl")])
    assert rc == 2  # 'adp50' is ambiguous (top and inverse): an error, not a guess
    rc = main(["viz", "timeline", "--log", str(run_log), "--config", "adp50top", "--suite", "libero_spatial",
               "--out", str(tmp_path / "tl")])
    assert rc == 0
    pngs = sorted((tmp_path / "tl").glob("*.png"))
    assert len(pngs) == 4  # 2 tasks x 2 episodes
    img = decode_png(pngs[0])
    assert img.shape == (600, 800, 3)
    one = tmp_path / "one.png"
    assert main(["viz", "timeline", "--log", str(run_log), "--config", "adp50top", "--suite", "libero_spatial",
                 "--out", str(one)]) == 2  # four episodes match: a single file needs exactly one
    assert main(["viz", "timeline", "--log", str(run_log), "--config", "adp50top", "--suite", "libero_spatial",
                 "--task-id", "1", "--episode", "0", "--out", str(one)]) == 0
    assert decode_png(one).shape == (600, 800, 3)
    assert (img < 250).any(axis=2).mean() > 0.03  # something was drawn


def test_tradeoff_numbers_and_plot(run_log, tmp_path):
    from vla_adp.report.tradeoff import tradeoff_points

    log = read_logs(run_log)
    points = {p.method: p for p in tradeoff_points(log)}
    for h, p in points.items():
        eps = [e for k, e in log.episodes.items() if k[0].split("-")[0] == h]  # all suites of the method
        k = sum(e.success for e in eps)
        assert (p.successes, p.episodes) == (k, len(eps))
        assert (p.low, p.high) == pytest.approx(wilson(k, len(eps)))
        flops = [q.flops for kk, qs in log.queries.items() if kk[0].split("-")[0] == h for q in qs]
        assert p.expected_flops == pytest.approx(np.mean(flops))
    assert len(points) == len(CONFIGS)  # one point per method, not per suite
    assert points["base0000"].speedup == 1.0 and points["adp25top"].speedup > points["adp50top"].speedup > 1.0
    assert points["adp50top"].label == "adp ρ=0.5" and points["adp50inv"].label == "adp inverse ρ=0.5"
    out = tmp_path / "tradeoff.png"
    assert main(["viz", "tradeoff", "--log", str(run_log), "--out", str(out)]) == 0
    assert decode_png(out).shape == (420, 1000, 3)
    saved = json.loads(out.with_suffix(".json").read_text())
    assert {d["method"] for d in saved} == set(CONFIGS)


@pytest.mark.parametrize("k,n", [(0, 10), (10, 10), (45, 50), (3, 7), (1, 1)])
def test_wilson_interval_matches_scipy(k, n):
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(method="wilson")
    assert wilson(k, n) == pytest.approx((ci.low, ci.high), rel=1e-9, abs=1e-12)
    assert wilson(0, 0) == (0.0, 1.0)  # no episodes: every rate is possible (one helper with the report's)


def test_per_task_table(run_log, tmp_path):
    out, csv_path = tmp_path / "t.md", tmp_path / "t.csv"
    assert main(["viz", "tables", "tasks", "--log", str(run_log), "--a", "adp ρ=0.5", "--b", "unpruned",
                 "--suite", "libero_spatial", "--out", str(out), "--csv", str(csv_path)]) == 0
    lines = out.read_text().splitlines()
    assert lines[0] == "| Task | Length | adp ρ=0.5 | unpruned | Gap |"
    task = TASKS["libero_spatial"][0]
    a = np.mean([success_of("adp50top", "libero_spatial", 0, e) for e in range(EPISODES["adp50top"])])
    b = np.mean([success_of("base0000", "libero_spatial", 0, e) for e in range(EPISODES["base0000"])])
    gap = f"{100 * (a - b):+.1f}%" if a != b else "0.0%"
    assert lines[2] == f"| {task} | {len(task)} | {100 * a:.1f}% | {100 * b:.1f}% | {gap} |"
    assert lines[-1].startswith("| **Average** |")
    assert len(csv_path.read_text().splitlines()) == 1 + len(TASKS["libero_spatial"])


def test_inversion_table(run_log, capsys):
    assert main(["viz", "tables", "inversion", "--log", str(run_log)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| Task | Direct 50% | Inverse 50% | Gap 50% |"  # ρ=0.25 has no inverse run
    rate = {h: {s: np.mean([success_of(h, s, t, e) for t in range(len(TASKS[s])) for e in range(EPISODES[h])])
                for s in TASKS}
            for h in ("adp50top", "adp50inv")}
    row = {line.split(" | ")[0].strip("| "): line for line in lines[2:]}
    for s in TASKS:
        d, i = rate["adp50top"][s], rate["adp50inv"][s]
        assert row[s] == f"| {s} | {100 * d:.1f}% | {100 * i:.1f}% | {100 * (d - i):.1f}% |"
    avg_d = np.mean([rate["adp50top"][s] for s in TASKS])
    assert row["**Avg**"].startswith(f"| **Avg** | {100 * avg_d:.1f}% |")


# -- analyze layers -----------------------------------------------------------------------------
def test_pr_and_entropy_match_hand_computation():
    from vla_adp.viz.analysis import pr_and_entropy

    phi = torch.tensor([2.0, 3.0, 4.0, 5.0])  # shifted: [0, 1, 2, 3] -> p = [0, 1/6, 2/6, 3/6]
    p = np.array([0, 1, 2, 3]) / 6
    pr, h = pr_and_entropy(phi)
    assert pr == pytest.approx(1 / (p**2).sum()) == pytest.approx(36 / 14)
    assert h == pytest.approx(-(p[1:] * np.log(p[1:])).sum())
    assert float(participation_ratio(phi)) == pytest.approx(pr) and float(entropy(phi)) == pytest.approx(h)
    assert pr_and_entropy(torch.full((16,), 0.3)) == pytest.approx((16.0, math.log(16)))


class Probe:
    """Records Φ at every decoder layer through the model's own hook path (no pruning)."""

    name, positions = "probe", "contiguous"

    def __init__(self, n):
        self.n, self.phi = n, {}

    def reset(self):
        pass

    def begin(self, query):
        return frozenset(range(self.n))

    def at_layer(self, ctx):
        self.phi[ctx.index] = layer_text_vision_scores(ctx, "exact")[0]
        return None

    def end(self, outcome):
        return {}


def test_analyze_layers_matches_the_model_hook_path(tiny_policy):
    from vla_adp.policy import Policy
    from vla_adp.viz.analysis import analyze_layers

    obs = make_obs(3)
    a = analyze_layers(tiny_policy, obs, [0, 1])
    n = len(tiny_policy.model.language_model.layers)
    probe = Probe(n)
    Policy(tiny_policy.ckpt, tiny_policy.config, probe).infer(obs)
    assert a.phi.shape == (n, 512)
    for i in range(n):
        np.testing.assert_allclose(a.phi[i], probe.phi[i].numpy(), rtol=1e-4, atol=1e-5)
    assert not np.allclose(a.phi[0], a.phi[1])
    assert set(a.similarity) == {0, 1} and a.similarity[0].shape == (512, 512)
    np.testing.assert_allclose(np.diag(a.similarity[0]), 1.0, atol=1e-5)
    assert ((a.pr >= 1) & (a.pr <= 512)).all() and ((a.entropy >= 0) & (a.entropy <= math.log(512))).all()


def test_analyze_layers_command(tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "layers"
    rc = main(["analyze", "layers", "--checkpoint", str(tiny_ckpt), "--dtype", "fp32", "--device", "cpu",
               "--out", str(out)])
    assert rc == 0
    data = json.loads((out / "layers.json").read_text())
    assert data["n_layers"] == 2 and data["n_visual"] == 512 and data["views"] == [256, 256]
    for layer in data["layers"]:
        pr, h = (lambda p: (1 / (p**2).sum(), -(p[p > 0] * np.log(p[p > 0])).sum()))(
            (lambda v: v / v.sum())(np.array(layer["phi"]) - min(layer["phi"])))
        assert layer["participation_ratio"] == pytest.approx(pr, rel=1e-4)
        assert layer["entropy"] == pytest.approx(h, rel=1e-4)
    for name in ("phi_per_layer.png", "phi_maps.png", "pr_entropy.png", "self_similarity.png"):
        assert decode_png(out / name).shape[2] == 3
    with np.load(out / "similarity.npz") as z:
        assert sorted(z.files) == ["layer_0", "layer_1"]
    assert main(["analyze", "layers", "--checkpoint", str(tiny_ckpt), "--device", "cpu", "--similarity-layers", "7",
                 "--out", str(out)]) == 2
    assert "out of range" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.sim
def test_libero_example_records_what_the_readme_shows(tiny_ckpt, tmp_path):
    """examples/viz_libero.py in the real LIBERO simulator, then the README's two viz commands."""
    import os
    import subprocess
    import sys

    pytest.importorskip("libero.libero")
    root = Path(__file__).parents[1]
    env = {**os.environ, "PYTHONPATH": str(root / "src"), "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    out = tmp_path / "demo"
    subprocess.run([sys.executable, str(root / "examples/viz_libero.py"), "--checkpoint", str(tiny_ckpt),
                    "--queries", "4", "--out", str(out)], check=True, env=env, cwd=root, timeout=600)
    log = read_logs(out / "run.jsonl")
    (key,) = log.episodes
    queries = log.queries[key]
    assert [q.query for q in queries] == [0, 1, 2, 3] and [q.step for q in queries] == [0, 8, 16, 24]
    assert all(q.displacement is not None for q in queries[1:])  # real arm motion reached the gate
    video = [f for f in imageio.get_reader(out / "episode.mp4")]
    assert len(video) == 32 and video[0].shape == (304, 528, 3)
    q = queries[-1]
    assert main(["viz", "overlay", "--log", str(out / "run.jsonl"), "--frames", str(out / "frames.npz"),
                 "--query", "3", "--out", str(tmp_path / "o.png")]) == 0
    img = decode_png(tmp_path / "o.png")
    with np.load(out / "frames.npz") as z:
        raw = z["agentview_image"][24]
    p = O.ImagePipeline(raw_size=(256, 256))
    local = q.kept_indices[0] if q.kept_indices else list(range(256))
    expect = O.draw_overlay(raw, local, p)
    assert (img[:256, :256] == expect).all()
    assert main(["viz", "timeline", "--log", str(out / "run.jsonl"), "--out", str(tmp_path / "t.png")]) == 0
    assert decode_png(tmp_path / "t.png").shape == (600, 800, 3)


def test_labels_name_the_static_schedule_and_a_non_zero_layer():
    from vla_adp.report.summary import Traits

    assert Traits("m", "adp", 0.5, "top", layer=0, schedule="dynamic").label == "adp ρ=0.5"
    assert Traits("m", "adp", 0.5, "top", layer=3, schedule="static").label == "adp static L3 ρ=0.5"
    assert Traits("m", "random", 0.3, "random").label == "random ρ=0.3"  # not "random random"
    assert Traits("m", "adp", 0.5, "inverse").label == "adp inverse ρ=0.5"
