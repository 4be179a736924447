#!/usr/bin/env bash
# Install the project into .venv (CPU build of torch first) and run it.
#   ./dev.sh sandbox   start the bot against the local Discord emulator with the tiny model, in a web page
#                      (prints "Sandbox page: http://127.0.0.1:PORT/"; --port N, --no-browser, --terminal)
#   ./dev.sh test      run the whole test suite (lint + pytest; the browser tests drive Debian's Chromium)
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}

install() {
    if [ ! -x .venv/bin/python ]; then
        "$PY" -m venv .venv
    fi
    # shellcheck disable=SC1091
    . .venv/bin/activate
    if [ ! -f .venv/.installed ] || [ pyproject.toml -nt .venv/.installed ]; then
        pip install -q --upgrade pip
        # The CPU build first: a bare "torch" requirement would pull a multi-GB CUDA build.
        # On a GPU box, install the CUDA build of torch yourself before running this.
        python -c "import torch" 2>/dev/null || pip install -q "torch==2.13.0"
        # open-clip-torch only ships CLIP's BPE vocabulary for the tiny offline model; its
        # dependencies (torchvision) are not needed, so install it without them.
        pip install -q --no-deps "open-clip-torch>=2.20"
        pip install -q -e ".[test,nudenet]"
        touch .venv/.installed
    fi
}

# The sandbox page's tests drive Debian's Chromium through Playwright (never `playwright install`).
chromium() {
    if [ ! -x /usr/bin/chromium ] && [ -z "${CHROMIUM:-}" ] && command -v apt-get >/dev/null; then
        local sudo=""
        [ "$(id -u)" -eq 0 ] || sudo=sudo
        $sudo apt-get install -y chromium || { $sudo apt-get update && $sudo apt-get install -y chromium; }
    fi
}

case "${1:-}" in
    sandbox)
        install
        shift
        exec python bot.py --sandbox "$@"
        ;;
    test)
        install
        chromium
        shift
        ruff check .
        lint-imports
        exec python -m pytest -q "$@"
        ;;
    *)
        echo "usage: ./dev.sh sandbox|test" >&2
        exit 2
        ;;
esac
