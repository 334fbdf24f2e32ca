#!/usr/bin/env bash
# Creates (idempotently) the venv that builds and tests Python handlers:
# componentize-py and pytest from requirements-build.txt. Prints one line, the
# venv's python; pip's output goes to stderr, and only when it installs.
#
#   PY=$(bash sdk/python/venv.sh)
#   PYTHONPATH=sdk/python/src "$PY" -m gridfn.build my_handler -p path/to/it -o my-handler.wasm
#
# The venv is ${GRIDFN_PY_BUILD_VENV:-target/py-build-venv} (relative to the
# repository); a stamp holds the hash of requirements-build.txt, so a second
# run installs nothing. Needs python3 >= 3.10 with venv (Debian: python3-venv).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
req="$here/requirements-build.txt"
venv="${GRIDFN_PY_BUILD_VENV:-target/py-build-venv}"
case "$venv" in /*) ;; *) venv="$repo/$venv" ;; esac
py="$venv/bin/python"
stamp="$venv/.gridfn-requirements.sha256"
hash="$(sha256sum "$req" | cut -d' ' -f1)"

if [ -x "$py" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$hash" ]; then
  echo "$py"
  exit 0
fi
echo "installing componentize-py and pytest into $venv (PyPI)" >&2
python3 -m venv "$venv" >&2
PIP_ROOT_USER_ACTION=ignore "$py" -m pip install --quiet --disable-pip-version-check --no-input -r "$req" >&2
echo "$hash" > "$stamp"
echo "$py"
