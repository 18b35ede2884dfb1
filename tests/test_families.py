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
    assert sorted(FAMILIES) == ["oft", "openvla", "pi0", "pi05"] and DEFAULT_FAMILY == "oft"
    assert all(name == f.name and f.description for name, f in FAMILIES.items())


@pytest.mark.parametrize("name", ["pi9", "OFT", "", None, ["oft"]])
def test_unknown_family_names_the_known_ones(name):
    with pytest.raises(ValueError, match=r"unknown model family .* expected one of \['oft', 'openvla', 'pi0', 'pi05'\]"):
        get_family(name)


@pytest.mark.parametrize("fields,match", [
    ({"name": "pi-0"}, "name must be an identifier"),
    ({"policy": "Policy"}, "policy must be 'vla_adp.module:attribute', got 'Policy'"),
    ({"pruner_factory": None}, "pruner_factory must be"),
    ({"refused": (("device", "no"),)}, r"refused options \['device'\] are not load options"),
    ({"envs": (("libero", "envs.libero_pi0"),)}, r"env adapters must be 'vla_adp.package.module', got \['envs"),
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


@pytest.fixture(scope="module")
def tiny_pi_ckpts(tmp_path_factory):
    from vla_adp.model.pi0.tiny import make_tiny_pi0_checkpoint

    root = tmp_path_factory.mktemp("pi")
    return {f: make_tiny_pi0_checkpoint(root / f, f) for f in ("pi0", "pi05")}


def test_pi0_families_load_their_checkpoint_type_only(tiny_pi_ckpts):
    from vla_adp.pi0_policy import Pi0Policy

    for name in ("pi0", "pi05"):
        policy = get_family(name).load(tiny_pi_ckpts[name], dtype=torch.float32)
        assert type(policy) is Pi0Policy and policy.args.family == name
    with pytest.raises(ValueError, match=r"--family pi05 asked for, but .*pi0 is a pi0 checkpoint .*use --family pi0"):
        get_family("pi05").load(tiny_pi_ckpts["pi0"], dtype=torch.float32)
    with pytest.raises(ValueError, match=r"--family pi0 asked for, but .*pi05 is a pi05 checkpoint"):
        get_family("pi0").load(tiny_pi_ckpts["pi05"], dtype=torch.float32)
    with pytest.raises(ValueError, match="--platform 'libero' does not apply to --family pi05"):
        get_family("pi05").load(tiny_pi_ckpts["pi05"], platform="libero")


def test_pi0_config_accepts_nothing_asked_and_refuses_oft_settings():
    fam = get_family("pi05")
    assert not fam.oft_settings and get_family("oft").oft_settings and get_family("openvla").oft_settings
    # what the commands fill for a checkpoint folder that records nothing means "nothing asked"
    assert fam.make_config() is None
    assert fam.make_config(unnorm_key=None, center_crop=True, action_slice="upstream") is None
    with pytest.raises(ValueError, match=r"--unnorm-key \(unnorm_key='libero_spatial'\): OpenVLA-OFT's setting"):
        fam.make_config(unnorm_key="libero_spatial")
    with pytest.raises(ValueError, match=r"--no-center-crop \(center_crop=False\), --action-slice "
                                         r"\(action_slice='vla_adp'\): OpenVLA-OFT's"):
        fam.make_config(center_crop=False, action_slice="vla_adp")
    with pytest.raises(ValueError, match=r"take no policy settings \['decode'\]"):
        fam.make_config(decode="parallel")


def test_pi0_families_build_the_pi0_pruners_and_run_libero_through_their_adapter():
    from vla_adp.pruning.pruners.vla_pruner_pi0 import VLAPrunerPi0

    assert isinstance(get_family("pi05").build_pruner("vla_pruner", keep_ratio=0.3), VLAPrunerPi0)
    with pytest.raises(ValueError, match="pruner 'lightvla' does not run on π0"):
        get_family("pi0").build_pruner("lightvla")
    assert get_family("pi05").env_adapter("libero", "vla_adp.envs.libero") == "vla_adp.envs.libero_pi0"
    assert get_family("oft").env_adapter("libero", "vla_adp.envs.libero") == "vla_adp.envs.libero"
    with pytest.raises(ValueError, match=r"--family pi05 runs on the environments \['libero'\], not 'metaworld'"):
        get_family("pi05").env_adapter("metaworld", "vla_adp.envs.metaworld")
