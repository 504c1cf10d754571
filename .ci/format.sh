#!/usr/bin/env bash
# Formatting and lint, checked before anything is built: ruff (format and
# lint, configured in pyproject.toml) and clang-format (.clang-format) on every
# tracked Python and C++ file. Any difference fails; `bash .ci/format.sh --fix`
# rewrites the files instead.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q "ruff==0.17.5" "clang-format==23.1.3"
mapfile -t cxx < <(git ls-files '*.cpp' '*.h')
if [ "${1:-}" = "--fix" ]; then
  # Every fixer runs; lint that needs a hand is listed at the end, not left
  # to stop the formatters before they run.
  rc=0
  ruff format -q .
  ruff check --fix -q . || rc=$?
  ruff format -q .
  clang-format -i "${cxx[@]}"
  [ "$rc" = 0 ] || echo "format.sh --fix: the lint above needs fixing by hand" >&2
  exit "$rc"
fi
ruff format --check --diff .
ruff check --output-format concise .
clang-format --dry-run -Werror "${cxx[@]}"
echo "format and lint: clean (ruff, clang-format on ${#cxx[@]} C++ files)"
