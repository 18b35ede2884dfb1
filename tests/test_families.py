"""The table of model families (vla_adp.families): lookup, per-family option checks, loading, pruners."""

from __future__ import annotations

import pytest
import torch

from vla_adp.families import DEFAULT_FAMILY, FAMILIES, ModelFamily, get_family
from vla_adp.openvla_policy import OpenVLAPolicy
from vla_adp.policy import Policy, PolicyConfig
from vla_adp.pruning.pruners.adp import ADPPruner
from vla_adp.pruning.pruners.vla_pruner import VLAPrunerPruner
from vla_adp.pruning.pruners.vla_pruner_openvla import VLAPrunerOpenVLA


def test_table_names_and_default():
    assert sorted(FAMILIES) == ["oft", "openvla"] and DEFAULT_FAMILY == "oft"
    assert all(name == f.name and f.description for name, f in FAMILIES.items())


@pytest.mark.parametrize("name", ["pi9", "OFT", "", None, ["oft"]])
def test_unknown_family_names_the_known_ones(name):
    with pytest.raises(ValueError, match=r"unknown model family .* expected one of \['oft', 'openvla'\]"):
        get_family(name)


@pytest.mark.parametrize("fields,match", [
    ({"name": "pi-0"}, "name must be an identifier"),
    ({"policy": "Policy"}, "policy must be 'vla_adp.module:attribute', got 'Policy'"),
    ({"pruner_factory": None}, "pruner_factory must be"),
    ({"refused": (("device", "no"),)}, r"refused options \['device'\] are not load options"),
])
def test_bad_records_fail_at_construction(fields, match):
    with pytest.raises(ValueError, match=match):
        ModelFamily(**{"name": "x", "description": "x", "policy": "vla_adp.policy:Policy", **fields})


def test_openvla_refuses_platform_oft_takes_it():
    get_family("oft").check_options(platform="libero")
    get_family("openvla").check_options(platform=None)
    with pytest.raises(ValueError, match="--platform 'libero' does not apply to --family openvla"):
        get_family("openvla").check_options(platform="libero")


def test_each_family_loads_its_policy(tiny_ckpt, tiny_openvla_ckpt):
    oft = get_family("oft").load(tiny_ckpt, dtype=torch.float32)
    ovla = get_family("openvla").load(tiny_openvla_ckpt, PolicyConfig(center_crop=False), dtype=torch.float32)
    assert type(oft) is Policy and type(ovla) is OpenVLAPolicy and ovla.center_crop is False
    assert get_family("oft").make_config(unnorm_key=None) == PolicyConfig()


def test_each_family_builds_its_pruner_variant():
    assert isinstance(get_family("oft").build_pruner("vla_pruner", keep_ratio=0.3), VLAPrunerPruner)
    ovla = get_family("openvla").build_pruner("vla-pruner", keep_ratio=0.3)
    assert isinstance(ovla, VLAPrunerOpenVLA) and ovla.config.keep_ratio == 0.3
    adp = get_family("openvla").build_pruner("adp", keep_ratio=0.5)
    assert isinstance(adp, ADPPruner) and adp.config.keep_ratio == 0.5
    with pytest.raises(ValueError, match="pruner 'lightvla' does not run on OpenVLA"):
        get_family("openvla").build_pruner("lightvla")
