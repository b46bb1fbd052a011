"""`amo plots`: dvc.yaml's four plots drawn by `dvc plots show` into one page that renders
offline (the vega scripts inlined from npm tarballs, no CDN)."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from amo.plots import VEGA, offline_template, show

PROJECT = Path(__file__).resolve().parents[1]


def _fake_npm_cache(folder: Path) -> None:
    """Tarballs shaped like the npm packages, so no registry is needed."""
    folder.mkdir(parents=True)
    for name, (version, member) in VEGA.items():
        body = f"window['{name}'] = 1; /* </script> inside */".encode()
        with tarfile.open(folder / f"{name}-{version}.tgz", "w:gz") as archive:
            info = tarfile.TarInfo(f"package/build/{member}")
            info.size = len(body)
            archive.addfile(info, io.BytesIO(body))


def test_template_inlines_the_scripts_and_leaves_the_cdn_out(tmp_path: Path) -> None:
    """The page holds all three scripts (a '</script' inside escaped) and dvc's plot placeholder."""
    _fake_npm_cache(tmp_path / "vega")
    page = offline_template(tmp_path / "vega").read_text()
    assert all(f"window['{name}'] = 1" in page for name in VEGA)
    assert "{plot_divs}" in page and "cdn.jsdelivr" not in page and "{scripts}" not in page
    assert page.count("</script>") == 3 and "<\\/script>" in page


@pytest.mark.slow  # real `dvc plots show` in a new repository
def test_dvc_plots_show_draws_the_four_plots_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the project's plot definitions and stage-shaped CSVs, the page has four vega plots
    and loads nothing from the network."""
    if shutil.which("dvc", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}") is None:
        pytest.skip("dvc not installed")
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("AMO_CACHE_DIR", str(tmp_path / "cache"))
    _fake_npm_cache(tmp_path / "cache" / "vega")
    repo = tmp_path / "repo"
    repo.mkdir()
    plots = yaml.safe_load((PROJECT / "dvc.yaml").read_text())["plots"]
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"plots": plots[:4]}))
    files = {"metrics/plots/router/loss.csv": "epoch,train_loss,val_loss\n1,2.0,2.1\n2,1.5,1.7\n",
             "metrics/plots/router/margin.csv": "margin,in_scope_accuracy,oos_recall\n-1,0.9,0.5\n0,0.8,0.8\n",
             "metrics/plots/confusion.csv": "actual,predicted\na,a\na,(abstain)\n(abstain),b\n",
             **{arm: "step,loss\n1,0.9\n2,0.5\n" for arm in plots[3]["arm_loss"]["y"]}}
    for path, text in files.items():
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text(text)
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run(["dvc", "init", "-q"], cwd=repo, check=True, env=dict(os.environ, DVC_NO_ANALYTICS="1"))
    page = show(repo, repo / "out").read_text()
    assert page.count("vegaEmbed(") == 4
    assert "http://" not in page.split("<body>")[0] and "https://cdn" not in page
    for title in ("Router: listwise loss", "in-scope accuracy against OOS recall", "top agent", "LoRA arms"):
        assert title in page
