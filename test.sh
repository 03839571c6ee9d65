#!/usr/bin/env bash
# Runs every safepool test: go vet, the Go tests under the race detector
# (real processes, signals, cgroups and OOM kills), a short fuzz of the framed
# protocol decoder, and the Python client's tests when present.
#
# The OOM and cgroup tests need root and a writable memory cgroup (v1 or v2).
# Elsewhere they skip with a reason; with CI=true a skip of them is a failure.
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v go >/dev/null; then
	echo "test.sh: Go is not installed (https://go.dev/dl/, 1.26 or later)" >&2
	exit 2
fi
# The race detector needs a C compiler, and the test of the documents'
# examples runs them with mawk, Debian's awk.
missing=""
command -v gcc >/dev/null || missing="$missing gcc"
command -v mawk >/dev/null || missing="$missing mawk"
if [ -n "$missing" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
	apt-get update -qq && apt-get install -y -qq $missing >/dev/null
fi

echo "== go vet"
go vet ./...
echo "== go test -race"
go test -race -count=1 -timeout 20m ./...
# A count, not a duration: with a duration, Go 1.26's fuzz coordinator can
# fail a target at the deadline with "context deadline exceeded" and no
# crasher on a loaded machine (go.dev/issue/75804, fixed in Go 1.27).
# 200000 inputs take about 20 s here.
echo "== fuzz the framed protocol decoder (${FUZZTIME:=200000x})"
go test -run='^$' -fuzz=FuzzReadFrame -fuzztime="$FUZZTIME" ./internal/protocol/
if [ -d python/tests ]; then
	echo "== python client"
	# Some tests run a program under a Python that can import cloudpickle
	# (python3, or Debian's /usr/bin/python3) and under one that cannot.
	if ! python3 -c 'import cloudpickle' 2>/dev/null && ! /usr/bin/python3 -c 'import cloudpickle' 2>/dev/null &&
		[ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
		apt-get update -qq && apt-get install -y -qq python3-cloudpickle >/dev/null
	fi
	CGO_ENABLED=0 go build -o python/safepool/_bin/safepool ./cmd/safepool
	(cd python && python3 -m unittest discover -v -s tests -t . 2>&1)
fi
