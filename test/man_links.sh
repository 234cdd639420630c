#!/usr/bin/env bash
# Installs the build into a scratch directory and checks that `man -w NAME`
# finds a page for every function the public headers declare, and that each
# link page leads to its family page. Usage: man_links.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
build=$1 src=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
meson install -C "$build" --destdir "$tmp" --no-rebuild --quiet >/dev/null
mandir=$(dirname "$(find "$tmp" -type d -name man3 | head -n 1)")
# Every function of the C ABI: the name before the first "(" of each
# SYSREF_API declaration in include/sysref/*.h.
names=$(grep -h '^SYSREF_API' "$src"/include/sysref/*.h | sed -E 's/\(.*//' | grep -oE '[a-z_0-9]+$' | sort -u)
[ -n "$names" ] || { echo "no function names found in the headers"; exit 1; }
missing=0 count=0
for name in $names; do
  count=$((count + 1))
  if ! page=$(man -M "$mandir" -w "$name" 2>/dev/null); then
    echo "man -w $name: no page"
    missing=$((missing + 1))
  elif ! man -M "$mandir" "$name" 2>/dev/null | grep -qw "$name"; then
    echo "man $name: $page does not mention $name"
    missing=$((missing + 1))
  fi
done
echo "$count functions, $missing without a page"
[ "$missing" -eq 0 ]
