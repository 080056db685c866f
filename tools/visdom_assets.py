"""Put the Visdom server's JS/CSS/font assets in place from npm, so `python -m visdom.server`
starts without internet (it skips its CDN download once static/version.built holds its version
and each file is there).

    python tools/visdom_assets.py          # needs `npm` and its registry; run once per venv

The tables map what the installed visdom's server/build.py downloads (0.2.4 on Python 3.11,
0.3.0 on 3.12 and newer) to the same files in the npm packages of the exact versions it names.
The tool also writes the empty user style file that visdom's page names, without which the
server logs an error on every page load.
"""

import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

MATHJAX_2 = [
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
# package@version → {path in the package: path under visdom/static}; what both versions fetch
COMMON = {
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
    "classnames@2.2.5": {"index.js": "fonts/classnames"},
}
# visdom version → its whole list: 0.3.0 moved to newer grid styles and to MathJax 3, whose one
# file its server requests (and, offline, exits on) whenever the file is missing.
ASSETS = {
    "0.2.4": {
        **COMMON,
        "react-resizable@1.4.6": {"css/styles.css": "css/react-resizable-styles.css"},
        "react-grid-layout@0.16.3": {"css/styles.css": "css/react-grid-layout-styles.css"},
        "mathjax@2.7.5": {name: f"js/mathjax/2.7.5/{name}" for name in MATHJAX_2},
    },
    "0.3.0": {
        **COMMON,
        "react-resizable@3.1.3": {"css/styles.css": "css/react-resizable-styles.css"},
        "react-grid-layout@2.2.3": {"css/styles.css": "css/react-grid-layout-styles.css"},
        "mathjax@3.2.2": {"es5/tex-mml-svg.js": "js/mathjax/3.2.2/es5/tex-mml-svg.js"},
    },
}


def release(version: str) -> tuple[int, ...]:
    """The release numbers of a version, (0, 3, 0) for "0.3.0", to order the lists."""
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


def assets_for(version: str) -> dict[str, dict[str, str]]:
    """The list for `version`: its own, else the newest older one's, with a line saying so."""
    if version in ASSETS:
        return ASSETS[version]
    older = [known for known in ASSETS if release(known) <= release(version)]
    if not older:
        sys.exit(
            f"error: visdom {version} is older than any listed here: "
            "install the one requirements.txt names (`make setup`)"
        )
    nearest = max(older, key=release)
    print(
        f"note: no asset list for visdom {version} here, so visdom {nearest}'s is placed; if the "
        "server still downloads at its start, add its list from its server/build.py to ASSETS"
    )
    return ASSETS[nearest]


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
    assets = assets_for(visdom.__version__)
    with tempfile.TemporaryDirectory() as tmp:
        result = subprocess.run(
            [npm, "pack", "--silent", *assets], cwd=tmp, capture_output=True, text=True
        )
        if result.returncode != 0:
            sys.exit(
                f"error: `npm pack` failed: {result.stderr.strip().splitlines()[-1:]}: "
                "check that npm reaches its registry"
            )
        for package, files in assets.items():
            name, version = package.rsplit("@", 1)
            with tarfile.open(Path(tmp) / f"{name.replace('/', '-')}-{version}.tgz") as archive:
                for source, target in files.items():
                    destination = static / target
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    destination.write_bytes(archive.extractfile(f"package/{source}").read())
    (static / "version.built").write_text(visdom.__version__)
    count = sum(len(files) for files in assets.values())
    print(
        f"visdom {visdom.__version__}: {count} asset files from {len(assets)} npm packages "
        f"are in {static}"
    )


if __name__ == "__main__":
    write_user_style(static_folder())
    install(static_folder())
