"""The artifacts shipped inside the package, and their integrity check.

`prompt_transfer/assets/` holds the project's vocabulary (`offline_spm.model`) and its
pre-trained small T5 (`offline_t5/`: a bfloat16 T5X checkpoint, its size gin file and the
pre-training log). `SHA256SUMS` lists every file with its hash; anything that reads them checks
first, so a missing or damaged file is named with the way to get it back instead of surfacing
as a shape error or a silently wrong model. Gin files name the shipped model as
`shipped:offline_t5` (see `checkpoints.resolve_checkpoint`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from prompt_transfer.base import files
from prompt_transfer.base.errors import UserError

ASSETS_DIR = Path(__file__).resolve().parents[1] / "assets"  # the package's data folder
MANIFEST = "SHA256SUMS"
SHIPPED_PREFIX = "shipped:"
REBUILD = {
    "offline_spm.model": "`prompt-transfer build-vocab`",
    "offline_t5": "launch/pretrain_offline.sh (or launch/pretrain_cached.py on a GPU)",
}


class AssetError(UserError):
    pass


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _hint(relative: str, root: Path) -> str:
    how = REBUILD.get(relative.split("/")[0], "its recipe in launch/")
    return f"restore it (`git checkout -- {root}`) or rebuild it with {how}"


def write_manifest(root: Path | None = None) -> Path:
    """List every file under `root` (default: the package's assets, but the manifest) with its
    SHA-256."""
    root = Path(root or ASSETS_DIR)
    lines = [
        f"{_sha256(p)}  {p.relative_to(root).as_posix()}"
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    ]
    path = root / MANIFEST
    path.write_text("\n".join(lines) + "\n")
    return path


def record(relative: str, root: Path | None = None) -> None:
    """Enter one rebuilt file's SHA-256 in the manifest (the other lines stay as they were, so a
    damaged file elsewhere is still found)."""
    root = Path(root or ASSETS_DIR)
    manifest = root / MANIFEST
    lines = [
        line
        for line in manifest.read_text().splitlines()
        if line and line.partition("  ")[2] != relative
    ]
    lines.append(f"{_sha256(root / relative)}  {relative}")
    lines.sort(key=lambda line: line.partition("  ")[2])
    files.atomic_write_text(manifest, "\n".join(lines) + "\n")


def verify(name: str, root: Path | None = None) -> Path:
    """Check the shipped artifact `name` (a file or folder under `root`, default the package's
    assets) against the manifest; returns its path, or raises AssetError naming the damaged
    file and how to get it back."""
    root = Path(root or ASSETS_DIR)
    manifest = root / MANIFEST
    if not manifest.exists():
        raise AssetError(f"{manifest} is missing; {_hint(name, root)}")
    listed = {}
    for line in manifest.read_text().splitlines():
        digest, _, relative = line.partition("  ")
        listed[relative] = digest
    wanted = {r: d for r, d in listed.items() if r == name or r.startswith(f"{name}/")}
    if not wanted:
        raise AssetError(f"no shipped artifact {name!r}; shipped: {', '.join(sorted(REBUILD))}")
    for relative, digest in sorted(wanted.items()):
        path = root / relative
        if not path.is_file():
            raise AssetError(f"shipped file {path} is missing; {_hint(relative, root)}")
        if _sha256(path) != digest:
            raise AssetError(
                f"shipped file {path} is corrupt (SHA-256 differs from {manifest}); "
                f"{_hint(relative, root)}"
            )
    return root / name


def shipped_checkpoint(path: str) -> str:
    """`shipped:NAME` -> the verified checkpoint directory of the shipped model NAME."""
    name = path[len(SHIPPED_PREFIX) :].strip("/")
    return str(verify(name) / "checkpoint")


if __name__ == "__main__":  # after replacing an artifact: python -m prompt_transfer.base.assets
    print(f"wrote {write_manifest()}")
