"""A scripted pick-and-place expert for LIBERO, read off the task's BDDL goal and the simulator state.

The expert never sees pixels. For a goal ``(On X Y)`` or ``(In X Y_contain_region)`` it takes the
collision geometry of X and Y from the MuJoCo model (axis-aligned boxes of each body's collision
geoms in the world frame) and runs a small state machine with LIBERO's OSC pose controller:

    approach (above the grasp point, at a height clear of every object)
    -> descend -> close -> lift -> carry (above the destination) -> lower -> release -> retreat

Actions are 7-D in the convention the policy outputs and the evaluation applies
(:func:`vla_adp.model.transforms.libero_gripper`): position and rotation deltas in [-1, 1] (the
controller scales them to 5 cm and 0.5 rad per step), gripper ``1`` = open, ``0`` = closed.

Grasps: a body whose footprint fits the open gripper (8 cm) is taken at its centre, fingers closing
across its narrow side; a wider body with a hole in the middle (a bowl) is pinched at the rim, on
the side with the most clearance to tall neighbours. A grasp that does not lift the object is
retried from the top (at most ``retries`` times).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

OPEN, CLOSED = 1.0, 0.0
MAX_DELTA = 0.05  # metres per step at action 1.0 (LIBERO's OSC_POSE output_max)
MAX_ROT = 0.5  # radians per step at action 1.0
GRIPPER_SPAN = 0.075  # widest body the open gripper takes whole
# World rotation of the gripper pointing straight down with fingers closing along world y (reset pose).
DOWN = np.array([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, -1.0]])


@dataclass(frozen=True)
class Box:
    """World axis-aligned bounds of a body's collision geometry."""

    lo: np.ndarray
    hi: np.ndarray

    @property
    def center(self) -> np.ndarray:
        return (self.lo + self.hi) / 2

    @property
    def size(self) -> np.ndarray:
        return self.hi - self.lo


# -- scene geometry ---------------------------------------------------------------------------
def _subtree(model, root: int) -> set[int]:
    ids = {root}
    for b in range(model.nbody):
        p = b
        while p not in ids and p != 0:
            p = model.body_parentid[p]
        if p in ids:
            ids.add(b)
    return ids


def body_box(model, data, root: int) -> Box:
    """Bounds of every colliding geom under body ``root`` (MuJoCo's per-geom local AABB, rotated)."""
    bodies = _subtree(model, root)
    corners = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], float)
    lo, hi = np.full(3, np.inf), np.full(3, -np.inf)
    for g in range(model.ngeom):
        if model.geom_bodyid[g] not in bodies or (model.geom_contype[g] == 0 and model.geom_conaffinity[g] == 0):
            continue
        local = corners * model.geom_aabb[g][3:] + model.geom_aabb[g][:3]
        world = local @ data.geom_xmat[g].reshape(3, 3).T + data.geom_xpos[g]
        lo, hi = np.minimum(lo, world.min(0)), np.maximum(hi, world.max(0))
    if not np.isfinite(lo).all():
        pos = data.xpos[root].copy()
        return Box(pos - 0.01, pos + 0.01)
    return Box(lo, hi)


def body_yaw(data, root: int) -> float:
    """Heading of the body's local x axis in the world xy plane."""
    R = data.xmat[root].reshape(3, 3)
    return math.atan2(R[1, 0], R[0, 0])


def goal_pair(sim_env) -> tuple[str, str, str]:
    """``(relation, object, destination)`` of the task's single pick-and-place goal predicate.

    Raises:
        ValueError: the goal is not one ``On``/``In`` predicate over a movable object.
    """
    goal = sim_env.parsed_problem["goal_state"]
    if len(goal) != 1 or goal[0][0].lower() not in ("on", "in") or len(goal[0]) != 3:
        raise ValueError(f"the scripted expert covers one On/In goal, got {goal!r}")
    rel, obj, dest = goal[0][0].lower(), goal[0][1], goal[0][2]
    if obj not in sim_env.objects_dict:
        raise ValueError(f"goal object {obj!r} is not a movable object of this scene")
    return rel, obj, dest


def yaw_rotation(theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ DOWN


def rotation_error(target: np.ndarray, current: np.ndarray) -> np.ndarray:
    """Axis-angle (world frame) of ``target · currentᵀ``."""
    R = target @ current.T
    angle = math.acos(float(np.clip((np.trace(R) - 1) / 2, -1.0, 1.0)))
    if angle < 1e-6:
        return np.zeros(3)
    axis = np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]])
    n = np.linalg.norm(axis)
    if n < 1e-9:  # angle ~ pi: any axis orthogonal to the rotation's fixed plane
        w, v = np.linalg.eigh((R + R.T) / 2)
        axis, n = v[:, np.argmax(w)], 1.0
    return axis / n * angle


def quat_matrix(q_xyzw: np.ndarray) -> np.ndarray:
    x, y, z, w = np.asarray(q_xyzw, float) / np.linalg.norm(q_xyzw)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


# -- the expert --------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExpertConfig:
    """Gains and margins of the scripted expert.

    Args:
        gain: position action per metre of error (saturates at ``1/gain`` m).
        rot_gain: rotation action per radian of error.
        clearance: height kept above the tallest other object while moving.
        close_steps / release_steps: steps with the gripper command held.
        tolerance: position error (m) that ends a move.
        retries: grasps tried again after a failed lift.
    """

    gain: float = 20.0
    rot_gain: float = 4.0
    clearance: float = 0.04
    close_steps: int = 10
    release_steps: int = 8
    tolerance: float = 0.008
    retries: int = 2

    def __post_init__(self) -> None:
        for name in ("gain", "rot_gain", "clearance", "tolerance"):
            if not getattr(self, name) > 0:
                raise ValueError(f"ExpertConfig.{name} must be > 0, got {getattr(self, name)!r}")


class PickPlaceExpert:
    """State machine for one episode; call :meth:`act` with each raw robosuite observation."""

    def __init__(self, sim_env, config: ExpertConfig = ExpertConfig()):
        self.env, self.cfg = sim_env, config
        self.rel, self.obj, self.dest = goal_pair(sim_env)
        self.model, self.data = sim_env.sim.model._model, sim_env.sim.data._data
        self.obj_body = self._root(self.obj)
        self.phase, self.timer, self.tries = "plan", 0, 0
        self.plan: dict = {}

    # -- scene queries --
    def _root(self, name: str) -> int:
        entity = self.env.objects_dict.get(name) or self.env.fixtures_dict.get(name)
        if entity is None:
            raise ValueError(f"{name!r} is neither an object nor a fixture of this scene")
        return self.env.sim.model.body_name2id(entity.root_body)

    def _box(self, name: str) -> Box:
        return body_box(self.model, self.data, self._root(name))

    def _dest_point(self) -> tuple[np.ndarray, float]:
        """Centre (x, y) and support height of the destination: a body (its box), or a region
        site (its position, on top of the body that owns it: ``basket_1_contain_region``,
        ``wooden_cabinet_1_top_side``, ``flat_stove_1_cook_region``)."""
        bodies = {**self.env.objects_dict, **self.env.fixtures_dict}
        if self.dest in bodies:
            box = self._box(self.dest)
            return box.center[:2].copy(), float(box.hi[2])
        try:
            site = self.env.sim.model.site_name2id(self.dest)
        except (ValueError, KeyError):
            raise ValueError(f"goal destination {self.dest!r} is neither a body nor a site of this scene") from None
        xy = self.data.site_xpos[site][:2].copy()
        owners = [n for n in bodies if self.dest.startswith(n + "_")]
        top = self._box(max(owners, key=len)).hi[2] if owners else self.data.site_xpos[site][2]
        return xy, float(top)

    def _others(self) -> list[Box]:
        names = [n for n in self.env.objects_dict if n not in (self.obj,)]
        return [self._box(n) for n in names]

    def _grip_site(self) -> int | None:
        try:
            return self.env.sim.model.site_name2id("gripper0_grip_site")
        except (ValueError, KeyError):
            return None

    # -- planning --
    def _plan_grasp(self) -> None:
        box = self._box(self.obj)
        size = box.size
        yaw = body_yaw(self.data, self.obj_body)
        others = self._others()
        if min(size[0], size[1]) <= GRIPPER_SPAN:
            theta = self._narrow_axis_yaw(yaw, box)
            point = box.center.copy()
            height = size[2]
            z = box.hi[2] - min(0.03, 0.5 * height) if height > 0.04 else box.center[2] + 0.002
        else:  # pinch the rim on the side with the most room
            point, theta, z = self._rim_grasp(box, others)
        z = max(z, box.lo[2] + 0.008)
        start = self.data.site_xpos[self._grip_site()][:2] if self._grip_site() is not None else point[:2]
        dest_xy, _ = self._dest_point()
        # heights to clear: what lies near the way in (for the open gripper) and the way over (carrying)
        approach = _path_top(start, point[:2], others + [box], margin=0.06)
        carry = _path_top(point[:2], dest_xy, [b for b in others if not _is_dest(b, dest_xy)], margin=0.08)
        self.plan = {"xy": point[:2], "z": z, "theta": theta, "safe": max(approach, box.hi[2]) + self.cfg.clearance,
                     "carry_clear": max(carry, box.hi[2]) + self.cfg.clearance,
                     "obj_z0": float(self.data.xpos[self.obj_body][2]), "grip_offset": z - box.lo[2]}

    def _narrow_axis_yaw(self, yaw: float, box: Box) -> float:
        """Gripper yaw whose finger axis lies along the body's shorter horizontal side."""
        # extents along the body's own axes from its collision geoms' bounding box at yaw 0 are not
        # stored; compare the world box with the two candidate headings instead
        sx, sy = box.size[0], box.size[1]
        finger_along_x = sx < sy  # close along the world axis where the body is thinner
        base = -math.pi / 2 if finger_along_x else 0.0
        # align with the body's own axes when it is clearly rotated
        r = (yaw % (math.pi / 2))
        if 0.15 < r < math.pi / 2 - 0.15:
            base = self._principal_yaw()
        return _wrap_half_pi(base)

    def _principal_yaw(self) -> float:
        """Finger yaw across the body's thinner local axis (from its collision geoms' local boxes)."""
        bodies = _subtree(self.model, self.obj_body)
        R = self.data.xmat[self.obj_body].reshape(3, 3)
        ext = np.zeros(3)
        for g in range(self.model.ngeom):
            if self.model.geom_bodyid[g] in bodies:
                Rg = R.T @ self.data.geom_xmat[g].reshape(3, 3)
                ext = np.maximum(ext, np.abs(Rg) @ self.model.geom_aabb[g][3:])
        thin = R[:, 0] if ext[0] < ext[1] else R[:, 1]  # world direction of the thinner local axis
        # fingers close along gripper y: yaw theta puts them along (-sin theta, cos theta)
        return math.atan2(-thin[0], thin[1])

    def _rim_grasp(self, box: Box, others: list[Box]) -> tuple[np.ndarray, float, float]:
        """Rim point and finger yaw: enough room to tall neighbours (saturating at 6 cm), then the
        least wrist rotation (rim points on the ±y sides need none), then the nearer side to the robot."""
        centre = box.center
        radius = min(box.size[0], box.size[1]) / 2
        tall = [b for b in others if b.hi[2] > box.hi[2] - 0.01]
        best, best_score = None, -np.inf
        for k in range(8):
            a = k * math.pi / 4
            d = np.array([math.cos(a), math.sin(a), 0.0])
            p = centre + d * (radius - 0.012)
            theta = _wrap_half_pi(a - math.pi / 2)  # finger axis radial: across the rim wall
            room = min([_xy_distance(p, b) for b in tall] + [0.06])
            score = 10 * room - 0.02 * abs(theta) - 2.0 * max(p[0], 0.0)  # far reach stretches the arm straight
            if score > best_score:
                best, best_score = (p, theta), score
        p, theta = best
        return p, theta, box.hi[2] - 0.018

    # -- control --
    def _move(self, obs, target: np.ndarray, theta: float, grip: float) -> tuple[np.ndarray, bool]:
        eef = obs["robot0_eef_pos"]
        err = target - eef
        pos = np.clip(err * self.cfg.gain, -1, 1)
        rot_err = rotation_error(yaw_rotation(theta), quat_matrix(obs["robot0_eef_quat"]))
        rot = np.clip(rot_err * self.cfg.rot_gain, -1, 1)
        done = np.linalg.norm(err) < self.cfg.tolerance and np.linalg.norm(rot_err) < 0.08
        return np.concatenate([pos, rot, [grip]]), bool(done)

    def act(self, obs) -> np.ndarray:
        """The next 7-D action (policy convention) for the raw robosuite observation ``obs``."""
        if self.phase == "plan":
            self._plan_grasp()
            self.phase = "approach"
        p, cfg = self.plan, self.cfg
        xy, z = p["xy"], p["z"]
        if self.phase == "approach":
            target = np.array([*xy, p["safe"] + 0.02])
            a, done = self._move(obs, target, p["theta"], OPEN)
            err_xy = np.linalg.norm(obs["robot0_eef_pos"][:2] - xy)
            if err_xy < 0.01 and done:
                self.phase = "descend"
            return a
        if self.phase == "descend":
            a, done = self._move(obs, np.array([*xy, z]), p["theta"], OPEN)
            if done:
                self.phase, self.timer = "close", 0
            return a
        if self.phase == "close":
            a, _ = self._move(obs, np.array([*xy, z]), p["theta"], CLOSED)
            self.timer += 1
            if self.timer >= cfg.close_steps:
                self.phase = "lift"
            return a
        dest_xy, support = self._dest_point()
        if self.phase in ("carry", "lower"):  # bring the object's centre, not the grasp point, over the target
            held = self._box(self.obj).center[:2]
            dest_xy = dest_xy + (obs["robot0_eef_pos"][:2] - held)
        carry = max(p["carry_clear"], support + 0.05) + p["grip_offset"]
        if self.phase == "lift":
            a, done = self._move(obs, np.array([*obs["robot0_eef_pos"][:2], carry]), p["theta"], CLOSED)
            a[:2] = 0.0
            lifted = self.data.xpos[self.obj_body][2] - p["obj_z0"]
            if obs["robot0_eef_pos"][2] > min(carry, z + 0.06) - 0.01:
                if lifted < 0.02:  # dropped or missed: plan again from the current scene
                    self.tries += 1
                    self.phase = "plan" if self.tries <= cfg.retries else "give_up"
                    return np.array([0, 0, 0, 0, 0, 0, OPEN], float)
                self.phase = "carry"
            return a
        if self.phase == "carry":
            a, done = self._move(obs, np.array([*dest_xy, carry]), p["theta"], CLOSED)
            if np.linalg.norm(obs["robot0_eef_pos"][:2] - dest_xy) < 0.015:
                self.phase = "lower"
            return a
        if self.phase == "lower":
            low = support + p["grip_offset"] + 0.015
            a, done = self._move(obs, np.array([*dest_xy, low]), p["theta"], CLOSED)
            if done or obs["robot0_eef_pos"][2] < low + 0.01:
                self.phase, self.timer = "release", 0
            return a
        if self.phase == "release":
            self.timer += 1
            if self.timer >= cfg.release_steps:
                self.phase = "retreat"
            return np.array([0, 0, 0, 0, 0, 0, OPEN], float)
        # retreat / give_up: back up and hold the gripper open
        a, _ = self._move(obs, np.array([*obs["robot0_eef_pos"][:2], carry + 0.05]), p["theta"], OPEN)
        a[:2] = 0.0
        return a


def _segment_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    ab = b - a
    t = float(np.clip(np.dot(p - a, ab) / max(float(np.dot(ab, ab)), 1e-12), 0.0, 1.0))
    return float(np.linalg.norm(p - (a + t * ab)))


def _path_top(a: np.ndarray, b: np.ndarray, boxes: list[Box], margin: float) -> float:
    """Highest top among the boxes whose footprint comes within ``margin`` of the segment a→b (xy)."""
    tops = [-np.inf]
    for box in boxes:
        corners = [np.array([x, y]) for x in (box.lo[0], box.hi[0]) for y in (box.lo[1], box.hi[1])]
        inside = all(box.lo[i] <= q[i] <= box.hi[i] for q in (a, b) for i in (0, 1))
        near = min(_segment_distance(c, a, b) for c in corners + [box.center[:2]]) < margin + max(box.size[:2]) / 2
        if inside or near:
            tops.append(float(box.hi[2]))
    return max(tops)


def _is_dest(box: Box, dest_xy: np.ndarray) -> bool:
    return bool(box.lo[0] <= dest_xy[0] <= box.hi[0] and box.lo[1] <= dest_xy[1] <= box.hi[1])


def _wrap_half_pi(theta: float) -> float:
    """The same finger axis with a yaw in (-pi/2, pi/2]."""
    while theta <= -math.pi / 2:
        theta += math.pi
    while theta > math.pi / 2:
        theta -= math.pi
    return theta


def _xy_distance(p: np.ndarray, box: Box) -> float:
    dx = max(box.lo[0] - p[0], 0.0, p[0] - box.hi[0])
    dy = max(box.lo[1] - p[1], 0.0, p[1] - box.hi[1])
    return math.hypot(dx, dy)


# -- which tasks the expert covers -------------------------------------------------------------
def task_goal(suite: str, task_id: int) -> tuple[list, dict]:
    """The parsed BDDL ``(goal_state, objects)`` of one task, without building its simulator."""
    from libero.libero.envs.bddl_utils import robosuite_parse_problem

    from vla_adp.envs.libero import _libero

    benchmark, get_libero_path, _ = _libero()
    task = benchmark.get_benchmark_dict()[suite]().get_task(task_id)
    import os

    problem = robosuite_parse_problem(os.path.join(get_libero_path("bddl_files"), task.problem_folder, task.bddl_file))
    return problem["goal_state"], problem["objects"]


def covers(goal: list, objects: dict) -> bool:
    """One ``On``/``In`` predicate whose first argument is a movable object of the scene."""
    return (len(goal) == 1 and len(goal[0]) == 3 and goal[0][0].lower() in ("on", "in")
            and any(goal[0][1] in names for names in objects.values()))


def covered_tasks(suite: str) -> list[int]:
    """Task ids of ``suite`` that are one pick-and-place goal (the others are listed by
    :func:`uncovered_tasks`)."""
    from vla_adp.envs.libero import suite_tasks

    return [i for i in range(len(suite_tasks(suite))) if covers(*task_goal(suite, i))]


def uncovered_tasks(suite: str) -> dict[int, list]:
    """Task id -> goal predicates, for the tasks of ``suite`` the expert does not cover."""
    from vla_adp.envs.libero import suite_tasks

    out = {}
    for i in range(len(suite_tasks(suite))):
        goal, objects = task_goal(suite, i)
        if not covers(goal, objects):
            out[i] = goal
    return out
