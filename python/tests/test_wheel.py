"""build_wheel.py: a wheel made with the standard library alone. (test.sh
installs one into a fresh virtual environment and runs the seed scenario
from there.)"""
import base64
import hashlib
import os
import shutil
import sys
import tempfile
import unittest
import zipfile

from tests.support import PYTHON_DIR

sys.path.insert(0, PYTHON_DIR)
import build_wheel  # noqa: E402

BINARY = os.path.join(PYTHON_DIR, "safepool", "_bin", "safepool")


def package_data():
    """The files pyproject.toml's package-data lists for the package."""
    with open(os.path.join(PYTHON_DIR, "pyproject.toml"), encoding="utf-8") as f:
        text = f.read()
    section = text.split("[tool.setuptools.package-data]", 1)[1]
    line = [l for l in section.splitlines() if l.startswith("safepool")][0]
    names = [n.strip().strip('"') for n in line.split("[", 1)[1].rsplit("]", 1)[0].split(",")]
    assert "journal_schema.sql" in names, names
    return names


class Wheel(unittest.TestCase):
    def setUp(self):
        if not os.path.exists(BINARY):
            self.fail("build the binary first: go build -o python/safepool/_bin/safepool ./cmd/safepool")
        self.out = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.out)

    def test_contents_and_record(self):
        path = build_wheel.build(BINARY, self.out)
        ver = build_wheel.version()
        self.assertEqual(os.path.basename(path).split("-")[:4], ["safepool", ver, "py3", "none"])
        info = "safepool-%s.dist-info/" % ver
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            self.assertIn("safepool/_bin/safepool", names)
            self.assertIn("safepool/pool.py", names)
            # Every file the package names as its data, such as the
            # journal's schema, which Pool(journal=...) reads.
            for data in package_data():
                self.assertIn("safepool/" + data, names)
            self.assertFalse([n for n in names if "__pycache__" in n or n.startswith("tests/")])
            mode = z.getinfo("safepool/_bin/safepool").external_attr >> 16
            self.assertEqual(mode & 0o777, 0o755)
            self.assertEqual(z.read("safepool/_bin/safepool"), open(BINARY, "rb").read())
            record = z.read(info + "RECORD").decode().splitlines()
            listed = {}
            for line in record:
                name, digest, size = line.rsplit(",", 2)
                listed[name] = (digest, size)
            self.assertEqual(set(listed), set(names))
            self.assertEqual(listed[info + "RECORD"], ("", ""))
            for name in names:
                if name == info + "RECORD":
                    continue
                data = z.read(name)
                want = "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
                self.assertEqual(listed[name], (want, str(len(data))), name)
            wheel = z.read(info + "WHEEL").decode()
            self.assertIn("Root-Is-Purelib: false", wheel)
            tags = [line.split(": ")[1] for line in wheel.splitlines() if line.startswith("Tag: ")]
            self.assertEqual(".".join(t.split("-")[2] for t in tags), os.path.basename(path)[:-4].split("-")[4])
            meta = z.read(info + "METADATA").decode()
            self.assertIn("Name: safepool\nVersion: %s\n" % ver, meta)

    def test_reproducible(self):
        a = build_wheel.build(BINARY, self.out)
        with open(a, "rb") as f:
            first = f.read()
        os.unlink(a)
        with open(build_wheel.build(BINARY, self.out), "rb") as f:
            self.assertEqual(f.read(), first)

    def test_platform_tag_is_honest(self):
        # The binary test.sh builds is static (CGO_ENABLED=0): any Linux of
        # its architecture runs it. A binary that needs the C library
        # (this interpreter) runs only where it was built.
        arch, static = build_wheel.elf_facts(BINARY)
        if static:
            self.assertTrue(build_wheel.platform_tag(BINARY).startswith("manylinux_2_17_" + arch))
        dynamic = [exe for exe in (os.path.realpath(sys.executable), "/bin/sh", "/usr/bin/env")
                   if os.path.exists(exe) and not build_wheel.elf_facts(exe)[1]]
        if not dynamic:
            self.skipTest("no dynamically linked program here to check against")
        arch = build_wheel.elf_facts(dynamic[0])[0]
        self.assertEqual(build_wheel.platform_tag(dynamic[0]), "linux_" + arch)
        with self.assertRaises(ValueError):
            build_wheel.elf_facts(os.path.join(PYTHON_DIR, "README.md"))


if __name__ == "__main__":
    unittest.main()
