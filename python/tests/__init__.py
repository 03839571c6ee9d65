"""Tests of the safepool Python client. They run real pools: build the binary
first (go build -o python/safepool/_bin/safepool ./cmd/safepool; test.sh does)."""
import os

# Test the binary built from this tree, not one that happens to be on PATH.
_BUILT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "safepool", "_bin", "safepool")
if not os.environ.get("SAFEPOOL_BIN") and os.path.exists(_BUILT):
    os.environ["SAFEPOOL_BIN"] = _BUILT
