"""Config validation: every mistake is reported with the field it is in."""

from __future__ import annotations

import pytest

from gateway.config import ConfigError, load_config, parse_config

MEMBER = {"name": "a", "base_url": "http://h/v1", "model": "m"}


def test_minimal_config_has_defaults() -> None:
    config = parse_config({"members": [MEMBER]})
    assert config.members[0].dialect == "vllm" and config.store.backend == "memory"


@pytest.mark.parametrize("raw, needle", [
    ({"members": []}, "members: List should have at least 1 item"),
    ({"members": [{**MEMBER, "dialect": "grpc"}]}, "members.0.dialect"),
    ({"members": [{**MEMBER, "typo": 1}]}, "members.0.typo: Extra inputs are not permitted"),
    ({"members": [MEMBER, MEMBER]}, "duplicate members names"),
    ({"members": [MEMBER], "ensembles": [{"name": "e", "members": ["zz"]}]}, "unknown member 'zz'"),
    ({"members": [MEMBER], "ensembles": [{"name": "e", "members": ["a"], "quorum": 2}]}, "quorum 2 exceeds"),
    ({"members": [MEMBER], "tasks": [{"name": "t", "labels": ["x", "X"]}]}, "tasks.0.labels"),
    ({"members": [MEMBER], "ensembles": [{"name": "a", "members": ["a"]}]}, "both a member and an ensemble"),
])
def test_invalid_configs_name_the_field(raw: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match="invalid config") as err:
        parse_config(raw)
    assert needle in str(err.value)


def test_unreadable_and_non_yaml_files(tmp_path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("members: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
