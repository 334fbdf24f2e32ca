#!/usr/bin/env bash
# Installs (idempotently) what `gridfn-js build` needs, pinned by this folder's
# package-lock.json: `npm ci` into ${CARGO_TARGET_DIR:-target}/js-toolchain of
# the repository, once per lock file (a stamp holds its hash). Prints one
# line, the toolchain's folder; npm's output goes to stderr.
#
#   node sdk/js/bin/gridfn-js.js build path/to/handler -o h.wasm --toolchain "$(bash sdk/js/toolchain/install.sh)"
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
cd "$repo"
toolchain="${CARGO_TARGET_DIR:-target}/js-toolchain"
case "$toolchain" in /*) ;; *) toolchain="$repo/$toolchain" ;; esac
lock=sdk/js/toolchain/package-lock.json
if [ "$(cat "$toolchain/.lock" 2>/dev/null)" != "$(sha256sum "$lock")" ]; then
  echo "installing the JavaScript handler toolchain (npm ci into $toolchain)" >&2
  rm -rf "$toolchain"
  mkdir -p "$toolchain"
  cp sdk/js/toolchain/package.json "$lock" "$toolchain/"
  npm ci --prefix "$toolchain" --no-audit --no-fund --silent >&2
  sha256sum "$lock" >"$toolchain/.lock"
fi
echo "$toolchain"
