"""The errors of :mod:`verifiers`.

``verifiers`` works without the gateway, so it has its own small hierarchy; the gateway maps
these to its own errors at its boundary (``raise ... from exc``)::

    VerifierError
    ├── DataFormatError         a training-data file or row cannot be used
    ├── ArtifactError           an artifact directory cannot be used
    │   ├── ArtifactIntegrityError   the model file's sha256 differs from the manifest's
    │   └── UnsafeArtifactError      the model file holds types outside the trusted list
    ├── SpecError               an unknown feature / classifier name or bad parameters
    └── EmbeddingsUnavailableError  an embedding block's optional model is not installed
"""

from __future__ import annotations


class VerifierError(Exception):
    """Base of every error raised by :mod:`verifiers`."""


class DataFormatError(VerifierError):
    """A training-data file, or one of its rows, does not follow the documented format."""


class ArtifactError(VerifierError):
    """A verifier artifact cannot be loaded (missing files, bad manifest, unknown format)."""


class ArtifactIntegrityError(ArtifactError):
    """The model file's sha256 is not the one the manifest pins."""

    def __init__(self, path: str, expected: str, actual: str) -> None:
        super().__init__(
            f"verifier artifact {path} fails its integrity check: manifest pins sha256 "
            f"{expected}, the file's sha256 is {actual}")
        self.path = path
        self.expected = expected
        self.actual = actual


class UnsafeArtifactError(ArtifactError):
    """The model file would instantiate types that are not on the trusted list."""

    def __init__(self, path: str, untrusted: list[str]) -> None:
        super().__init__(
            f"verifier artifact {path} refers to untrusted types, refusing to load it: "
            f"{', '.join(untrusted)}")
        self.path = path
        self.untrusted = untrusted


class SpecError(VerifierError):
    """An unknown feature extractor or classifier name, or parameters it does not accept."""


class EmbeddingsUnavailableError(VerifierError):
    """A verifier needs the optional sentence-embedding model (``make embeddings``), and it is
    not installed, cannot be imported, or its bytes differ from the pinned sha256."""
