"""`dvc plots show` that renders offline.

DVC's HTML page loads vega, vega-lite and vega-embed from a CDN, so it is blank on a machine
without internet. `offline_template` fetches the same versions once from the npm registry
(`npm pack`, into amo's cache folder) and writes a page template with the three scripts inlined;
`show` passes it to `dvc plots show --html-template`, giving one self-contained HTML file.
"""

from __future__ import annotations

import subprocess
import tarfile
from pathlib import Path

from amo.models import cache_dir

# The versions dvc-render's page asks for (dvc_render.vega.VegaRenderer.SCRIPTS).
VEGA = {"vega": ("5.20.2", "vega.min.js"), "vega-lite": ("5.2.0", "vega-lite.min.js"),
        "vega-embed": ("6.18.2", "vega-embed.min.js")}
PAGE = """<!DOCTYPE html>
<html>
<head>
    <meta charset="utf-8">
    <title>amo plots</title>
    {scripts_inline}
    <style>table { border-spacing: 15px; }</style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


class PlotsError(RuntimeError):
    """The vega scripts could not be fetched, or dvc could not draw the plots."""


def vega_script(name: str, folder: Path) -> str:
    """The minified script of npm package `name` at the pinned version, fetched once."""
    version, member = VEGA[name]
    tarball = folder / f"{name}-{version}.tgz"
    if not tarball.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        run = subprocess.run(["npm", "pack", f"{name}@{version}", "--pack-destination", str(folder)],
                             capture_output=True, text=True, check=False)
        if run.returncode != 0 or not tarball.is_file():
            raise PlotsError(f"npm pack {name}@{version} failed (needs npm and the npm registry): "
                             f"{run.stderr.strip()[-400:]}")
    with tarfile.open(tarball) as archive:
        handle = archive.extractfile(f"package/build/{member}")
        if handle is None:
            raise PlotsError(f"{tarball}: no package/build/{member}")
        return handle.read().decode("utf-8")


def offline_template(folder: Path | None = None) -> Path:
    """A `dvc plots show --html-template` page with vega, vega-lite and vega-embed inlined."""
    folder = folder or cache_dir() / "vega"
    # A literal "</script" inside a script would end the tag early.
    bodies = [vega_script(name, folder).replace("</script", "<\\/script") for name in VEGA]
    scripts = "\n".join(f"<script>\n{body}\n</script>" for body in bodies)
    page = folder / "dvc_plots_offline.html"
    # `{plot_divs}` stays for dvc to fill; dvc's own `{scripts}` (the CDN tags) is left out.
    page.write_text(PAGE.replace("{scripts_inline}", scripts), encoding="utf-8")
    return page


def show(repo: Path, out: Path) -> Path:
    """Draw every plot of dvc.yaml into `out/index.html`, self-contained."""
    template = offline_template()
    run = subprocess.run(["dvc", "plots", "show", "--html-template", str(template), "-o", str(out)],
                         cwd=repo, capture_output=True, text=True, check=False)
    if run.returncode != 0:
        raise PlotsError(f"dvc plots show failed: {(run.stderr or run.stdout).strip()[-800:]}")
    return out / "index.html"
