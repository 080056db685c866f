"""Put the Visdom server's JS/CSS/font assets in place from npm, so `python -m visdom.server`
starts without internet (it skips its CDN download once static/version.built holds its version).

    python tools/visdom_assets.py          # needs `npm` and its registry; run once per venv

The table maps what visdom 0.2.4's server/build.py downloads to the same files in the npm
packages of the exact versions it names. The tool also writes the empty user style file that
visdom's page names, without which the server logs an error on every page load.
"""

import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

MATHJAX = [
    "MathJax.js",
    "config/Safe.js",
    "config/TeX-AMS-MML_HTMLorMML.js",
    "extensions/Safe.js",
    "jax/output/SVG/fonts/TeX/fontdata.js",
    "jax/output/SVG/jax.js",
    "jax/output/SVG/fonts/TeX/Size1/Regular/Main.js",
    "jax/output/SVG/config.js",
]
GLYPHS = "dist/fonts/glyphicons-halflings-regular"
# package@version → {path in the package: path under visdom/static}
ASSETS = {
    "jquery@3.1.1": {"dist/jquery.min.js": "js/jquery.min.js"},
    "bootstrap@3.3.7": {
        "dist/js/bootstrap.min.js": "js/bootstrap.min.js",
        "dist/css/bootstrap.min.css": "css/bootstrap.min.css",
        f"{GLYPHS}.eot": "fonts/glyphicons-halflings-regular.eot",
        f"{GLYPHS}.woff2": "fonts/glyphicons-halflings-regular.woff2",
        f"{GLYPHS}.woff": "fonts/glyphicons-halflings-regular.woff",
        f"{GLYPHS}.ttf": "fonts/glyphicons-halflings-regular.ttf",
        f"{GLYPHS}.svg": "fonts/glyphicons-halflings-regular.svg#glyphicons_halflingsregular",
    },
    "react@16.2.0": {"umd/react.production.min.js": "js/react-react.min.js"},
    "react-dom@16.2.0": {"umd/react-dom.production.min.js": "js/react-dom.min.js"},
    "react-modal@3.1.10": {"dist/react-modal.min.js": "js/react-modal.min.js"},
    "plotly.js-dist-min@2.11.1": {"plotly.min.js": "js/plotly-plotly.min.js"},
    "sjcl@1.0.7": {"sjcl.js": "js/sjcl.js"},
    "layout-bin-packer@1.4.0": {
        "dist/layout-bin-packer.js.map": "js/layout-bin-packer.js.map",
        "dist/layout-bin-packer.js": "js/layout_bin_packer.js",
    },
    "d3@3.5.17": {"d3.min.js": "js/d3.v3.min.js"},
    "d3-selection-multi@1.0.1": {"build/d3-selection-multi.js": "js/d3-selection-multi.v1.js"},
    "save-svg-as-png@1.4.17": {"lib/saveSvgAsPng.js": "js/saveSvgAsPng.js"},
    "react-resizable@1.4.6": {"css/styles.css": "css/react-resizable-styles.css"},
    "react-grid-layout@0.16.3": {"css/styles.css": "css/react-grid-layout-styles.css"},
    "classnames@2.2.5": {"index.js": "fonts/classnames"},
    "mathjax@2.7.5": {name: f"js/mathjax/2.7.5/{name}" for name in MATHJAX},
}


def static_folder() -> Path:
    import visdom

    return Path(visdom.__file__).parent / "static"


def write_user_style(static: Path) -> None:
    """visdom/user/style.css beside `static`, if missing: the page links static_url(
    "../user/style.css"), whose hash tornado logs "Could not open static file" for when there is
    no such file. The server answers that URL with the user's own styles (~/.config/visdom and
    the env folder), not this file's."""
    style = static.parent / "user" / "style.css"
    if not style.exists():
        style.parent.mkdir(exist_ok=True)
        style.write_text("/* Empty: visdom serves /user/style.css from the user's settings. */\n")


def install(static: Path) -> None:
    """Fetch every package with `npm pack` and copy its listed files under `static`."""
    import visdom

    npm = shutil.which("npm")
    if npm is None:
        print(
            "npm is not installed, so the Visdom assets were not put in place: with internet, "
            "`python -m visdom.server` downloads them itself at its first start; "
            "without, install Node.js "
            "(it brings npm) and run this again"
        )
        return
    with tempfile.TemporaryDirectory() as tmp:
        result = subprocess.run(
            [npm, "pack", "--silent", *ASSETS], cwd=tmp, capture_output=True, text=True
        )
        if result.returncode != 0:
            sys.exit(
                f"error: `npm pack` failed: {result.stderr.strip().splitlines()[-1:]}: "
                "check that npm reaches its registry"
            )
        for package, files in ASSETS.items():
            name, version = package.rsplit("@", 1)
            with tarfile.open(Path(tmp) / f"{name.replace('/', '-')}-{version}.tgz") as archive:
                for source, target in files.items():
                    destination = static / target
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    destination.write_bytes(archive.extractfile(f"package/{source}").read())
    (static / "version.built").write_text(visdom.__version__)
    count = sum(len(files) for files in ASSETS.values())
    print(
        f"visdom {visdom.__version__}: {count} asset files from {len(ASSETS)} npm packages "
        f"are in {static}"
    )


if __name__ == "__main__":
    write_user_style(static_folder())
    install(static_folder())
