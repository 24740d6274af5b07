#!/usr/bin/env bash
# Checks that the C files under clang-format's care are formatted as .clang-format
# says (100 columns). The set grows as files are reformatted in their own
# commits (reformatting the whole tree at once would collide with every branch
# in flight): list a file or directory in FORMATTED below when it is.
set -u
cd "$(dirname "$0")/.."
FORMATTED=(src/proxy/access src/proxy/snapshot.c tests/unit/proxy/test_access.c
    src/authn/authn_bearer.c src/authn/authn_fetch.c src/authn/authn_flow.c src/authn/authn_int.h
    src/authn/authn_login.c src/authn/authn_logout.c src/authn/authn_refresh.c
    src/authn/authn_saml.c src/authn/oidc_bearer.c src/authn/oidc_int.h src/authn/oidc_token.c
    src/authn/saml_acs.c src/authn/saml_int.h src/authn/saml_logout.c src/authn/session_int.h
    src/authn/session_pg_feed.c src/authn/session_pg_int.h src/authn/session_pg_once.c
    src/authn/session_sqlite.c src/authn/session_writer.c)
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
