#!/bin/sh
# A program that loads libsysref.so must not load a C++ runtime with it:
# the only DT_NEEDED entries allowed are the C library and the loader (DESIGN.md, "libsysref.so
# and the shim load no C++ runtime"). Usage: runtime_deps.sh LIBRARY...
status=0
for lib in "$@"; do
	needed=$(readelf -d "$lib" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
	for n in $needed; do
		case "$n" in
		libc.so.* | ld-linux*.so.*) ;;
		*) echo "FAIL: $lib needs $n"; status=1 ;;
		esac
	done
	echo "$lib: needs $(echo $needed)"
done
exit $status
