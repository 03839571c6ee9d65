"""Finding the safepool binary that runs the pool's engine."""
import os
import shutil

from .errors import BrokenPool

_HERE = os.path.dirname(os.path.abspath(__file__))

BUILD_HINT = ("build it from the safepool source tree with "
              "`go build -o python/safepool/_bin/safepool ./cmd/safepool`, "
              "put it on PATH, or set SAFEPOOL_BIN to its path")


def find_binary() -> str:
    """Return the path of the safepool binary: $SAFEPOOL_BIN, then
    ``safepool`` on PATH, then the one built beside the package
    (safepool/_bin/safepool). Raise BrokenPool saying how to build it if
    there is none."""
    env = os.environ.get("SAFEPOOL_BIN")
    if env:
        if os.path.isfile(env) and os.access(env, os.X_OK):
            return env
        raise BrokenPool("SAFEPOOL_BIN=%s is not an executable file; %s" % (env, BUILD_HINT))
    found = shutil.which("safepool")
    if found:
        return found
    local = os.path.join(_HERE, "_bin", "safepool")
    if os.path.isfile(local) and os.access(local, os.X_OK):
        return local
    raise BrokenPool("cannot find the safepool binary; " + BUILD_HINT)
