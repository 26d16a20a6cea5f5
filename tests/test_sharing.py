"""Packaging, serving over loopback HTTP, downloading by name/version and running a bundle standalone."""

from __future__ import annotations

import functools
import http.server
import json
import os
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import REPO, TINY_VIT
from monai.networks.nets import UNETR

sys.path.insert(0, str(REPO / "tools"))
import download_bundle  # noqa: E402
import package_bundle  # noqa: E402

TINY = [*TINY_VIT, "--feature_size", "8"]
VERSION = json.loads((REPO / "bundles" / "m2mae_seg" / "configs" / "metadata.json").read_text())["version"]


@pytest.fixture()
def server(tmp_path):
    """A static file server on 127.0.0.1 (random port) over tmp_path/www, stopped after the test."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture()
def seg_bundle_with_weights(tmp_path, monkeypatch):
    """A copy of the repo's m2mae_seg bundle with tiny weights in models/, so packaging lists a real weight file."""
    torch.manual_seed(0)
    net = UNETR(
        in_channels=4,
        out_channels=3,
        img_size=32,
        feature_size=8,
        hidden_size=48,
        mlp_dim=96,
        num_heads=4,
        norm_name="instance",
        res_block=True,
    )
    fake_repo = tmp_path / "repo"
    (fake_repo / "bundles").mkdir(parents=True)
    import shutil

    shutil.copytree(
        REPO / "bundles" / "m2mae_seg",
        fake_repo / "bundles" / "m2mae_seg",
        ignore=shutil.ignore_patterns("*.pt", "logs", "eval", "checkpoints"),
    )
    shutil.copytree(REPO / "common", fake_repo / "common", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "requirements.txt", fake_repo / "requirements.txt")
    torch.save(net.state_dict(), fake_repo / "bundles" / "m2mae_seg" / "models" / "model.pt")
    monkeypatch.setattr(package_bundle, "REPO", fake_repo)
    return fake_repo


def test_closure_vendors_only_what_the_configs_reach():
    files = {
        p.relative_to(REPO).as_posix()
        for p in package_bundle.common_closure(REPO / "bundles" / "m2mae_seg" / "configs")
    }
    assert {
        "common/__init__.py",
        "common/engines/checkpoint.py",
        "common/data/datalist.py",
        "common/transforms/brats.py",
    } <= files
    assert "common/networks/m2mae.py" not in files  # the segmentation bundle does not need the pre-training network


def test_package_is_reproducible_and_indexed(tmp_path, seg_bundle_with_weights):
    a = Path(package_bundle.build("m2mae_seg", out_dir=str(tmp_path / "a"), base_url="http://host/b"))
    b = Path(package_bundle.build("m2mae_seg", out_dir=str(tmp_path / "b"), base_url="http://host/b"))
    assert a.name == f"m2mae_seg_v{VERSION}.zip" and a.read_bytes() == b.read_bytes()
    names = zipfile.ZipFile(a).namelist()
    assert "m2mae_seg/configs/inference.json" in names and "m2mae_seg/common/engines/checkpoint.py" in names
    assert not any(n.endswith(".pt") for n in names)
    index = json.loads((tmp_path / "a" / "model_info.json").read_text())
    assert index[f"m2mae_seg_v{VERSION}"]["hash"] == package_bundle.sha256(a)
    yml = zipfile.ZipFile(a).read("m2mae_seg/large_files.yml").decode()
    weight = seg_bundle_with_weights / "bundles" / "m2mae_seg" / "models" / "model.pt"
    assert package_bundle.sha256(weight) in yml and f"http://host/b/m2mae_seg_v{VERSION}_model.pt" in yml


@pytest.mark.slow
def test_download_by_name_over_http_and_run_standalone(tmp_path, server, seg_bundle_with_weights):
    www, url = server
    package_bundle.build("m2mae_seg", out_dir=str(www), base_url=url)
    # by URL with MONAI's own downloader
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "download",
            "--name",
            "m2mae_seg",
            "--url",
            f"{url}/m2mae_seg_v{VERSION}.zip",
            "--bundle_dir",
            str(tmp_path / "by_url"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "by_url" / "m2mae_seg" / "configs" / "inference.json").is_file()
    # by name and version against the index; weights through large_files.yml, hash-checked
    installed = Path(
        download_bundle.download("m2mae_seg", VERSION, f"{url}/model_info.json", str(tmp_path / "bundles"))
    )
    weight = installed / "models" / "model.pt"
    assert weight.is_file() and package_bundle.sha256(weight) == package_bundle.sha256(
        seg_bundle_with_weights / "bundles" / "m2mae_seg" / "models" / "model.pt"
    )

    # standalone: run inference from inside the unzipped folder; the vendored common is the one imported
    import nibabel as nib
    import numpy as np

    case = tmp_path / "case"
    case.mkdir()
    entry = {}
    for i, m in enumerate(("t1", "t1ce", "t2", "flair")):
        nib.save(
            nib.Nifti1Image(np.random.default_rng(i).random((36, 40, 30)).astype(np.float32), np.eye(4)),
            case / f"{m}.nii.gz",
        )
        entry[m] = str(case / f"{m}.nii.gz")
    (case / "datalist.json").write_text(json.dumps({"testing": [entry]}))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    check = subprocess.run(
        [sys.executable, "-c", "import common; print(common.__file__)"],
        cwd=installed,
        capture_output=True,
        text=True,
        env=env,
    )
    assert Path(check.stdout.strip()).resolve() == (installed / "common" / "__init__.py").resolve()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "run",
            "--config_file",
            "configs/inference.json",
            *TINY,
            "--datalist",
            str(case / "datalist.json"),
            "--output_dir",
            str(tmp_path / "out"),
        ],
        cwd=installed,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list((tmp_path / "out").glob("*.nii.gz"))) == 1


def test_wrong_hash_is_refused_and_leaves_nothing(tmp_path, server, seg_bundle_with_weights):
    www, url = server
    package_bundle.build("m2mae_seg", out_dir=str(www), base_url=url)
    index = json.loads((www / "model_info.json").read_text())
    index[f"m2mae_seg_v{VERSION}"]["hash"] = "0" * 64
    (www / "model_info.json").write_text(json.dumps(index))
    with pytest.raises(Exception, match="(?i)hash|sha256"):
        download_bundle.download("m2mae_seg", VERSION, f"{url}/model_info.json", str(tmp_path / "bundles"))
    assert list((tmp_path / "bundles").iterdir()) == []


def test_archive_entries_escaping_the_target_are_refused(tmp_path):
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("bundle/configs/ok.json", "{}")
        zf.writestr("../../outside.txt", "pwned")
    with pytest.raises(download_bundle.UnsafeArchiveError, match="outside"):
        download_bundle.safe_extract(evil, tmp_path / "target")
    assert not (tmp_path / "outside.txt").exists() and not (tmp_path / "target" / "bundle").exists()
