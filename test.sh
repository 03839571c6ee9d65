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
# The race detector needs a C compiler.
if ! command -v gcc >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
	apt-get update -qq && apt-get install -y -qq gcc >/dev/null
fi
# A test runs Debian's default awk, mawk, which buffers its output on a pipe.
if ! command -v mawk >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
	apt-get update -qq && apt-get install -y -qq mawk >/dev/null
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
	CGO_ENABLED=0 go build -o python/safepool/_bin/safepool ./cmd/safepool
	(cd python && python3 -m unittest discover -v -s tests -t . 2>&1)
fi
