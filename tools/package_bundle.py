"""Package a bundle as a Model Zoo zip that runs on its own, and index it.

``python tools/package_bundle.py build m2mae_seg --base_url https://example.org/bundles`` writes into ``dist/``:

* ``m2mae_seg_v0.1.0.zip``: the bundle folder (configs, docs, LICENSE, ``large_files.yml``) with the part of
  ``common/`` its configs need vendored in as ``common/`` (found by following imports from every
  ``common.*`` name in the configs), and a ``requirements.txt``. Weights are not inside: ``large_files.yml``
  lists each file of ``models/`` with its URL and sha256, and the file itself is copied next to the zip.
  The zip is reproducible: same input, same bytes (sorted entries, fixed timestamps and permissions).
* ``model_info.json``: the collection index, ``{"<name>_v<version>": {"name", "version", "source", "hash"}}``,
  merged with what is already there.

Unzipped anywhere, ``python -m monai.bundle run --config_file configs/inference.json`` (or ``train.json``) runs
from inside the folder: ``python -m`` puts the folder on ``sys.path``, so the vendored ``common`` imports.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import sys
import zipfile
from pathlib import Path

import fire

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from common.engines.checkpoint import sha256_file as sha256  # noqa: E402

_EXCLUDE_DIRS = {"logs", "eval", "runs", "checkpoints", "__pycache__"}
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)
_COMMON_NAME = re.compile(r"\bcommon(?:\.[A-Za-z_][A-Za-z0-9_]*)+")


def _module_file(name: str) -> Path | None:
    """The source file of dotted ``name`` under the repo (a module, or a package's ``__init__``)."""
    parts = name.split(".")
    while parts:
        base = REPO.joinpath(*parts)
        if base.with_suffix(".py").is_file():
            return base.with_suffix(".py")
        if (base / "__init__.py").is_file():
            return base / "__init__.py"
        parts = parts[:-1]  # a function or class name at the end
    return None


def common_closure(config_dir: Path) -> list[Path]:
    """Every file of ``common/`` that the configs reach, following ``common`` imports, plus package inits."""
    names = set()
    for cfg in config_dir.glob("*.json"):
        names |= set(_COMMON_NAME.findall(cfg.read_text()))
    todo = [f for f in (_module_file(n) for n in names) if f]
    seen: set[Path] = set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "common":
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.split(".")[0] == "common"]
            else:
                continue
            todo += [f for f in (_module_file(t) for t in targets) if f and f not in seen]
    packages = {
        folder
        for path in seen
        for folder in path.parents
        if folder == REPO / "common" or REPO / "common" in folder.parents
    }
    return sorted({*seen, *(pkg / "__init__.py" for pkg in packages if (pkg / "__init__.py").is_file())})


def _requirements() -> str:
    lines = [
        ln for ln in (REPO / "requirements.txt").read_text().splitlines() if ln.strip() and not ln.startswith("-e")
    ]
    return "\n".join(lines) + "\n"


def _write_zip(files: dict[str, bytes], path: Path) -> None:
    tmp = path.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for arcname in sorted(files):
            info = zipfile.ZipInfo(arcname, date_time=_FIXED_TIME)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, files[arcname])
    tmp.replace(path)


def build(name: str, out_dir: str = "dist", base_url: str = "", include_weights: bool = True) -> str:
    """Build ``<out_dir>/<name>_v<version>.zip`` and update ``<out_dir>/model_info.json``; returns the zip path.

    Args:
        name: bundle folder name under ``bundles/``.
        out_dir: output folder.
        base_url: where the zip and weights will be published (their URLs in ``large_files.yml`` and the index).
        include_weights: list ``models/*.pt`` in ``large_files.yml`` and copy them next to the zip.
    """
    bundle = REPO / "bundles" / name
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    version = meta["version"]
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{name}_v{version}"
    base_url = base_url.rstrip("/")
    files: dict[str, bytes] = {}
    for path in sorted(bundle.rglob("*")):
        rel = path.relative_to(bundle)
        if (
            path.is_dir()
            or _EXCLUDE_DIRS & set(rel.parts)
            or (rel.parts[0] == "models" and path.suffix in {".pt", ".ts"})
        ):
            continue
        files[f"{name}/{rel.as_posix()}"] = path.read_bytes()
    for path in common_closure(bundle / "configs"):
        files[f"{name}/{path.relative_to(REPO).as_posix()}"] = path.read_bytes()
    files[f"{name}/requirements.txt"] = _requirements().encode()

    large = []
    if include_weights:
        for weight in sorted((bundle / "models").glob("*.pt")):
            digest = sha256(weight)
            published = f"{stem}_{weight.name}"
            shutil.copyfile(weight, out / published)
            large.append(
                {
                    "path": f"models/{weight.name}",
                    "url": f"{base_url}/{published}" if base_url else published,
                    "hash_val": digest,
                    "hash_type": "sha256",
                }
            )
    yml = (
        "large_files:\n"
        + "".join(
            f'  - path: "{e["path"]}"\n    url: "{e["url"]}"\n    hash_val: "{e["hash_val"]}"\n    hash_type: "{e["hash_type"]}"\n'
            for e in large
        )
        if large
        else "large_files: []\n"
    )
    files[f"{name}/large_files.yml"] = yml.encode()

    zip_path = out / f"{stem}.zip"
    _write_zip(files, zip_path)
    index_path = out / "model_info.json"
    index = json.loads(index_path.read_text()) if index_path.is_file() else {}
    index[stem] = {
        "name": name,
        "version": version,
        "source": f"{base_url}/{zip_path.name}" if base_url else zip_path.name,
        "hash": sha256(zip_path),
        "hash_type": "sha256",
    }
    index_path.write_text(json.dumps(dict(sorted(index.items())), indent=2) + "\n")
    print(zip_path)
    return str(zip_path)


if __name__ == "__main__":
    fire.Fire(
        {
            "build": build,
            "closure": lambda name: [
                str(p.relative_to(REPO)) for p in common_closure(REPO / "bundles" / name / "configs")
            ],
        }
    )
