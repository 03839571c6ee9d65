"""Finding the safepool binary that runs the pool's engine."""
import os

_HERE = os.path.dirname(os.path.abspath(__file__))

BUILD_HINT = ("build it from the safepool source tree with "
              "`CGO_ENABLED=0 go build -o python/safepool/_bin/safepool ./cmd/safepool`, "
              "put it on PATH, or set SAFEPOOL_BIN to its path")


def _executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def _which(name: str):
    """shutil.which(name), without importing shutil (a pool's start is timed
    from the first import)."""
    for d in os.environ.get("PATH", os.defpath).split(os.pathsep):
        path = os.path.join(d, name)
        if _executable(path):
            return path
    return None


def find_binary() -> str:
    """Return the path of the safepool binary: $SAFEPOOL_BIN, then the one
    beside the package (safepool/_bin/safepool, which a wheel carries and
    which speaks this client's protocol), then ``safepool`` on PATH. Raise
    BrokenPool saying how to build it if there is none."""
    env = os.environ.get("SAFEPOOL_BIN")
    if env:
        if _executable(env):
            return env
        from .errors import BrokenPool
        raise BrokenPool("SAFEPOOL_BIN=%s is not an executable file; %s" % (env, BUILD_HINT))
    local = os.path.join(_HERE, "_bin", "safepool")
    if _executable(local):
        return local
    found = _which("safepool")
    if found:
        return found
    from .errors import BrokenPool
    raise BrokenPool("cannot find the safepool binary; " + BUILD_HINT)
