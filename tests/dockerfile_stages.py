"""Run a Dockerfile stage's own commands outside Docker (no daemon here), so CI proves them.

    python tests/dockerfile_stages.py runtime /tmp/amo-root [PIP_FIND_LINKS=/opt/wheels]  # prints what ran

Each container path is a folder under `root` (`/opt/amo` -> `<root>/opt/amo`): ENV values written
as absolute paths are moved there, COPY copies from the build context (or from an earlier stage's
folders), WORKDIR is created, and every RUN line runs verbatim under `bash -c` with that
environment and `python` the interpreter running this file (3.11, as the base image). RUN lines
that set up the operating system (useradd, apt-get, chown) are skipped and listed. The stage's
CMD and HEALTHCHECK are returned for the caller to run.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SYSTEM_SETUP = ("useradd ", "apt-get ", "chown ")  # need root on the host: the image has them, the proof not
VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Result:
    env: dict[str, str]
    workdir: Path
    cmd: list[str]
    healthcheck: str | None
    ran: list[str]
    skipped: list[str]


def parse(dockerfile: Path) -> dict[str, Stage]:
    """The stages by name, each with its (INSTRUCTION, arguments) in order; continuation lines joined."""
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    logical = re.sub(r"\\\n", " ", dockerfile.read_text())
    for line in logical.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            image, _, name = rest.partition(" AS ")
            current = stages[name.strip()] = Stage(name.strip(), image.strip())
        elif current is not None:
            current.instructions.append((keyword, rest))
    return stages


def _substitute(value: str, env: dict[str, str]) -> str:
    return VARIABLE.sub(lambda m: env.get(m.group(1) or m.group(2), ""), value)


def _inside(root: Path, value: str) -> str:
    """An absolute container path as its folder under `root`; a `:`-list component by component."""
    return ":".join(str(root / part.lstrip("/")) if part.startswith("/") else part for part in value.split(":"))


def _assignments(text: str) -> list[tuple[str, str]]:
    """`A=1 B="x y"` (ENV, ARG) as [("A", "1"), ("B", "x y")]."""
    return [(key, value) for key, _, value in (word.partition("=") for word in shlex.split(text))]


def run_stage(name: str, root: Path, dockerfile: Path = ROOT / "Dockerfile", context: Path = ROOT,
              build_args: dict[str, str] | None = None,
              python: str = getattr(sys, "_base_executable", sys.executable)) -> Result:
    """Run stage `name` (and the stages it starts FROM) with its folders under `root`."""
    stages = parse(dockerfile)
    stage = stages[name]
    if stage.base in stages:
        inherited = run_stage(stage.base, root, dockerfile, context, build_args, python)
        env, ran, skipped = dict(inherited.env), inherited.ran, inherited.skipped
    else:
        bin_dir = root / "usr" / "local" / "bin"  # the base image's python
        bin_dir.mkdir(parents=True, exist_ok=True)
        link = bin_dir / "python"
        if not link.exists():
            link.symlink_to(python)
        # what a container would not inherit from this shell
        env = {key: value for key, value in os.environ.items()
               if not key.startswith(("AMO_", "VIRTUAL_ENV", "PYTHONPATH"))}
        env["PATH"] = f"{bin_dir}:{env['PATH']}"
        env["HOME"] = str(root / "home")
        ran, skipped = [], []
    workdir, cmd, healthcheck = root, [], None
    for keyword, rest in stage.instructions:
        if keyword == "ARG":
            for key, default in _assignments(rest):
                env[key] = (build_args or {}).get(key, default)
        elif keyword == "ENV":
            for key, value in _assignments(rest):
                env[key] = _substitute(_inside(root, value), env)
        elif keyword == "WORKDIR":
            target = _substitute(rest, env)
            workdir = Path(target) if target.startswith(str(root)) else Path(_inside(root, target))
            workdir.mkdir(parents=True, exist_ok=True)
        elif keyword == "COPY":
            words = shlex.split(rest)
            source_root = context
            for option in [w for w in words if w.startswith("--")]:
                if option.startswith("--from="):
                    source_root = root  # an earlier stage's folders: the same tree here
                    built = run_stage(option.removeprefix("--from="), root, dockerfile, context, build_args, python)
                    ran, skipped = ran + built.ran, skipped + built.skipped
            paths = [_substitute(w, env) for w in words if not w.startswith("--")]
            *sources, destination = paths
            target = Path(destination) if destination.startswith(str(root)) else \
                Path(_inside(root, destination)) if destination.startswith("/") else workdir / destination
            for source in sources:
                origin = Path(source) if source.startswith(str(root)) else \
                    (Path(_inside(root, source)) if source.startswith("/") and source_root == root
                     else source_root / source)
                if origin.resolve() == target.resolve():
                    continue
                if origin.is_dir():
                    shutil.copytree(origin, target if source != "." else workdir, dirs_exist_ok=True,
                                    ignore=shutil.ignore_patterns(".venv", ".git", "__pycache__"))
                else:
                    if destination.endswith("/"):
                        target.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(origin, target / origin.name if target.is_dir() else target)
        elif keyword == "RUN":
            if rest.startswith(SYSTEM_SETUP):
                skipped.append(rest)
                continue
            subprocess.run(["bash", "-c", f"set -euo pipefail; {rest}"], cwd=workdir, env=env, check=True)
            ran.append(rest)
        elif keyword == "CMD":
            cmd = json.loads(rest)
        elif keyword == "HEALTHCHECK":
            healthcheck = rest[rest.index("CMD ") + 4:]
    return Result(env, workdir, cmd, healthcheck, ran, skipped)


if __name__ == "__main__":
    result = run_stage(sys.argv[1], Path(sys.argv[2]).resolve(), build_args=dict(
        arg.split("=", 1) for arg in sys.argv[3:]))
    print(json.dumps({"env": {k: v for k, v in result.env.items() if k not in os.environ or
                              os.environ[k] != v}, "workdir": str(result.workdir), "cmd": result.cmd,
                      "healthcheck": result.healthcheck, "ran": result.ran, "skipped": result.skipped}, indent=2))
