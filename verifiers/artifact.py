"""Versioned verifier artifacts: ``model.skops`` + ``manifest.json`` in one directory.

The model file is written with :mod:`skops.io` (no pickle): loading it instantiates only the
types skops trusts by default (scikit-learn estimators, numpy, builtins) plus the explicit
:data:`TRUSTED_TYPES`; anything else is refused with :class:`UnsafeArtifactError` before any
object is built. The manifest pins the model file's sha256; a file that does not match is
refused with :class:`ArtifactIntegrityError`. The verifier id is ``vrf-`` + the first 12 hex
digits of that sha256.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from verifiers.errors import (
    ArtifactError,
    ArtifactIntegrityError,
    EmbeddingsUnavailableError,
    SpecError,
    UnsafeArtifactError,
)
from verifiers.features import EMBEDDINGS, NumericExtractor
from verifiers.models import STATE_FORMAT, State
from verifiers.scoring import Verifier
from verifiers.spec import VerifierSpec

ARTIFACT_FORMAT = "tiergate-verifier/1"
MODEL_FILE = "model.skops"
MANIFEST_FILE = "manifest.json"
TRUSTED_TYPES = ("sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",)
"""Types beyond skops' defaults that a verifier's model file may hold (the fitted trees of a
gradient-boosting head)."""
CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("scikit-learn", "numpy", "scipy", "skops"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "unknown"
    return versions


def save_artifact(out: Path, spec: VerifierSpec, state: State, *,
                  training: Mapping[str, Any], validation: Mapping[str, Any] | None = None,
                  created: datetime | None = None,
                  extractors: Sequence[NumericExtractor] | None = None,
                  calibration: Mapping[str, Any] | None = None) -> Verifier:
    """Write ``out/model.skops`` and ``out/manifest.json``; returns the verifier as loaded
    (``extractors``: the spec's, when already built; ``calibration``: the entry of the
    cross-fitted calibration scores already written next to it, see
    :mod:`verifiers.holdout`)."""
    import skops.io

    out.mkdir(parents=True, exist_ok=True)
    model_path = out / MODEL_FILE
    with tempfile.NamedTemporaryFile(dir=out, suffix=".tmp", delete=False) as handle:
        temporary = Path(handle.name)
        handle.write(_canonical_zip(skops.io.dumps(state)))
    try:
        temporary.chmod(0o644)
        os.replace(temporary, model_path)
    finally:
        temporary.unlink(missing_ok=True)
    sha256 = file_sha256(model_path)
    featurizer = state["featurizer"]
    manifest: dict[str, Any] = {
        "format": ARTIFACT_FORMAT,
        "id": f"vrf-{sha256[:12]}",
        "kind": spec.kind,
        "target": spec.target,
        "score": {"name": spec.score_name,
                  "range": [-1.0, 1.0] if spec.target == "gain" else [0.0, 1.0],
                  "escalate_when": "score >= threshold"},
        "model_file": MODEL_FILE,
        "sha256": sha256,
        "spec": spec.to_json(),
        "features": {"numeric": list(featurizer["numeric"]["names"]),
                     "slices": list(featurizer["slices"]["names"]),
                     "text_vocabulary": {source: len(text["idf"])
                                         for source, text in featurizer["text"].items()}},
        "trusted_types": list(TRUSTED_TYPES),
        "embedding_models": embedding_requirements(spec),
        "training": dict(training),
        "validation": dict(validation) if validation is not None else None,
        **({"calibration": dict(calibration)} if calibration is not None else {}),
        "libraries": library_versions(),
        "created": (created or datetime.now(UTC)).isoformat(timespec="seconds"),
    }
    (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, allow_nan=False) + "\n",
                                     encoding="utf-8")
    return Verifier(spec, state, verifier_id=manifest["id"], sha256=sha256, manifest=manifest,
                    extractors=extractors)


def embedding_requirements(spec: VerifierSpec) -> list[dict[str, Any]]:
    """The optional embedding models the spec's extractors need (name, pip line, sha256s)."""
    from verifiers.embeddings import DEFAULT_MODEL, model_entry

    needed: dict[str, dict[str, Any]] = {}
    for name, params in spec.extractors:
        if name in EMBEDDINGS:
            entry = model_entry(str(params.get("model", DEFAULT_MODEL)))
            needed[entry.name] = entry.record()
    return list(needed.values())


def _check_embedding_models(directory: Path, manifest: Mapping[str, Any],
                            spec: VerifierSpec) -> None:
    """The manifest's embedding models must be the ones this code knows, byte for byte."""
    from verifiers.embeddings import CATALOGUE

    recorded = manifest.get("embedding_models") or []
    if not isinstance(recorded, list):
        raise ArtifactError(f"{directory}: embedding_models must be a list")
    for record in recorded:
        name = record.get("name") if isinstance(record, dict) else None
        entry = CATALOGUE.get(str(name))
        if entry is None:
            raise ArtifactError(f"{directory}: needs embedding model {name!r}, which this "
                                f"tiergate does not know ({', '.join(CATALOGUE)})")
        for key in ("zip_sha256", "weights_sha256"):
            if record.get(key) != getattr(entry, key):
                raise ArtifactError(f"{directory}: needs embedding model {name} with {key} "
                                    f"{record.get(key)}, this tiergate pins "
                                    f"{getattr(entry, key)}")
    wanted = {r["name"] for r in embedding_requirements(spec)}
    if wanted != {r.get("name") for r in recorded if isinstance(r, dict)}:
        raise ArtifactError(f"{directory}: the manifest's embedding_models do not match its "
                            f"spec (needs {', '.join(sorted(wanted)) or 'none'})")


def _canonical_zip(data: bytes) -> bytes:
    """The same skops file made reproducible: skops names array files and tags shared objects
    with Python object ids, and dates the zip entries; renumber the ids in order of first
    appearance and date every entry 1980-01-01, so equal states give equal bytes (and equal
    verifier ids). Entries are deflated (level 9): the schema's JSON is most of a file."""
    source = zipfile.ZipFile(io.BytesIO(data))
    schema = json.loads(source.read("schema.json"))
    numbers: dict[int, int] = {}

    def renumber(node: Any) -> Any:
        if isinstance(node, dict):
            out = {}
            for key, value in node.items():
                if key == "__id__" and isinstance(value, int):
                    value = numbers.setdefault(value, len(numbers) + 1)
                elif key == "file" and isinstance(value, str) and value.endswith(".npy") \
                        and value[:-4].isdigit():
                    value = f"{numbers.setdefault(int(value[:-4]), len(numbers) + 1)}.npy"
                else:
                    value = renumber(value)
                out[key] = value
            return out
        if isinstance(node, list):
            return [renumber(item) for item in node]
        return node

    canonical = renumber(schema)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as target:
        for info in source.infolist():
            name = info.filename
            content = source.read(name)
            if name == "schema.json":
                content = json.dumps(canonical, indent=2).encode("utf-8")
            elif name.endswith(".npy") and name[:-4].isdigit():
                name = f"{numbers[int(name[:-4])]}.npy"
            fixed = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            fixed.external_attr = 0o644 << 16
            target.writestr(fixed, content, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
    return buffer.getvalue()


def read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ArtifactError(f"{directory} is not a verifier artifact: no {MANIFEST_FILE}") \
            from exc
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"cannot read {path}: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != ARTIFACT_FORMAT:
        raise ArtifactError(f"{path}: not a {ARTIFACT_FORMAT} manifest")
    for key in ("sha256", "model_file", "spec", "id"):
        if key not in manifest:
            raise ArtifactError(f"{path}: missing {key!r}")
    return manifest


def load_artifact(directory: Path) -> Verifier:
    """Load a verifier: check the manifest, the sha256 and the types, then compile it."""
    import skops.io
    from skops.io.exceptions import UntrustedTypesFoundException

    manifest = read_manifest(directory)
    model_file = str(manifest["model_file"])
    if Path(model_file).name != model_file:
        raise ArtifactError(f"{directory}: model_file must be a file name, not {model_file!r}")
    path = directory / model_file
    if not path.is_file():
        raise ArtifactError(f"{directory}: model file {model_file} is missing")
    actual = file_sha256(path)
    if actual != manifest["sha256"]:
        raise ArtifactIntegrityError(str(path), str(manifest["sha256"]), actual)
    try:
        found = skops.io.get_untrusted_types(file=path)
    except Exception as exc:  # a corrupt zip or schema: skops raises many kinds
        raise ArtifactError(f"{path} is not a readable skops file: {exc}") from exc
    untrusted = sorted(t for t in found if t not in TRUSTED_TYPES)
    if untrusted:
        raise UnsafeArtifactError(str(path), untrusted)
    try:
        state = skops.io.load(path, trusted=list(TRUSTED_TYPES))
    except UntrustedTypesFoundException as exc:
        raise UnsafeArtifactError(str(path), [str(exc)]) from exc
    except Exception as exc:
        raise ArtifactError(f"cannot load {path}: {exc}") from exc
    try:
        spec = VerifierSpec.from_json(manifest["spec"])
    except SpecError as exc:
        raise ArtifactError(f"{directory}: {exc}") from exc
    _check_state(state, spec, path)
    _check_embedding_models(directory, manifest, spec)
    try:
        return Verifier(spec, state, verifier_id=str(manifest["id"]), sha256=actual,
                        manifest=manifest)
    except EmbeddingsUnavailableError as exc:
        raise EmbeddingsUnavailableError(f"verifier artifact {directory} needs embeddings: "
                                         f"{exc}") from exc
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ArtifactError(f"{path} does not hold the state its manifest describes: "
                            f"{exc!r}") from exc


def _check_state(state: Any, spec: VerifierSpec, path: Path) -> None:
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ArtifactError(f"{path}: unknown model state format")
    heads = state.get("heads")
    wanted = {"small", "large"} if spec.target == "gain" else {"small"}
    if not isinstance(heads, dict) or set(heads) != wanted or "featurizer" not in state:
        raise ArtifactError(f"{path}: model state does not match the manifest's spec")
