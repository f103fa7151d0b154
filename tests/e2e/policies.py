"""Policy modules for the end-to-end tests: the built ones from policies/,
and deliberately broken ones assembled from tests/e2e/wat/ with wat2wasm."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUILT = Path(os.environ.get("SWITCHYARD_POLICIES", REPO / "target" / "policies"))
WAT = Path(__file__).resolve().parent / "wat"


class SetupError(RuntimeError):
    pass


def built(name: str) -> Path:
    path = BUILT / f"{name}.wasm"
    if not path.is_file():
        raise SetupError(f"{path} is missing: build the policies first (bash policies/build)")
    return path


def assemble(name: str, out_dir: Path) -> Path:
    """wat2wasm tests/e2e/wat/<name>.wat → out_dir/<name>.wasm."""
    out = Path(out_dir) / f"{name}.wasm"
    proc = subprocess.run(["wat2wasm", str(WAT / f"{name}.wat"), "-o", str(out)],
                          capture_output=True, timeout=30)
    if proc.returncode != 0:
        raise SetupError(f"wat2wasm {name}.wat failed: {proc.stderr.decode(errors='replace')}")
    return out


def install(src: Path, directory: Path, name: str) -> Path:
    """Copies a module into a watched directory in one rename, as an operator
    should, so the proxy never reads a half-written file."""
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory.parent, prefix=".policy-")
    os.close(fd)
    shutil.copyfile(src, tmp)
    dest = directory / f"{name}.wasm"
    os.replace(tmp, dest)
    return dest
