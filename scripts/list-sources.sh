#!/usr/bin/env bash
# Print the source files of a vigil tree, NUL-separated and relative to it:
# what the package builds (build-packages.sh, tests/system/test-rpm.sh) copy.
#
#   list-sources.sh [DIR]      (default: the tree this script is in)
#
# Of a git work tree: the files git knows (still present) plus the untracked
# ones it does not ignore, so work in progress is packaged too. Of any other
# tree (an unpacked tarball): every file outside .git and build*/. Never a
# build product: .gitignore lists every file a build makes, and a file that
# a FILE.in beside it generates (a unit carrying an in-tree build's prefix,
# say) is left out even where git does not ignore it, so that the package
# build generates it again with the package's own prefix.
set -euo pipefail

top=$(cd "${1:-$(dirname "$0")/..}" && pwd)
cd "$top"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
	git ls-files -z --cached --others --exclude-standard
else
	find . \( -path ./.git -o -path './build*' \) -prune -o \( -type f -o -type l \) -printf '%P\0'
fi | while IFS= read -r -d '' f; do
	[ -f "$f" ] || [ -L "$f" ] || continue
	[ -e "$f.in" ] && continue
	printf '%s\0' "$f"
done
