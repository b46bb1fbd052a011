"""The runtime's settings, for `amo serve`, `uvicorn --factory amo.runtime:create_app` and the
registry commands, from any folder:

    AMO_REGISTRY=s3://bucket/amo AMO_PORT=8080 AMO_WORKERS=2 amo serve

Each field of `params.yaml: serve` is also AMO_<NAME> (AMO_PORT, AMO_ARMS, AMO_MAX_NEW_TOKENS...),
plus AMO_REGISTRY, AMO_CACHE_DIR and AMO_VERIFY_KEY (`registry.path`, `.cache_dir`, `.verify_key`), AMO_MAX_PROMPT_CHARS
(`data.max_prompt_chars`) and AMO_PARAMS (the params file). Precedence: command-line options,
then the environment, then the params file (AMO_PARAMS, else ./params.yaml when there is one;
only its data, registry and serve sections are read), then the built-in defaults.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from amo.config import (
    ConfigError,
    DataParams,
    RegistryParams,
    ServeParams,
    parse_sections,
    read_params_file,
)
from amo.registry import Registry

ENV_PREFIX = "AMO_"


class RuntimeSettings(ServeParams, BaseSettings):
    """`params.yaml: serve`'s fields, and where the registry is; see the module docstring."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    registry: str = Field(RegistryParams.model_construct().path, description="A folder (relative to the "
                          "working folder), file:// or any fsspec URL (s3://bucket/amo).")
    cache_dir: str = Field(RegistryParams.model_construct().cache_dir, description="Where bundles of a non-local "
                           "registry are downloaded and verified.")
    verify_key: str | None = Field(RegistryParams.model_construct().verify_key, description="A PEM public "
                                   "key: bundles not signed with its private key are refused (amo.signing).")
    max_prompt_chars: int = Field(DataParams.model_construct().max_prompt_chars, ge=1)
    params: Path | None = Field(None, description="The params file read for defaults; default "
                                "./params.yaml when it exists, none otherwise.")

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, ParamsFileSource(settings_cls)

    def open_registry(self, repo: Path = Path(".")) -> Registry:
        """The registry these settings name (relative paths from `repo`)."""
        return Registry.from_params(RegistryParams(path=self.registry, cache_dir=self.cache_dir,
                                                   verify_key=self.verify_key), repo)

    def environment(self) -> dict[str, str]:
        """These settings as AMO_ variables, for worker processes to read back whole."""
        values = self.model_dump(exclude={"params"}, exclude_none=True)
        environment = {env_name(name): str(value) for name, value in values.items()}
        if self.decision_log is None:  # off: said explicitly, or a worker would fall back to the default
            environment[env_name("decision_log")] = ""
        return environment


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


class ParamsFileSource(PydanticBaseSettingsSource):
    """The params file's data, registry and serve sections, as settings (the lowest source)."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads the file once

    def __call__(self) -> dict[str, Any]:
        named = self.current_state.get("params")
        path = Path(named) if named else Path("params.yaml")
        if not path.is_file():
            if named:
                raise ConfigError(f"{path}: file not found (named by --params or {env_name('params')})")
            return {}
        raw = read_params_file(path)
        parse_sections(raw, ("data", "registry", "serve"), str(path))  # bad keys named by the file's key
        values = dict(raw.get("serve") or {})
        registry, data = raw.get("registry") or {}, raw.get("data") or {}
        for key, name in (("path", "registry"), ("cache_dir", "cache_dir"), ("verify_key", "verify_key")):
            if key in registry:
                values[name] = registry[key]
        if "max_prompt_chars" in data:
            values["max_prompt_chars"] = data["max_prompt_chars"]
        return values


def load_settings(params_file: Path | None = None, **options: Any) -> RuntimeSettings:
    """Settings from `options` (command-line values; None: not given), the environment, the
    params file and the defaults; ConfigError naming the variable, option or key of a bad value."""
    given = {name: value for name, value in options.items() if value is not None}
    if params_file is not None:
        given["params"] = params_file
    try:
        return RuntimeSettings(**given)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = str(error["loc"][0]) if error["loc"] else "?"
            if name in given:
                where = f"--{name.replace('_', '-')}"
            elif env_name(name) in os.environ or env_name(name).lower() in os.environ:
                where = env_name(name)
            else:
                where = f"params file {name}"
            problems.append(f"{where}: {error['msg']}, got {error.get('input')!r}")
        raise ConfigError("runtime settings are invalid:\n  " + "\n  ".join(problems)) from None
