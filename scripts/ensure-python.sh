#!/usr/bin/env sh
# Make sure $1 (a Python >= 3.11) can create virtual environments; on Debian that needs the
# python3-venv package, installed here with apt-get when we are root (or have sudo).
set -eu
PY="${1:-python3}"
if ! command -v "$PY" >/dev/null 2>&1; then
    missing="python3 python3-venv python3-dev"
elif ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "Clarion needs Python >= 3.11; $PY is $("$PY" --version 2>&1). Set PYTHON=..." >&2
    exit 1
elif ! "$PY" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    missing="python3-venv"
else
    exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "installing Debian packages: $missing" >&2
$SUDO apt-get update -q
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q $missing
