"""The runtime's settings (amo.settings): command-line options over AMO_ variables over the params
file over the built-in defaults; a bad value is named by where it came from."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from amo.config import ConfigError
from amo.settings import RuntimeSettings, env_name, load_settings


@pytest.fixture
def bare(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working folder and no AMO_ variable set."""
    for name in RuntimeSettings.model_fields:
        monkeypatch.delenv(env_name(name), raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_options_beat_the_environment_which_beats_params_yaml(bare: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each source wins over the next: option, AMO_ variable, params.yaml (read without any
    training section), built-in default."""
    assert load_settings().port == 8000 and load_settings().registry == "registry"
    (bare / "params.yaml").write_text(yaml.safe_dump({"serve": {"port": 9001, "arms": "off"},
                                                      "registry": {"path": "file:///srv/amo"},
                                                      "data": {"max_prompt_chars": 100}}))
    settings = load_settings()
    assert (settings.port, settings.arms, settings.registry, settings.max_prompt_chars) == (
        9001, "off", "file:///srv/amo", 100)
    monkeypatch.setenv("AMO_PORT", "9002")
    monkeypatch.setenv("AMO_REGISTRY", "/elsewhere")
    assert (load_settings().port, load_settings().registry) == (9002, "/elsewhere")
    assert load_settings(port=9003, host=None).port == 9003
    assert load_settings().arms == "off"  # still from the file


def test_named_params_file_and_amo_params(bare: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A params file named by --params or AMO_PARAMS is read; one that is missing is an error
    naming it (./params.yaml is only read when it exists)."""
    other = bare / "ops" / "serve.yaml"
    other.parent.mkdir()
    other.write_text(yaml.safe_dump({"serve": {"generation_queue": 3}}))
    assert load_settings(other).generation_queue == 3
    monkeypatch.setenv("AMO_PARAMS", str(other))
    assert load_settings().generation_queue == 3
    with pytest.raises(ConfigError, match=r"missing\.yaml: file not found"):
        load_settings(bare / "missing.yaml")


@pytest.mark.parametrize(("where", "words"), [
    ("env", "AMO_MAX_NEW_TOKENS: Input should be greater than or equal to 1, got '0'"),
    ("file", "params.yaml is invalid:\n  serve.max_new_tokens: Input should be greater than or equal to 1, got 0"),
    ("option", "--max-new-tokens: Input should be greater than or equal to 1, got 0"),
])
def test_a_bad_value_is_named_by_its_source(bare: Path, monkeypatch: pytest.MonkeyPatch, where: str,
                                            words: str) -> None:
    """A bad value is refused naming the variable, the params key or the option it came from."""
    options = {}
    if where == "env":
        monkeypatch.setenv("AMO_MAX_NEW_TOKENS", "0")
    elif where == "file":
        (bare / "params.yaml").write_text(yaml.safe_dump({"serve": {"max_new_tokens": 0}}))
    else:
        options["max_new_tokens"] = 0
    with pytest.raises(ConfigError) as error:
        load_settings(**options)
    assert words in str(error.value)


def test_environment_round_trip(bare: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings handed to worker processes as AMO_ variables read back equal."""
    settings = load_settings(port=9100, arms="eager", request_timeout_seconds=7.5, registry="s3://b/amo")
    for name, value in settings.environment().items():
        monkeypatch.setenv(name, value)
    assert load_settings() == settings
