"""Every bundle: Model Zoo metadata verifies offline against the vendored schema, and the standard files exist."""

import json
import subprocess
import sys

import pytest
from conftest import REPO

BUNDLES = sorted(p.name for p in (REPO / "bundles").iterdir() if (p / "configs").is_dir())


def test_the_collection_has_its_bundles():
    assert {"m2mae", "m2mae_seg", "m2mae_cls", "brainmvp", "brainmvp_seg", "brainmvp_cls"} <= set(BUNDLES)


@pytest.mark.parametrize("name", BUNDLES)
def test_metadata_verifies_offline(name):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "verify_metadata",
            "--meta_file",
            f"bundles/{name}/configs/metadata.json",
            "--filepath",
            "schemas/meta_schema_20240725.json",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "metadata is verified with no error" in proc.stdout + proc.stderr


@pytest.mark.parametrize("name", BUNDLES)
def test_bundle_layout(name):
    bundle = REPO / "bundles" / name
    for rel in (
        "configs/train.json",
        "configs/multi_gpu_train.json",
        "configs/inference.json",
        "configs/logging.conf",
        "docs/README.md",
        "LICENSE",
        "large_files.yml",
    ):
        assert (bundle / rel).is_file(), rel
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert meta["version"] in meta["changelog"]
    train = json.loads((bundle / "configs" / "train.json").read_text())
    assert train["bundle_root"].startswith(f"$'bundles/{name}'")  # runs from the repo root and from the bundle folder
    if name.endswith(("_seg", "_cls")):  # downstream bundles evaluate
        assert (bundle / "configs" / "evaluate.json").is_file()


# pre-training bundle -> its contract entries that come from the training data (stored in each checkpoint; the
# metadata describes them in words), and config keys that the data sets
_FROM_DATA = "from the training data, stored in each checkpoint"
REAL_RUN_CONTRACT = {
    "m2mae": {},
    "brainmvp": {},
    "mrm": {"contract#genetics": f"{_FROM_DATA}: feature names in order, imputation fill, standardisation mean/std"},
    "gimp_groupmsa": {
        "contract#expression": f"{_FROM_DATA}: gene names in order, log1p flag, standardisation mean/std",
        "num_genes": f"{_FROM_DATA}: the number of genes of the expression table",
    },
    "gimp": {
        "contract#expression": f"{_FROM_DATA}: gene names in order, log1p flag, standardisation mean/std",
        "num_genes": f"{_FROM_DATA}: the number of genes of the expression table",
    },
}


def real_run_contract(name: str) -> dict:
    """The contract ``train.json`` stores for a run on the user's data (not the demo's), data-derived parts described."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / name / "configs" / "train.json"))
    parser["datalist"] = "/a/datalist.json"  # any user data source turns the demo-only settings off
    for key, text in REAL_RUN_CONTRACT[name].items():
        parser[key] = text
    return parser.get_parsed_content("contract")


@pytest.mark.parametrize("name", sorted(REAL_RUN_CONTRACT))
def test_pretraining_metadata_states_the_real_run_input_contract(name):
    """The contract written in metadata.json is the one train.json stores in its checkpoints on a user's data."""
    meta = json.loads((REPO / "bundles" / name / "configs" / "metadata.json").read_text())
    assert meta["input_contract"] == real_run_contract(name)
