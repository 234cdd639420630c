#!/bin/sh
# hwloc is loaded when a report asks for the topology, never at start-up:
# a program under the shim (statistics on, so the reporter is set up too)
# must not have it mapped. Usage: startup_no_hwloc.sh SHIM
maps=$(SYSREF_STATS=json SYSREF_STATS_FILE=/dev/null LD_PRELOAD="$1" cat /proc/self/maps) || exit 1
if echo "$maps" | grep -q hwloc; then
	echo "FAIL: hwloc is mapped at start-up under the shim"
	exit 1
fi
echo "$maps" | grep -q libsysref-preload || { echo "FAIL: the shim was not loaded"; exit 1; }
echo "ok: the shim is loaded, hwloc is not"
