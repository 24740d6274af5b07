#!/usr/bin/env bash
# Refuses unbounded or error-blind C library calls in src/: sprintf, vsprintf,
# strcpy, strcat, strtok, gets and atoi (use snprintf, the bounded string
# helpers of core/str.h, strtok_r-free parsing over spans, strtol/strtoull with
# error checks). Exit 1 with file:line for each use.
set -u
cd "$(dirname "$0")/.."
pattern='(^|[^A-Za-z0-9_])(sprintf|vsprintf|strcpy|strcat|strtok|gets|atoi)[[:space:]]*\('
if grep -rnE "$pattern" src --include='*.c' --include='*.h'; then
    echo "check_banned: the calls above are not allowed in src/ (see docs/architecture.md)" >&2
    exit 1
fi
echo "check_banned: no sprintf/strcpy/strcat/strtok/gets/atoi in src/"
