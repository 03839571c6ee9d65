#!/usr/bin/env python3
"""Build a platform wheel of the safepool Python package with its Go binary,
using nothing but the standard library.

    python3 python/build_wheel.py            # writes dist/safepool-<version>-py3-none-<platform>.whl
    pip install dist/safepool-*.whl          # works offline: the wheel needs nothing else

A wheel is a zip file: the package's files, and a .dist-info directory
with METADATA, WHEEL (which names the wheel's tag) and RECORD (every file
with its sha256 and size). The binary goes in as safepool/_bin/safepool,
executable, where the client finds it.

The platform tag says honestly where the binary runs, read from the binary
itself (its ELF header): a static binary (CGO_ENABLED=0, as built here)
needs no C library, so it runs on any Linux of its architecture and is
tagged manylinux_2_17 (and musllinux_1_1); a binary linked to the C library
is tagged plain linux_<arch>, which pip installs only where it was built.

Without --binary, the binary beside the package is used
(python/safepool/_bin/safepool), built first with `go build` if it is not
there.
"""
import argparse
import base64
import hashlib
import os
import re
import struct
import subprocess
import sys
import time
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PACKAGE = os.path.join(HERE, "safepool")
BINARY = os.path.join(PACKAGE, "_bin", "safepool")

# ELF e_machine values and the wheel platform names of their architectures.
MACHINES = {62: "x86_64", 183: "aarch64", 3: "i686", 40: "armv7l", 21: "ppc64le", 22: "s390x"}
PT_INTERP = 3  # a program header that names the dynamic loader


def version() -> str:
    with open(os.path.join(PACKAGE, "__init__.py"), encoding="utf-8") as f:
        m = re.search(r'^__version__ = "([^"]+)"', f.read(), re.M)
    if not m:
        sys.exit("build_wheel: no __version__ in safepool/__init__.py")
    return m.group(1)


def elf_facts(path: str):
    """(architecture, static) of the ELF executable at path."""
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF":
            raise ValueError("%s is not an ELF executable" % path)
        if head[4] != 2:
            raise ValueError("%s is not a 64-bit executable" % path)
        end = "<" if head[5] == 1 else ">"
        (machine,) = struct.unpack_from(end + "H", head, 18)
        phoff, = struct.unpack_from(end + "Q", head, 32)
        phentsize, phnum = struct.unpack_from(end + "HH", head, 54)
        static = True
        for i in range(phnum):
            f.seek(phoff + i * phentsize)
            (ptype,) = struct.unpack(end + "I", f.read(4))
            if ptype == PT_INTERP:
                static = False
    if machine not in MACHINES:
        raise ValueError("%s is for an unknown architecture (ELF machine %d)" % (path, machine))
    return MACHINES[machine], static


def platform_tag(path: str) -> str:
    arch, static = elf_facts(path)
    if static:
        # No C library needed: every glibc (manylinux) and musl (musllinux)
        # Linux of this architecture runs it.
        return "manylinux_2_17_%s.manylinux2014_%s.musllinux_1_1_%s" % (arch, arch, arch)
    return "linux_" + arch


def metadata(ver: str) -> str:
    with open(os.path.join(HERE, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    return "\n".join([
        "Metadata-Version: 2.1",
        "Name: safepool",
        "Version: " + ver,
        "Summary: Process pools that survive the OOM killer: drop-ins for multiprocessing.Pool and "
        "ProcessPoolExecutor",
        "Requires-Python: >=3.9",
        "Classifier: Programming Language :: Python :: 3",
        "Classifier: Operating System :: POSIX :: Linux",
        "Provides-Extra: lambdas",
        'Requires-Dist: cloudpickle; extra == "lambdas"',
        "Description-Content-Type: text/markdown",
        "",
        readme,
    ])


def record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


# DATA_FILES are the package's files other than Python and the binary that
# it reads at run time (pyproject.toml's package-data lists them too).
DATA_FILES = ("journal_schema.sql",)


def package_files():
    """(path in the wheel, path on disk) of the package's Python files and
    of its DATA_FILES."""
    out = []
    for name in sorted(os.listdir(PACKAGE)):
        if name.endswith(".py") or name in DATA_FILES:
            out.append(("safepool/" + name, os.path.join(PACKAGE, name)))
    return out


def build_binary():
    env = dict(os.environ, CGO_ENABLED="0")
    subprocess.run(["go", "build", "-o", BINARY, "./cmd/safepool"], cwd=ROOT, env=env, check=True)


def build(binary: str, out_dir: str) -> str:
    ver = version()
    tag = platform_tag(binary)
    name = "safepool-%s-py3-none-%s.whl" % (ver, tag)
    info = "safepool-%s.dist-info" % ver
    # Reproducible: the same inputs give the same bytes.
    stamp = time.gmtime(max(int(os.environ.get("SOURCE_DATE_EPOCH", "315532800")), 315532800))[:6]

    entries = []  # (name in the wheel, data, mode)
    for arc, path in package_files():
        with open(path, "rb") as f:
            entries.append((arc, f.read(), 0o644))
    with open(binary, "rb") as f:
        entries.append(("safepool/_bin/safepool", f.read(), 0o755))
    wheel = "Wheel-Version: 1.0\nGenerator: safepool build_wheel.py\nRoot-Is-Purelib: false\n"
    wheel += "".join("Tag: py3-none-%s\n" % t for t in tag.split("."))
    entries.append((info + "/METADATA", metadata(ver).encode(), 0o644))
    entries.append((info + "/WHEEL", wheel.encode(), 0o644))
    record = "".join("%s,%s,%d\n" % (arc, record_hash(data), len(data)) for arc, data, _ in entries)
    record += info + "/RECORD,,\n"
    entries.append((info + "/RECORD", record.encode(), 0o644))

    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, name)
    tmp = path + ".tmp"
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for arc, data, mode in entries:
            zi = zipfile.ZipInfo(arc, date_time=stamp)
            zi.external_attr = (0o100000 | mode) << 16  # a regular file with these permissions
            zi.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(zi, data)
    os.replace(tmp, path)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--binary", help="the safepool binary to put in the wheel (default: %(default)s)",
                        default=None)
    parser.add_argument("--out", default=os.path.join(ROOT, "dist"), help="directory for the wheel "
                        "(default: dist/ at the repository's root)")
    args = parser.parse_args(argv)
    binary = args.binary
    if binary is None:
        if not os.path.exists(BINARY):
            build_binary()
        binary = BINARY
    print(build(binary, args.out))


if __name__ == "__main__":
    main()
