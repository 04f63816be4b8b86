"""Roles, not field names: model configs name roles that each dataset block maps to its own fields, resolved with
the config (before any build); the shipped configs resolve exactly as they did when they named fields."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mdl_bench.benchmark.config import ConfigSet
from mdl_bench.benchmark.runner import resolve
from mdl_bench.benchmark.store import config_hash
from mdl_bench.benchmark.suite import Suite
from mdl_bench.kernel.errors import UserError

# Config hashes of shipped expids (first computed on the tree before roles existed: model configs naming fields, no
# `roles` or `domain_names` in the dataset blocks): a change to how configs resolve must not move them, so stored
# runs keep being found. A change to the configs themselves (a new tuned recipe) moves them, and is pinned anew.
PINNED = {
    ("Crocodile_default", None): "9d2d409ce38fda5d72b3e5e7d1fe836187696b05dcb55daf1a9cd98e8825ba31",
    ("PEPNet_default", None): "431e9e08a754c7d002ecd8bc135edde575010f086627741ce83ac67ee1f79d17",
    ("Crocodile_kuairand", None): "26c5614e15c0e38124fbb4b3c4217c176ec6e21e1e1e2b624b4a185714569e5e",
    ("PEPNet_kuairand", None): "ea0c58615353109a6a3958daeb2f771fd157732a2c52bcb712ba1884cf3d7ebb",
    ("Crocodile_aliccp", None): "2130022b7924453cf36f0220c91913d4ae9fc2db8f5310df2e698566701bdfd2",
    ("PEPNet_aliccp", None): "2d6256c67fe52c01d14428b0a4b2a760a319ae5ce633c50618002f6fee8417b8",
    ("PEPNet_test", None): "af3ab30bf29e8d9a24fdc0ff7bd0f0dd5d1bf98b70aa3f3929864600bf45b4f3",
    ("Crocodile_test", None): "c4e1bf622fe4bb9c412a0483155330b4b963e818dd44a5bcf8192cd277bc2e70",
    ("MMoE_default", "aliccp_like"): "f134052395aa5d41321442a926a9b3d3686329cbf3bce320f6677c46a00be9ec",
    ("STAR_default", "regime_rho0_skew40"): "f1f0e0f6a184505b522e09e5aed8acc31ad699a1e5a2244c937395776843e054",
}


@pytest.mark.parametrize("expid,dataset", list(PINNED))
def test_shipped_expids_keep_their_config_hash(expid, dataset):
    params, _, _ = resolve(expid, None, {"dataset_id": dataset} if dataset else {})
    assert config_hash(params) == PINNED[(expid, dataset)]
    assert "roles" not in params and "domain_names" not in params  # the resolved config names fields only


def test_roles_resolve_to_each_datasets_fields():
    expected = {"kuairand_like": ["user_id", "item_id", "domain"], "kuairand1k": ["user_id", "video_id", "tab"],
                "aliccp": ["user_id", "item_id", "domain"]}
    for dataset, fields in expected.items():
        params, _, _ = resolve("Crocodile_default", None, {"dataset_id": dataset})
        assert params["prior_fields"] == fields
    authors = {"kuairand_like": "item_author", "kuairand1k": "author_id", "aliccp": "f207"}
    for dataset, author in authors.items():
        params, _, _ = resolve("PEPNet_default", None, {"dataset_id": dataset})
        assert params["ppnet_prior_fields"][2] == author


def own_config(tmp_path: Path, roles: dict | None = None, **block) -> Path:
    """A config folder with one dataset ``own`` (string ids, a string domain, no group_id)."""
    data = {"data_root": str(tmp_path / "data"), "data_format": "csv", "train_data": str(tmp_path / "t.csv"),
            "valid_data": str(tmp_path / "v.csv"), "test_data": str(tmp_path / "t.csv"),
            "domain_field": "surface", "domains": ["home", "search", "feed"], "min_categr_count": 1,
            "feature_cols": [{"name": ["uid", "iid"], "active": True, "dtype": "str", "type": "categorical"},
                             {"name": "surface", "active": True, "dtype": "str", "type": "categorical"}],
            "label_col": {"name": "clicked", "dtype": "float"}}
    if roles is not None:
        data["roles"] = roles
    data.update(block)
    folder = tmp_path / "config"
    folder.mkdir(exist_ok=True)
    (folder / "dataset_config.yaml").write_text(yaml.safe_dump({"own": data}))
    return folder


def test_a_dataset_with_roles_gets_plain_fields_a_user_grouping_and_its_own_domain_labels(tmp_path):
    config = own_config(tmp_path, roles={"user": "uid", "item": "iid"})
    croc, _, _ = resolve("Crocodile_test", config, {"dataset_id": "own"})
    assert croc["prior_fields"] == ["uid", "iid", "surface"]
    assert croc["group_id"] == "group_id"
    assert {"name": "group_id", "active": True, "dtype": "str", "type": "meta",
            "preprocess": "copy_from(uid)"} in croc["feature_cols"]
    assert croc["domain_names"] == ["home", "search", "feed"]  # the value itself, not S<value>
    pep, _, _ = resolve("PEPNet_test", config, {"dataset_id": "own"})
    assert pep["ppnet_prior_fields"] == ["uid", "iid"]  # (author): left out where the dataset has no author
    explicit, _, _ = resolve("Crocodile_test", config, {"dataset_id": "own", "prior_fields": ["iid", "surface"]})
    assert explicit["prior_fields"] == ["iid", "surface"]  # an explicit field list still works


def test_domain_names_a_list_or_a_template(tmp_path):
    listed, _, _ = resolve("MMoE_test", own_config(tmp_path, {"user": "uid"}, domain_names=["H", "Q", "F"]),
                           {"dataset_id": "own"})
    assert listed["domain_names"] == ["H", "Q", "F"]
    template, _, _ = resolve("MMoE_test", own_config(tmp_path, {"user": "uid"}, domain_names="d-{}"),
                             {"dataset_id": "own"})
    assert template["domain_names"] == ["d-home", "d-search", "d-feed"]
    with pytest.raises(UserError, match=r"`domain_names` of dataset 'own' is the text 'D'; give a list"):
        resolve("MMoE_test", own_config(tmp_path, {"user": "uid"}, domain_names="D"), {"dataset_id": "own"})
    with pytest.raises(UserError, match=r"`domain_names` of dataset 'own' gives two domains the same name"):
        resolve("MMoE_test", own_config(tmp_path, {"user": "uid"}, domain_names=["a", "b", "a"]), {"dataset_id": "own"})


@pytest.mark.parametrize("roles,expid,pattern", [
    ({"user": "uid"}, "Crocodile_test", r"^expid 'Crocodile_test' on dataset 'own': prior_fields names 'item', which "
                                        r"is neither a role nor a field .*declare it in the dataset block "
                                        r"\(`roles: \{item: <column>\}`\)"),
    ({"user": "uid", "item": "item_id"}, "MMoE_test", r"gives role 'item' the column 'item_id', which is not an "
                                                      r"active .* column"),
    ({"item": "iid"}, "MMoE_test", r"gAUC groups rows by user, but the dataset names no user; declare `roles: "
                                   r"\{user: <column>\}`"),
    ({"user": "uid", "domain": "iid"}, "MMoE_test", r"gives role 'domain' the column 'iid', but the domain is "
                                                    r"`domain_field` \('surface'\)"),
    ("uid", "MMoE_test", r"`roles` of dataset 'own' \(from .*dataset_config.yaml\) must map role names to column "
                         r"names \(e.g. \{user: user_id, item: item_id\}\), got 'uid'"),
])
def test_missing_roles_are_one_line_errors_with_the_fix(tmp_path, roles, expid, pattern):
    with pytest.raises(UserError, match=pattern) as info:
        resolve(expid, own_config(tmp_path, roles), {"dataset_id": "own"})
    assert "\n" not in str(info.value)


def test_a_model_default_naming_absent_fields_is_caught_at_resolution(tmp_path):
    config = own_config(tmp_path, roles={"user": "uid", "item": "iid"})
    models = {"Croc_nodefault": {"model": "Crocodile", "dataset_id": "own", "learning_rate": 1.0e-2}}
    (config / "model_config.yaml").write_text(yaml.safe_dump(models))
    with pytest.raises(UserError, match=r"prior_fields \(not set, so the model's default \['user_id', 'item_id', "
                                        r"'domain'\]\) names 'user_id', .*; set prior_fields in the expid's block to "
                                        r"roles or fields the dataset has"):
        resolve("Croc_nodefault", config, {})


def test_a_suite_checks_every_row_against_every_dataset_before_the_first_run(tmp_path):
    config = own_config(tmp_path, roles={"user": "uid"})  # no item role: Crocodile and PEPNet cannot run here
    suite = Suite({"name": "own", "datasets": ["tiny_synth", "own"],
                   "expids": ["MMoE_test", "PEPNet_test", "Crocodile_test"]})
    with pytest.raises(UserError) as info:
        suite.plan(config)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("suite 'own', expid PEPNet_test: expid 'PEPNet_test' on dataset 'own': "
                              "ppnet_prior_fields names 'item'")
    assert not (tmp_path / "data").exists()  # nothing was built or run


def test_the_shipped_datasets_keep_their_labels():
    config = ConfigSet()
    for dataset in ("kuairand_like", "aliccp_like", "conflict_like", "tiny_synth", "kuairand1k", "aliccp"):
        params = config.load("MMoE_test", {"dataset_id": dataset})
        assert "domain_names" not in params  # S<value>, the model's own labels
    from mdl_bench.benchmark.data.build import domain_names
    assert domain_names(config.load("MMoE_test", {"dataset_id": "aliccp"})) == ["S1", "S2", "S3"]
