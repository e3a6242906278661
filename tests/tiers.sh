#!/usr/bin/env bash
# Runs the test tiers named (`make test-<tier>` each) one after another, each to its end whatever the others did,
# prints each tier's result and time, then fails if any failed. Why: a failing tier must not hide the next one's result.
# Usage: tests/tiers.sh fast real image
set -uo pipefail
results=()
failed=0
for tier in "$@"; do
  echo "== tier $tier: started at $(date +%T)"
  started=$SECONDS
  if make --no-print-directory "test-$tier"; then result=passed; else result=FAILED; failed=1; fi
  results+=("tier $tier: $result in $((SECONDS - started)) s")
  echo "== ${results[-1]}"
done
echo "== test tiers:"
printf '   %s\n' "${results[@]}"
exit "$failed"
