#!/usr/bin/env bash
# Checks that the C files under clang-format's care are formatted as .clang-format
# says (100 columns): every C file of the project (src/, tests/, bench/).
set -u
cd "$(dirname "$0")/.."
FORMATTED=(src tests/unit tests/fuzz tests/policy bench/dlog bench/policy)
if ! command -v clang-format >/dev/null; then
    echo "check_format: clang-format is not installed (scripts/deps.sh test)" >&2
    exit 1
fi
bad=0
while IFS= read -r f; do
    if ! clang-format --style=file --dry-run --Werror "$f" 2>/dev/null; then
        echo "check_format: $f is not formatted (clang-format -i $f)" >&2
        bad=1
    fi
done < <(find "${FORMATTED[@]}" -name '*.[ch]' | sort)
[ "$bad" -eq 0 ] && echo "check_format: ${#FORMATTED[@]} paths formatted"
exit "$bad"
