#!/usr/bin/env bash
# Installs the npm clients of the SDK matrix (package-lock.json, with `npm ci`) into a cache folder named by
# the lock's hash, and prints that folder's node_modules. Why a cache and not tests/sdk/node_modules: fresh
# clones (CI) reuse it, and the work tree stays clean. Run by `make test` and by the tests' session fixture.
set -euo pipefail
node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)' ||
  { echo "tests/sdk needs Node.js 20 or later (the npm openai client's floor); found $(node --version)" >&2; exit 1; }
here="$(cd "$(dirname "$0")" && pwd)"
cache="${CROWD_GATEWAY_CACHE:-$HOME/.cache/crowd-gateway}"
hash="$(sha256sum "$here/package-lock.json" | cut -c1-16)"
target="$cache/npm-$hash"
if [ ! -f "$target/.installed" ]; then
  mkdir -p "$cache"
  work="$(mktemp -d "$cache/npm-$hash.XXXXXX")"
  trap 'rm -rf "$work"' EXIT
  cp "$here/package.json" "$here/package-lock.json" "$work/"
  (cd "$work" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >&2)
  touch "$work/.installed"
  mv -T "$work" "$target" 2>/dev/null || [ -f "$target/.installed" ]  # a concurrent run may have won the race
fi
echo "$target/node_modules"
