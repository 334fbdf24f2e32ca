#!/usr/bin/env bash
# Create (idempotently) a Python venv for gridfn's end-to-end tests and samples
# and install a requirements file into it.
#
#   bash tests/python/setup.sh [REQUIREMENTS [VENV]]
#
#   bash tests/python/setup.sh          # from anywhere; works relative to the repo root
#   GRIDFN_PY_VENV=/tmp/v bash tests/python/setup.sh
#   bash tests/python/setup.sh samples/embeddings/requirements.txt target/ai-venv
#
# With no argument it installs tests/python/requirements.txt (the
# azure-eventgrid SDK) into ${GRIDFN_PY_VENV:-target/py-venv}. REQUIREMENTS
# and VENV, when given, are taken relative to the current directory; VENV
# defaults to target/venv-<folder of REQUIREMENTS> (e.g. target/venv-embeddings)
# so two requirements files never take turns reinstalling one venv.
#
# Stdout: exactly one line, the absolute path of the python to run publish.py
# with, e.g.  PY=$(bash tests/python/setup.sh) && "$PY" tests/python/publish.py ...
# (the venv's bin/ also holds the packages' commands, e.g. bin/chroma)
# Everything else (pip progress is quiet; errors are shown) goes to stderr.
# Exit status is non-zero if anything fails.
#
# GRIDFN_PY_VENV, when relative, is taken relative to the repo root (two levels
# up from this script). The install is skipped when the venv already holds
# exactly this requirements file (a stamp file stores its hash).
#
# Needs python3 >= 3.9 (tested: CPython 3.11) with the venv module. On Debian,
# `python3 -m venv` needs the `python3-venv` package (apt-get install
# python3-venv). Without a working venv/ensurepip (pip is still needed:
# python3-pip), this script falls back to `pip install --target
# <venv>/site-packages` and prints a small wrapper script (<venv>/bin/python)
# that puts that directory on PYTHONPATH.
set -euo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$script_dir/../.." && pwd)"

# What proves the venv works: the SDK import for the default requirements; for
# any other file, that the interpreter runs (the stamp is only written after
# pip succeeded).
if [ $# -eq 0 ]; then
    req="$script_dir/requirements.txt"
    venv="${GRIDFN_PY_VENV:-target/py-venv}"
    case "$venv" in /*) ;; *) venv="$repo_root/$venv" ;; esac
    probe='import azure.eventgrid'
else
    [ -f "$1" ] || { echo "setup.sh: requirements file '$1' not found" >&2; exit 1; }
    req="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
    venv="${2:-$repo_root/target/venv-$(basename "$(dirname "$req")")}"
    case "$venv" in /*) ;; *) venv="$PWD/$venv" ;; esac
    probe='pass'
fi
cd "$repo_root"

PYTHON="${PYTHON:-python3}"
command -v "$PYTHON" >/dev/null 2>&1 || { echo "setup.sh: $PYTHON not found" >&2; exit 1; }

req_hash="$("$PYTHON" -c 'import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],"rb").read()).hexdigest())' "$req")"
stamp="$venv/.gridfn-requirements.sha256"
py="$venv/bin/python"

# Up to date already?
if [ -x "$py" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$req_hash" ] \
   && "$py" -c "$probe" >/dev/null 2>&1; then
    echo "$py"
    exit 0
fi

pip_quiet=(--quiet --disable-pip-version-check --no-input)
export PIP_ROOT_USER_ACTION=ignore  # no "running pip as root" warning (older pips ignore it)

mkdir -p "$(dirname "$venv")"
if [ -x "$venv/bin/python" ] && [ -d "$venv/lib" ] && [ ! -f "$venv/.gridfn-target-mode" ]; then
    : # reuse the existing venv, just (re)install
elif "$PYTHON" -m venv "$venv" >&2; then
    rm -f "$venv/.gridfn-target-mode"
else
    echo "setup.sh: '$PYTHON -m venv' failed (on Debian: apt-get install python3-venv);" \
         "falling back to pip install --target" >&2
    rm -rf "$venv"
    mkdir -p "$venv/bin" "$venv/site-packages"
    "$PYTHON" -m pip install "${pip_quiet[@]}" --target "$venv/site-packages" -r "$req" >&2
    real_py="$(command -v "$PYTHON")"
    cat > "$py" <<WRAP
#!/bin/sh
# gridfn test wrapper: $real_py with the packages from $req
PYTHONPATH="$venv/site-packages\${PYTHONPATH:+:\$PYTHONPATH}" exec "$real_py" "\$@"
WRAP
    chmod +x "$py"
    touch "$venv/.gridfn-target-mode"
    "$py" -c "$probe" >&2
    echo "$req_hash" > "$stamp"
    echo "$py"
    exit 0
fi

"$py" -m pip install "${pip_quiet[@]}" -r "$req" >&2
"$py" -c "$probe" >&2
echo "$req_hash" > "$stamp"
echo "$py"
