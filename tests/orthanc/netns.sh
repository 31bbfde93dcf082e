#!/bin/sh
# Runs a command in a fresh private network namespace with loopback up (root needed), the way
# tests/pipeline/e2e_orthanc.rs runs Orthanc and proxyseg. For poking at the harness by hand, e.g.:
#   tests/orthanc/netns.sh sh -c 'runuser -u orthanc -- Orthanc /tmp/x/orthanc.json & sleep 2;
#                                 curl -s localhost:8042/system'
# Everything started inside sees only this namespace's loopback; it vanishes with its last process.
set -eu
[ "$#" -ge 1 ] || { echo "usage: $0 COMMAND [ARG...]" >&2; exit 2; }
exec unshare -n -- sh -c 'ip link set lo up && exec "$@"' netns "$@"
