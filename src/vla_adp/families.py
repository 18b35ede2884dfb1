"""The model families vla-adp runs, in one table: name → how to load its policy and build its pruners.

    --family NAME ─► FAMILIES[NAME] ─► .load(checkpoint, config, pruner, platform=, dtype=, device=) ─► policy
                                   ├─► .build_pruner(name, keep_ratio=, config_file=, **fields) ───► pruner
                                   └─► .envs: env name → the env adapter its observations come from

Every command that loads a checkpoint (``eval``, ``sweep``, ``serve``, ``predict``, ``analyze``), the
evaluation job (:class:`vla_adp.eval.job.EvalJob`) and ``bench``'s ``--family`` look the family up
here, so the allowed names are defined once. A family is a policy class with OFT's ``load(path,
config, pruner, platform=, dtype=, device=)`` classmethod and ``infer``/``reset``/``new_session``
(:class:`vla_adp.policy.Policy`), a pruner factory with :func:`vla_adp.pruning.registry.build_pruner`'s
signature, and the config its ``load`` takes. Entries name them as ``"module:attribute"`` and import
them only when used (as the pruner registry does), so listing the families loads no model code.

Adding a family is one entry (the π0 / π0.5 entries below are an example: their own policy, config
function, pruner factory, env adapter and a load option naming the checkpoint type they expect); the
entry's modules must sit on a floor below ``families`` in tests/test_layering.py (a test checks it).
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LOAD_OPTIONS = ("platform",)  # load options a family may refuse (the others apply to every family)
OFT_CONFIG = "vla_adp.policy:PolicyConfig"
_REF = re.compile(r"^vla_adp(\.\w+)+:\w+$")


def resolve(ref: str) -> Any:
    """The attribute a ``"package.module:attribute"`` reference names (imports the module)."""
    module, attr = ref.split(":")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class ModelFamily:
    """One model family.

    Args:
        name: the ``--family`` value (an identifier).
        description: one line for ``--help``.
        policy: ``"module:Class"`` of the policy; ``Class.load(path, config, pruner, platform=, dtype=, device=)``.
        config: ``"module:callable"`` building the config ``load`` takes from keyword fields: the
            evaluation job's ``policy`` dict and the CLI's ``unnorm_key``, ``center_crop`` and
            ``action_slice`` (a config class, or a function mapping those onto the family's own config);
            ``None``: the family has no config and ``load`` gets ``None``.
        pruner_factory: ``"module:function"`` building a pruner as
            :func:`vla_adp.pruning.registry.build_pruner` does (a family maps method names to its own
            variants there).
        refused: ``(option, why)`` pairs: load options (of :data:`LOAD_OPTIONS`) that do not apply to
            this family; giving one is an error that says why.
        options: ``(keyword, value)`` pairs every ``load`` of this family passes to the policy class
            (e.g. the π0 entries' ``family``: the checkpoint type the policy must find).
        envs: ``(env name, "vla_adp.envs.module")`` pairs: the env adapters this family's policy reads
            (an adapter has the interface of :mod:`vla_adp.eval.job`'s env modules); ``None``: the
            default adapters of :data:`vla_adp.eval.job.ENV_FACTORIES` (OpenVLA-OFT's protocol).
    """

    name: str
    description: str
    policy: str
    config: str | None = OFT_CONFIG
    pruner_factory: str = "vla_adp.pruning.registry:build_pruner"
    refused: tuple[tuple[str, str], ...] = ()
    options: tuple[tuple[str, Any], ...] = ()
    envs: tuple[tuple[str, str], ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ValueError(f"ModelFamily.name must be an identifier, got {self.name!r}")
        for field in ("policy", "config", "pruner_factory"):
            ref = getattr(self, field)
            if not (ref is None and field == "config") and not (isinstance(ref, str) and _REF.match(ref)):
                raise ValueError(f"ModelFamily {self.name!r}: {field} must be 'vla_adp.module:attribute', got {ref!r}")
        bad = [opt for opt, _ in self.refused if opt not in LOAD_OPTIONS]
        if bad:
            raise ValueError(f"ModelFamily {self.name!r}: refused options {bad} are not load options {LOAD_OPTIONS}")
        bad = [m for _, m in self.envs or () if not (isinstance(m, str) and re.match(r"^vla_adp(\.\w+)+$", m))]
        if bad:
            raise ValueError(f"ModelFamily {self.name!r}: env adapters must be 'vla_adp.package.module', got {bad}")

    @property
    def oft_settings(self) -> bool:
        """Whether the family's config is OpenVLA-OFT's :class:`~vla_adp.policy.PolicyConfig` (unnorm key,
        centre crop, action slice): the commands then fill every field; otherwise only those the user set."""
        return self.config == OFT_CONFIG

    def check_options(self, **options: Any) -> None:
        """Refuse the load options (given, i.e. not ``None``) that do not apply to this family."""
        for option, why in self.refused:
            if options.get(option) is not None:
                raise ValueError(f"--{option} {options[option]!r} does not apply to --family {self.name} ({why})")

    def make_config(self, **fields: Any):
        """The family's policy config from keyword fields (``None`` when it has no config class)."""
        if self.config is None:
            if any(v is not None for v in fields.values()):
                raise ValueError(f"--family {self.name} takes no policy settings, got {sorted(fields)}")
            return None
        return resolve(self.config)(**fields)

    def load(self, checkpoint: str | Path, config: Any = None, pruner: Any = None, platform: Any = None,
             dtype: Any = None, device: str = "cpu", **options: Any):
        """The family's policy around ``checkpoint`` (a folder or a Hub repo id); ``config=None``: the default;
        ``options``: the policy class's own load options (e.g. what an env adapter's protocol asks of π0)."""
        self.check_options(platform=platform)
        if config is None and self.config is not None:
            config = self.make_config()
        return resolve(self.policy).load(checkpoint, config, pruner, platform=platform, dtype=dtype, device=device,
                                         **dict(self.options), **options)

    def env_adapter(self, env: str, default: str) -> str:
        """The env module this family runs ``env`` through (``default``: the OFT protocol's adapter)."""
        if self.envs is None:
            return default
        adapters = dict(self.envs)
        if env not in adapters:
            raise ValueError(f"--family {self.name} runs on the environments {sorted(adapters)}, not {env!r}")
        return adapters[env]

    def build_pruner(self, name: str | None, keep_ratio: float | None = None, config_file: str | Path | None = None,
                     **fields: Any):
        """A pruner for this family's policy (arguments as :func:`vla_adp.pruning.registry.build_pruner`)."""
        return resolve(self.pruner_factory)(name, keep_ratio=keep_ratio, config_file=config_file, **fields)


DEFAULT_FAMILY = "oft"
PI0_FAMILIES = ("pi0", "pi05")  # the flow-matching families (vla_adp.pi0_policy)
FAMILIES: dict[str, ModelFamily] = {f.name: f for f in (
    ModelFamily("oft", "OpenVLA-OFT (parallel decoding of an action chunk; the default)",
                policy="vla_adp.policy:Policy"),
    ModelFamily("openvla", "OpenVLA, autoregressive (openvla/openvla-7b's layout: one action per query, "
                "greedy action tokens)", policy="vla_adp.openvla_policy:OpenVLAPolicy",
                pruner_factory="vla_adp.pruning.openvla:build_openvla_pruner",
                refused=(("platform", "one action per query, its width from the dataset statistics"),)),
    *(ModelFamily(name, f"{title} (flow matching; LeRobot's hub layout: the `{name}` type in config.json)",
                  policy="vla_adp.pi0_policy:Pi0Policy", config="vla_adp.pi0_policy:pi0_config",
                  pruner_factory="vla_adp.pruning.pi0:build_pi0_pruner", options=(("family", name),),
                  refused=(("platform", "the checkpoint's features set the platform; the LIBERO protocol "
                                        "(--protocol) sets the actions executed per chunk"),),
                  envs=(("libero", "vla_adp.envs.libero_pi0"),))
      for name, title in (("pi0", "π0"), ("pi05", "π0.5"))),
)}


def get_family(name: str) -> ModelFamily:
    """The family called ``name``; an unknown name is an error listing the known ones."""
    if not isinstance(name, str) or name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}; expected one of {sorted(FAMILIES)}")
    return FAMILIES[name]
