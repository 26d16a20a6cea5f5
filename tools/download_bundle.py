"""Fetch a packaged bundle by name and version from a collection index, verify it, unpack it safely, fetch weights.

MONAI's ``python -m monai.bundle download --url <zip-url>`` fetches a zip by URL; looking a bundle up by
``--name/--version`` only works against MONAI's own hosting. This tool reads our ``model_info.json`` index
(a URL or a local file), downloads the zip with its sha256 checked before anything is unpacked, refuses archive
entries that would land outside the target folder, then fetches every file of the bundle's ``large_files.yml``
with its hash checked (MONAI's ``download_url``: temporary file, hash check, then move, so a wrong hash leaves
nothing behind).

    python tools/download_bundle.py --name m2mae_seg --version 0.1.0 --index https://host/model_info.json --bundle_dir ./bundles
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import urllib.parse
import zipfile
from pathlib import Path

import fire

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

__all__ = ["safe_extract", "fetch", "download"]


class UnsafeArchiveError(ValueError):
    """An archive entry would be written outside the target folder."""


def safe_extract(zip_path: str | Path, target: str | Path) -> list[Path]:
    """Extract ``zip_path`` into ``target``, refusing absolute paths, ``..`` and links that escape it."""
    target = Path(target).resolve()
    with zipfile.ZipFile(zip_path) as zf:
        for info in zf.infolist():
            dest = (target / info.filename).resolve()
            if info.filename.startswith(("/", "\\")) or (dest != target and target not in dest.parents):
                raise UnsafeArchiveError(
                    f"{zip_path}: entry '{info.filename}' would be written outside {target}; nothing extracted"
                )
            if (info.external_attr >> 16) & 0o170000 == 0o120000:
                raise UnsafeArchiveError(f"{zip_path}: entry '{info.filename}' is a symbolic link; nothing extracted")
        zf.extractall(target)
        return [target / i.filename for i in zf.infolist()]


def fetch(url: str, dest: Path, sha256: str | None) -> Path:
    """Download ``url`` (http(s) or a local path) to ``dest``; with ``sha256`` the file must match it."""
    from monai.apps.utils import download_url

    parsed = urllib.parse.urlparse(url)
    if parsed.scheme in ("", "file"):
        local = Path(parsed.path if parsed.scheme else url)
        if sha256:
            from common.engines.checkpoint import sha256_file

            if sha256_file(local) != sha256:
                raise ValueError(f"{local}: sha256 mismatch (expected {sha256}); not used")
        shutil.copyfile(local, dest)
        return dest
    download_url(url=url, filepath=dest, hash_val=sha256, hash_type="sha256" if sha256 else "md5", progress=False)
    return dest


def _read_index(index: str) -> dict:
    parsed = urllib.parse.urlparse(index)
    if parsed.scheme in ("http", "https"):
        with tempfile.TemporaryDirectory() as tmp:
            return json.loads(fetch(index, Path(tmp) / "model_info.json", None).read_text())
    return json.loads(Path(index).read_text())


def download(name: str, version: str, index: str, bundle_dir: str = "bundles", weights: bool = True) -> str:
    """Install bundle ``name`` ``version`` listed in ``index`` into ``bundle_dir/name``; returns that folder.

    Args:
        name: bundle name.
        version: bundle version.
        index: URL or path of the collection's ``model_info.json``.
        bundle_dir: parent folder of the installed bundle.
        weights: also fetch the files of ``large_files.yml`` (hash-checked).
    """
    entries = _read_index(index)
    key = f"{name}_v{version}"
    if key not in entries:
        raise KeyError(f"{key} is not in the index {index} (it lists: {sorted(entries)})")
    entry = entries[key]
    source = (
        urllib.parse.urljoin(index, entry["source"]) if "://" in index else str(Path(index).parent / entry["source"])
    )
    target = Path(bundle_dir).resolve()
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target) as tmp:
        zip_path = fetch(source, Path(tmp) / f"{key}.zip", entry["hash"])
        staging = Path(tmp) / "unpacked"
        safe_extract(zip_path, staging)
        final = target / name
        if final.exists():
            shutil.rmtree(final)
        shutil.move(str(staging / name), final)
    if weights:
        from monai.bundle import download_large_files

        download_large_files(bundle_path=str(final))
    print(final)
    return str(final)


if __name__ == "__main__":
    fire.Fire(download)
