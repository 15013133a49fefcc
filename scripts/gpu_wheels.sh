#!/usr/bin/env bash
# The wheels bench/gpu_session.sh needs on the device machine and it lacks, into .whl/
# (git-ignored): that machine reaches no registry and has torch, transformers, accelerate,
# peft, safetensors, tokenizers, numpy, pyarrow, pyyaml and jinja2 of its own, not the rest of
# what bench/train_gpu.py and bench/agent_gpu.py import (traced with their --smoke runs:
# pydantic and polars; the catalog's duckdb is imported only when a catalog opens). Each at the
# version this project's .venv holds, built for the device's CPython 3.12 on x86-64 Linux (or
# pure Python): ~58 MB, under the 64 MiB a call carries with the tree. The device's own
# transformers (5.17 when last read, 5.24 here) is used as it is: carrying ours would bring
# huggingface-hub 2 and its new HTTP stack along, over that limit.
#
#   bash scripts/gpu_wheels.sh        # then: device run, carry [".whl"], bench/gpu_session.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
NAMES="pydantic pydantic-core annotated-types typing-inspection polars polars-runtime-32"
rm -rf .whl && mkdir -p .whl
for name in $NAMES; do
  version=$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name") \
    || { echo "$name is not installed in $PY's environment" >&2; exit 1; }
  "$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "$name==$version"
done
du -sh .whl
