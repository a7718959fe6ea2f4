#!/usr/bin/env bash
# Creates the bench-only venv for cryptofeed 2.4.0 (it pins aiohttp==3.9.1, so it must never go into
# the project venv .venv). Idempotent: does nothing when the venv already imports cryptofeed and orjson.
# Usage: bench/cryptofeed_venv.sh [VENV_DIR]   (default: <repo>/.venv-cryptofeed, gitignored)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-$repo/.venv-cryptofeed}"
python="${PYTHON:-python3}"
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import cryptofeed, orjson' 2>/dev/null; then
    exit 0
fi
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "cryptofeed==2.4.0" orjson >&2
"$venv/bin/python" -c 'import cryptofeed, orjson' >&2
