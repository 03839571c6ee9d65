#!/usr/bin/env bash
# Runs every safepool test: go vet, the Go tests under the race detector
# (real processes, signals, cgroups and OOM kills), a short fuzz of the framed
# protocol decoder, and, when present, the Python client's tests, CPython's own
# Pool and ProcessPoolExecutor tests run on safepool's classes, and the wheel
# installed in a fresh virtual environment.
#
# The OOM and cgroup tests need root and a writable memory cgroup (v1 or v2).
# Elsewhere they skip with a reason; with CI=true a skip of them is a failure.
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v go >/dev/null; then
	echo "test.sh: Go is not installed (https://go.dev/dl/, 1.26 or later)" >&2
	exit 2
fi
# The race detector needs a C compiler, the test of the documents'
# examples runs them with mawk, Debian's awk, and the report's tests load it
# in Chromium.
missing=""
command -v gcc >/dev/null || missing="$missing gcc"
command -v mawk >/dev/null || missing="$missing mawk"
# A test of the memory package counts its helper's opens with strace.
command -v strace >/dev/null || missing="$missing strace"
# The report's tests render it in headless Chromium.
command -v chromium >/dev/null || missing="$missing chromium"
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
echo "== fuzz the journal's line keys against XXH3-128 (${KEYFUZZ:=100000x})"
go test -run='^$' -fuzz=FuzzKeyLines -fuzztime="$KEYFUZZ" ./internal/journal/
if [ -d python/tests ]; then
	echo "== python client"
	# Some tests run programs under Debian's /usr/bin/python3 with packages
	# that the Python on PATH may not have: cloudpickle, joblib, numpy and
	# tqdm, and the interpreter's own test suite (CPython's Pool and
	# ProcessPoolExecutor tests). With CI=true a test skipped for want of
	# them fails.
	debian_py=/usr/bin/python3
	if [ -x "$debian_py" ] && ! "$debian_py" -c 'import cloudpickle, joblib, numpy, tqdm, test._test_multiprocessing, test.test_concurrent_futures' 2>/dev/null &&
		[ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
		testsuite="libpython$("$debian_py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')-testsuite"
		apt-get update -qq && apt-get install -y -qq python3-cloudpickle python3-joblib python3-numpy python3-tqdm "$testsuite" >/dev/null
	fi
	# python3 -m venv needs ensurepip, which Debian's python3 has only with python3-venv.
	if ! python3 -c 'import ensurepip' 2>/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
		apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
	fi
	CGO_ENABLED=0 go build -o python/safepool/_bin/safepool ./cmd/safepool
	(cd python && python3 -m unittest discover -v -s tests -t . 2>&1)

	echo "== CPython's own Pool and ProcessPoolExecutor tests, on safepool.Pool and safepool.Executor"
	stdlib_py=python3
	[ -x "$debian_py" ] && stdlib_py=$debian_py
	(cd python && "$stdlib_py" -m unittest -v tests.stdlib_compat 2>&1)

	echo "== the wheel, installed offline in a fresh virtual environment, runs the seed scenario"
	wheeldir=$(mktemp -d "${TMPDIR:-/tmp}/safepool-wheel.XXXXXX")
	trap 'rm -rf "$wheeldir"' EXIT
	python3 python/build_wheel.py --out "$wheeldir/dist"
	python3 -m venv "$wheeldir/venv"
	PIP_ROOT_USER_ACTION=ignore "$wheeldir/venv/bin/pip" install -q --disable-pip-version-check --no-index "$wheeldir"/dist/safepool-*.whl
	cp python/tests/seed_scenario.py "$wheeldir/"
	(cd "$wheeldir" && env -u PYTHONPATH -u SAFEPOOL_BIN "$wheeldir/venv/bin/python" seed_scenario.py)
fi
