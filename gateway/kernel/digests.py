"""Content digests that pin model weights and adapters."""

from __future__ import annotations

import hashlib
from pathlib import Path

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")
CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def weight_files(path: Path) -> list[Path]:
    """The files whose bytes are the weights: a single file, or a directory's weight files."""
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    return files


def weights_sha256(path: Path) -> str:
    """sha256 over the weight files of a model directory (or one weight file).

    A single file's digest is its plain sha256 (so a GGUF's matches ``sha256sum``). A directory's
    is the sha256 of its manifest: one ``<relative path>\\0<file sha256>\\n`` line per weight file
    in sorted order, so renaming, adding or changing any weight file changes it.
    """
    files = weight_files(path)
    if not files:
        raise FileNotFoundError(f"no weight files ({', '.join(WEIGHT_SUFFIXES)}) under {path}")
    if path.is_file():
        return file_sha256(path)
    manifest = hashlib.sha256()
    for file in files:
        manifest.update(f"{file.relative_to(path).as_posix()}\0{file_sha256(file)}\n".encode())
    return manifest.hexdigest()
