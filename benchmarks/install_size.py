"""Install size of the runtime image's amo[serve] against the full install (`make install`).

    python benchmarks/install_size.py

Runs the Dockerfile's runtime stage (its own RUN lines, tests/dockerfile_stages.py) and `make
install` (every extra: the train image) in two fresh folders, and measures each venv's
site-packages with `du -sm`. Writes `serve_extra_mb` and `full_install_mb` into
benchmarks/results/reliability.json, keeping its other keys.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "reliability.json"
sys.path.insert(0, str(ROOT / "tests"))


def megabytes(venv: Path) -> int:
    (site,) = venv.glob("lib/python3*/site-packages")
    return int(subprocess.run(["du", "-sm", str(site)], capture_output=True, text=True, check=True).stdout.split()[0])


def serve_install(work: Path) -> int:
    from dockerfile_stages import run_stage

    image = run_stage("runtime", work, build_args={"PIP_FIND_LINKS": os.environ.get("PIP_FIND_LINKS", "/opt/wheels")})
    return megabytes(Path(image.env["VENV"]))


def full_install(work: Path) -> int:
    for name in ("Makefile", "pyproject.toml", "README.md", "src"):
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, work / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(source, work / name)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "MAKEFLAGS")}
    subprocess.run(["make", "install"], cwd=work, env=env, check=True)
    return megabytes(work / ".venv")


def main() -> None:
    with tempfile.TemporaryDirectory() as serve_dir, tempfile.TemporaryDirectory() as full_dir:
        sizes = {"serve_extra_mb": serve_install(Path(serve_dir)), "full_install_mb": full_install(Path(full_dir))}
    result = json.loads(RESULT.read_text()) if RESULT.is_file() else {}
    result.update(sizes)
    result["install_size"] = {"command": "python benchmarks/install_size.py", "measured": "du -sm of the venv's "
                              "site-packages: the Dockerfile's runtime stage (amo[serve]) vs `make install` "
                              "(amo[dev]: every extra, CPU torch)"}
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(sizes))


if __name__ == "__main__":
    main()
