"""The committed bundle is what its sources build to: esbuild (pinned in
gateway/console/package-lock.json, installed by ``make install-dev``) rebuilds it into a
temporary folder, byte for byte the same as gateway/console/static/."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

CONSOLE = Path(__file__).resolve().parents[3] / "gateway" / "console"


def test_the_committed_bundle_is_built_from_the_sources(tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None or not (CONSOLE / "node_modules" / "esbuild").is_dir():
        pytest.fail("the console's toolchain is missing: make install-dev (npm ci in "
                    "gateway/console)")
    subprocess.run([node, "build.mjs", str(tmp_path)], cwd=CONSOLE, check=True, timeout=120)
    for name in ("console.js", "console.css"):
        built, committed = (tmp_path / name).read_bytes(), (CONSOLE / "static" / name).read_bytes()
        assert built == committed, f"static/{name} is stale: run make console and commit it"
