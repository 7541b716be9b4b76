"""The guides run as written: every runnable block of the README, the quickstart and the
routing, records, canary and cost guides is executed against a real gateway, so a guide cannot drift
from the code.

**Markers.** A runnable block (```sh, ```bash, ```python, or a block of ``$ `` command lines
followed by their output) carries an HTML comment on the line right before its fence, invisible
on GitHub:

- ``<!-- docs-test: run [expect=REGEX]... [retry=SECONDS] [save:NAME=EXPRESSION]... -->``: the
  block is run (shell blocks with ``bash -e -o pipefail`` in the checkout's root, python blocks
  one after the other in one interpreter, as a reader pasting them would); it must succeed and
  its output match every ``expect`` (a regular expression, searched per line). ``retry``: run it
  again until it passes for up to that long (what the guide says takes a moment, e.g. a record
  reaching the store). ``save``: after a python block, ``NAME`` in later blocks is replaced by
  the value of ``EXPRESSION`` (``RECORD_ID``).
- ``<!-- docs-test: skip REASON -->``: not run, for the reason given (``make serve`` itself,
  minutes-long loops, a server of your own).

The test runs the blocks in a copy of a checkout (the packages linked, ``var/`` its own) with
``.venv/bin/tiergate`` and ``.venv/bin/python`` pointing at this interpreter, and serves
``deploy/local/tiergate.toml`` there on a free loopback port (written ``127.0.0.1:8000`` in the
guides) — without ``gemma3-270m``, which no block calls, and with the admin key the routing
guide's last step says to configure. Long steps run as the guides give them, in seconds to a
minute each on 2 cores (the routing tutorial's collect, train and suggest).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gateway.http.auth import hash_key
from tests.conftest import REPO, ServerProcess, free_port, start_server

GUIDES = ["README.md", "docs/quickstart.md", "docs/tutorial-routing.md", "docs/records.md",
          "docs/canaries.md", "docs/cost.md"]
MARKER = re.compile(r"^<!-- docs-test: (run|skip)\b(.*) -->$")
SHELL, PYTHON = {"sh", "bash", "console"}, {"python"}
SHIPPED_VERIFIER = REPO / "gateway" / "reference" / "verifiers" / "ref-auto"
ADMIN_KEY = "sk-docs-test-admin"
BLOCK_TIMEOUT_S = 600


@dataclass
class Marker:
    action: str
    reason: str = ""
    expect: list[str] = field(default_factory=list)
    save: dict[str, str] = field(default_factory=dict)
    retry_s: float = 0.0


@dataclass
class Block:
    guide: str
    line: int
    lang: str
    code: str
    marker: Marker | None

    @property
    def commands(self) -> list[str]:
        """A ``$ `` block's command lines."""
        return [line[2:] for line in self.code.splitlines() if line.startswith("$ ")]

    @property
    def runnable(self) -> bool:
        return self.lang in SHELL | PYTHON or bool(self.commands)

    @property
    def script(self) -> str:
        return "\n".join(self.commands) if self.lang not in SHELL | PYTHON else self.code

    @property
    def where(self) -> str:
        return f"{self.guide}:{self.line}"


def parse_marker(text: str, where: str) -> Marker:
    match = MARKER.match(text)
    assert match, f"{where}: not a docs-test marker: {text}"
    action, rest = match.group(1), match.group(2).strip()
    if action == "skip":
        assert rest, f"{where}: a skip needs its reason"
        return Marker("skip", reason=rest)
    marker = Marker("run")
    for word in shlex.split(rest):
        key, _, value = word.partition("=")
        if key == "expect":
            re.compile(value)
            marker.expect.append(value)
        elif key == "retry":
            marker.retry_s = float(value)
        elif key.startswith("save:"):
            marker.save[key.removeprefix("save:")] = value
        else:
            raise AssertionError(f"{where}: unknown marker option {word!r}")
    return marker


def blocks(guide: str) -> list[Block]:
    lines = (REPO / guide).read_text().splitlines()
    found, index = [], 0
    while index < len(lines):
        if not lines[index].startswith("```"):
            index += 1
            continue
        start, lang = index, lines[index][3:].strip()
        end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("```"))
        before = lines[start - 1] if start else ""
        where = f"{guide}:{start + 1}"
        marker = parse_marker(before, where) if before.startswith("<!-- docs-test") else None
        found.append(Block(guide, start + 1, lang, "\n".join(lines[start + 1:end]), marker))
        index = end + 1
    return found


# -- the conventions, checked without a gateway ----------------------------------------------

@pytest.mark.parametrize("guide", GUIDES)
def test_every_runnable_block_is_marked(guide: str) -> None:
    unmarked = [b.where for b in blocks(guide) if b.runnable and b.marker is None]
    assert not unmarked, f"runnable blocks without a docs-test marker: {unmarked}"
    assert any(b.marker and b.marker.action == "run" for b in blocks(guide))


def test_guides_call_the_cli_one_way() -> None:
    """Every command line in the docs calls ``.venv/bin/tiergate``, which `make serve` installs
    (bare ``tiergate`` is on no PATH until the venv is activated)."""
    bare = [f"{b.where}: {line}" for path in ["README.md", *sorted(
        str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md"))]
            for b in blocks(path) for line in b.code.splitlines()
            if re.match(r"\s*(\$ )?tiergate ", line)]
    assert not bare, bare


@pytest.mark.parametrize("guide", GUIDES)
def test_run_blocks_write_only_under_var(guide: str) -> None:
    """A guide never writes into a shipped, pinned artifact (the routing tutorial once trained
    into gateway/reference/verifiers/ref-auto, and the default config then refused to start)."""
    outside = [f"{b.where}: {out}" for b in blocks(guide)
               if b.marker and b.marker.action == "run"
               for out in re.findall(r"--out\s+(\S+)", b.script) if not out.startswith("var/")]
    assert not outside, outside


# -- the guides, run -------------------------------------------------------------------------

@dataclass
class Checkout:
    root: Path
    env: dict[str, str]
    gateway: ServerProcess
    port: int


def served_config() -> str:
    """deploy/local/tiergate.toml without gemma3-270m (no block calls it: 1 GB of RAM and its
    loading saved), with the admin key the routing guide's last step configures."""
    text = (REPO / "deploy" / "local" / "tiergate.toml").read_text()
    text, removed = re.subn(r"\[models\.gemma3-270m\]\n(?:[^\n\[#][^\n]*\n)*", "", text)
    assert removed == 1 and "gemma3" not in text.split("[models.", 1)[1]
    return text + f'\n[[auth.admin_keys]]\nid = "sre"\nsha256 = "{hash_key(ADMIN_KEY)}"\n'


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Checkout]:
    root = tmp_path_factory.mktemp("checkout")
    for package in ("gateway", "router", "verifiers", "canary", "benchmarks"):
        (root / package).symlink_to(REPO / package)
    models = REPO / "var" / "models"
    models.mkdir(parents=True, exist_ok=True)  # where `make serve` converts the packaged ones
    (root / "var").mkdir()
    (root / "var" / "models").symlink_to(models.resolve())
    (root / "deploy" / "local").mkdir(parents=True)
    (root / "deploy" / "local" / "tiergate.toml").write_text(served_config())
    bin_dir = root / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").symlink_to(sys.executable)
    shim = bin_dir / "tiergate"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m gateway "$@"\n')
    shim.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "TIERGATE_CONFIG"}
    env.update(PYTHONPATH=str(REPO), ADMIN_KEY=ADMIN_KEY)
    port = free_port()
    gateway = start_server([sys.executable, "-m", "gateway", "serve", "--config",
                            "deploy/local/tiergate.toml", "--port", str(port)], port,
                           root / "gateway.log", env=env, timeout=600, cwd=root)
    yield Checkout(root, env, gateway, port)
    gateway.stop()


class PythonSession:
    """The guide's python blocks in one interpreter (tests/docs/pyrunner.py)."""

    def __init__(self, checkout: Checkout) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("pyrunner.py"))], cwd=checkout.root,
            env=checkout.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def run(self, code: str, save: dict[str, str]) -> tuple[bool, str, dict[str, str]]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps({"code": code, "save": save}) + "\n")
        self.process.stdin.flush()
        reply = json.loads(self.process.stdout.readline())
        return reply["ok"], reply["out"] + (reply["error"] or ""), reply["saved"]

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(30)


def run_block(block: Block, code: str, checkout: Checkout,
              session: PythonSession) -> tuple[bool, str, dict[str, str]]:
    assert block.marker is not None
    if block.lang in PYTHON:
        return session.run(code, block.marker.save)
    done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", code], cwd=checkout.root,
                          env=checkout.env, capture_output=True, text=True,
                          timeout=BLOCK_TIMEOUT_S)
    return done.returncode == 0, done.stdout + done.stderr, {}


def artifact_digest(directory: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(directory.rglob("*")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


@pytest.mark.slow
@pytest.mark.parametrize("guide", [
    *(g for g in GUIDES if g != "docs/tutorial-routing.md"),
    pytest.param("docs/tutorial-routing.md", marks=pytest.mark.timeout(1200)),
])
def test_guide_runs_as_written(guide: str, checkout: Checkout) -> None:
    shipped = artifact_digest(SHIPPED_VERIFIER)
    session = PythonSession(checkout)
    saved: dict[str, str] = {}
    try:
        for block in blocks(guide):
            if block.marker is None or block.marker.action != "run":
                continue
            code = block.script.replace("127.0.0.1:8000", f"127.0.0.1:{checkout.port}")
            for name, value in saved.items():
                code = code.replace(name, value)
            deadline = time.monotonic() + block.marker.retry_s
            while True:
                ok, out, values = run_block(block, code, checkout, session)
                missing = [p for p in block.marker.expect if not re.search(p, out, re.M)]
                if (ok and not missing) or time.monotonic() >= deadline:
                    break
                time.sleep(0.5)
            assert ok, f"{block.where} failed:\n{code}\n--- output:\n{out}"
            assert not missing, f"{block.where}: no match for {missing} in:\n{out}"
            saved.update(values)
    finally:
        session.close()
    assert artifact_digest(SHIPPED_VERIFIER) == shipped  # nothing shipped was rewritten
