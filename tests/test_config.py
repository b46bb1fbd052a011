"""params.yaml is read into typed config; bad values are refused with their key and value."""

from pathlib import Path

import pytest
import yaml

from amo.config import ConfigError, load_params, parse_params

PROJECT = Path(__file__).resolve().parents[1]

ROOT = Path(__file__).resolve().parents[1]


def raw() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_repository_params_load() -> None:
    """The committed params.yaml is valid and has the demo's two arm tasks."""
    params = load_params(ROOT / "params.yaml")
    assert set(params.arms.tasks) >= {"product_extraction", "query_rewrite"}
    assert params.router.max_k >= 1


@pytest.mark.parametrize(("path", "value", "needle"), [
    (("router", "epochs"), 0, "router.epochs"),
    (("router", "lr"), -1.0, "router.lr"),
    (("router", "min_k"), 9, "min_k must be <= max_k"),
    (("arms", "tasks", "query_rewrite", "r"), 0, "arms.tasks.query_rewrite.r"),
    (("arms", "tasks", "query_rewrite", "template"), "no placeholder", "{input}"),
    (("planner", "max_depth"), "deep", "planner.max_depth"),
    (("router", "epoch"), 3, "router.epoch: unknown key"),
])
def test_bad_value_is_refused_with_key_and_value(path: tuple, value: object, needle: str) -> None:
    """A bad value raises ConfigError naming the dotted key and showing the value."""
    data = raw()
    node = data
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    with pytest.raises(ConfigError) as info:
        parse_params(data)
    assert needle in str(info.value)
    assert repr(value) in str(info.value) or path[-1] == "min_k"


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    """A missing or malformed file is named in the error."""
    with pytest.raises(ConfigError, match="file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("router: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)


def test_config_defaults_are_params_yaml() -> None:
    """params.yaml is the one source of every number: each typed field's default equals the
    value params.yaml sets, and params.yaml sets every field."""
    from pydantic import BaseModel

    raw = yaml.safe_load((PROJECT / "params.yaml").read_text())

    def differences(model: BaseModel, data: dict, prefix: str = "") -> list[str]:
        found = []
        for name, field in type(model).model_fields.items():
            key = f"{prefix}{name}"
            if name not in data:
                found.append(f"{key}: not in params.yaml")
                continue
            value = getattr(model, name)
            if isinstance(value, BaseModel) and isinstance(data[name], dict):
                found += differences(value, data[name], key + ".")
            elif not field.is_required() and field.default_factory is None and field.default != data[name]:
                found.append(f"{key}: params.yaml {data[name]!r}, config default {field.default!r}")
        return found

    assert differences(load_params(PROJECT / "params.yaml"), raw) == []
