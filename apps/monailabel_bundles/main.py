"""MONAI Label app serving this collection's segmentation bundles, offline.

Start (from the repository root, in the MONAI Label environment described in ``README.md`` beside this file)::

    monailabel start_server --app apps/monailabel_bundles --studies /path/to/studies \
        --conf models all --host 127.0.0.1 --port 8000

Configuration (``--conf key value``):

* ``bundles``: folder holding bundle folders (default: this repository's ``bundles/``). Unzipped Model Zoo
  packages made by ``tools/package_bundle.py`` work too: they carry the ``common/`` code they need.
* ``models``: comma-separated bundle names, or ``all`` (default): every bundle whose ``metadata.json`` lists
  ``monai-label`` in ``supported_apps`` and whose ``models/model.pt`` exists.
* ``preload``: ``true`` to load the networks at start-up (MONAI Label's own option).

Each bundle is served by MONAI Label's own ``BundleInferTask`` (its ``configs/inference.json``: ``network_def``,
``preprocessing``, ``inferer``, ``postprocessing``); nothing is looked up in the Model Zoo. Two adaptations, both
because the bundles' outputs are richer than MONAI Label assumes:

* label names come from ``post_processed_outputs.pred.channel_def`` when the metadata has it (BraTS bundles predict
  overlapping TC/WT/ET channels and post-process them into the label map 1/2/3 that MONAI Label shows), else from
  ``network_data_format.outputs`` as MONAI Label reads them;
* a study is one image file holding all of the bundle's modalities as channels, in the bundle's order
  (``tools/stack_modalities.py`` writes such files from a datalist).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from fastapi import HTTPException
from monai.transforms import SaveImaged
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.tasks.infer.bundle import BundleInferTask

from common.transforms.naming import NameBySubjectd

logger = logging.getLogger(__name__)

DEFAULT_BUNDLES = Path(__file__).resolve().parents[2] / "bundles"


def _metadata(bundle: Path) -> dict:
    with open(bundle / "configs" / "metadata.json") as f:
        return json.load(f)


def servable(bundle: Path) -> bool:
    """A bundle that declares MONAI Label support and has an inference config."""
    meta_file = bundle / "configs" / "metadata.json"
    if not meta_file.is_file() or not (bundle / "configs" / "inference.json").is_file():
        return False
    return "monai-label" in _metadata(bundle).get("supported_apps", {})


def label_names(meta: dict) -> dict[str, int]:
    """``{name: value}`` of the label map the bundle writes (background excluded), as MONAI Label expects."""
    formats = meta["network_data_format"]
    outputs = formats.get("post_processed_outputs") or formats["outputs"]
    channel_def = next(iter(outputs.values())).get("channel_def", {})
    return {name.lower(): int(value) for value, name in channel_def.items() if name.lower() != "background"}


def select_bundles(root: Path, models: str) -> list[Path]:
    """The bundle folders to serve; a requested bundle that cannot be served is an error naming what is missing."""
    if not root.is_dir():
        raise FileNotFoundError(f"bundles folder {root} does not exist (set it with --conf bundles <folder>)")
    if models.strip().lower() == "all":
        chosen = [b for b in sorted(root.iterdir()) if b.is_dir() and servable(b)]
        ready = [b for b in chosen if (b / "models" / "model.pt").is_file()]
        for b in sorted(set(chosen) - set(ready)):
            logger.warning(f"skipping {b.name}: no trained weights at {b / 'models' / 'model.pt'}")
        if not ready:
            raise FileNotFoundError(
                f"no servable bundle with weights under {root}: train one (python -m monai.bundle run "
                f"--config_file bundles/<name>/configs/train.json) or download a packaged one"
            )
        return ready
    chosen = []
    for name in (n.strip() for n in models.split(",") if n.strip()):
        bundle = root / name
        if not servable(bundle):
            raise FileNotFoundError(
                f"{bundle}: not a segmentation bundle served by MONAI Label (needs configs/inference.json and "
                f"'monai-label' in supported_apps of configs/metadata.json)"
            )
        if not (bundle / "models" / "model.pt").is_file():
            raise FileNotFoundError(f"{bundle.name}: no trained weights at {bundle / 'models' / 'model.pt'}")
        chosen.append(bundle)
    return chosen


class BundleSegmentationTask(BundleInferTask):
    """``BundleInferTask`` that keeps MONAI Label's request strings away from MONAI's ``Spacingd``.

    MONAI 1.6.1's ``Spacingd`` updates every ``image_*`` entry of the data dict as if it were a metadata dict, and
    MONAI Label 0.8.5 puts the string ``image_path`` into that dict, so pre-processing with ``Spacingd`` fails
    with ``'str' object has no attribute 'update'``. Such non-dict entries are set aside while the pre-transforms
    run and put back afterwards.

    A study whose channel count differs from the bundle's input is refused (HTTP 422) with a message naming the
    file and the expected modalities, before the network sees it.

    Of the bundle's ``postprocessing``, the file-writing steps are left to MONAI Label: ``SaveImaged`` (MONAI
    Label's own default filter) and ``NameBySubjectd``, which names command-line outputs by subject id from an
    entry that only ``common.data.inference.inference_cases`` provides. Label maps are written as ``uint8``, as
    the command-line inference writes them (MONAI Label's writer keeps the network's float32 otherwise).
    """

    label_dtype = "uint8"

    def __init__(self, path: str, conf: dict[str, str], **kwargs):
        kwargs.setdefault("post_filter", [SaveImaged, NameBySubjectd])
        super().__init__(path, conf, **kwargs)
        image = next(iter(_metadata(Path(path))["network_data_format"]["inputs"].values()))
        self.channel_names = [image["channel_def"][k] for k in sorted(image.get("channel_def", {}), key=int)]

    def run_pre_transforms(self, data, transforms):
        prefix = f"{self.key_image}_"
        aside = {k: data.pop(k) for k in list(data) if k.startswith(prefix) and not isinstance(data[k], dict)}
        try:
            data = super().run_pre_transforms(data, transforms)
        finally:
            data.update(aside)
        channels = data[self.key_image].shape[0]
        if self.channel_names and channels != len(self.channel_names):
            raise HTTPException(
                status_code=422,
                detail=f"{data.get('image_path', 'the study')}: {channels} channel(s), but {Path(self.bundle_path).name} "
                f"expects {len(self.channel_names)} ({', '.join(self.channel_names)}) stacked as the 4th dimension "
                f"of one file; tools/stack_modalities.py writes such files",
            )
        return data

    def writer(self, data, extension=None, dtype=None):
        return super().writer(data, extension=extension, dtype=dtype or self.label_dtype)


class BundleCollectionApp(MONAILabelApp):
    """Serves each chosen bundle as a MONAI Label segmentation model named after its folder."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]):
        root = Path(conf.get("bundles", os.environ.get("MMPT_BUNDLES_DIR", DEFAULT_BUNDLES))).resolve()
        self.bundles = select_bundles(root, conf.get("models", "all"))
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="Multi-modal pre-training bundles",
            description="Segmentation bundles fine-tuned from M2-MAE and BrainMVP pre-training",
            version="0.1.0",
        )

    def infer(self, request, datastore=None):
        """MONAI Label's ``infer``, with a 404 that names an unknown model or image instead of a bare 500."""
        model = request.get("model")
        if model not in self._infers:
            raise HTTPException(
                status_code=404,
                detail=f"no model '{model}' is served here; served: {', '.join(sorted(self._infers)) or 'none'}",
            )
        image = request.get("image")
        if isinstance(image, str) and not os.path.exists(image):
            store = datastore if datastore else self.datastore()
            if not store.get_image_uri(image):
                raise HTTPException(
                    status_code=404,
                    detail=f"no image '{image}' in the studies folder {self.studies} "
                    f"({len(store.list_images())} studies; ids are file names without extension)",
                )
        return super().infer(request, datastore)

    def init_infers(self) -> dict[str, InferTask]:
        infers: dict[str, InferTask] = {}
        for bundle in self.bundles:
            task = BundleSegmentationTask(str(bundle), self.conf)
            if not task.is_valid():
                raise RuntimeError(f"{bundle}: MONAI Label could not load this bundle (see the log above)")
            task.labels = label_names(_metadata(bundle))
            infers[bundle.name] = task
            logger.info(f"serving {bundle.name} v{task.version} with labels {task.labels}")
        return infers
