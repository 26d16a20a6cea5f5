"""Errors a user can act on, printed as one readable message at the end of a failed run.

``python -m monai.bundle run`` wraps every exception raised while a config is evaluated in a ``RuntimeError``
("Failed to instantiate component ..." or "Failed to evaluate ConfigExpression ..."), so a data problem the
collection names precisely ends up in the middle of a long traceback whose last line points elsewhere. MONAI has
no hook for this; :func:`readable_errors`, called first in every config's ``initialize``, installs an exception
hook that looks through the exception's chain for one of :data:`USER_ERRORS` and, when it finds one, prints only
its message (and the hint to see the traceback) as the last lines, exiting non-zero. Any other exception keeps
its full traceback. ``MMPT_DEBUG=1`` (or ``readable_errors(debug=True)``) keeps full tracebacks for all.

It also silences start-up warnings the user cannot act on (MONAI's optional nvImageCodec DICOM plugin), leaving
MONAI's own config-trust warning alone.
"""

from __future__ import annotations

import os
import sys
import warnings
from types import TracebackType

__all__ = ["USER_ERRORS", "find_user_error", "readable_errors", "user_error_types"]

#: dotted names of the exception types whose message is the whole story (data, contract, resume, non-finite loss)
USER_ERRORS = (
    "common.data.validate.DataValidationError",
    "common.engines.contract.ContractError",
    "common.engines.checkpoint.ResumeRefused",
    "common.engines.classification.ClassLabelError",
    "common.data.wsi_features.BagError",
    "common.data.wsi.SlideReadError",
    "common.data.wsi.MagnificationError",
    "builtins.FloatingPointError",
)

#: warnings that say nothing a user can act on (regexes of their messages)
QUIET_WARNINGS = (r"NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register",)


def user_error_types() -> tuple[type[BaseException], ...]:
    """The importable classes of :data:`USER_ERRORS` (a module that fails to import is skipped)."""
    import importlib

    found = []
    for dotted in USER_ERRORS:
        module, _, name = dotted.rpartition(".")
        try:
            found.append(getattr(importlib.import_module(module), name))
        except Exception:  # noqa: BLE001 - a module that cannot be imported (or is mid-edit) is skipped
            continue
    return tuple(found)


def find_user_error(exc: BaseException | None) -> BaseException | None:
    """The first exception of a user-facing type in ``exc``'s chain (``__cause__``, then ``__context__``)."""
    types = user_error_types()
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, types):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def readable_errors(debug: bool | None = None) -> None:
    """Install the exception hook and the warning filters (idempotent; returns ``None`` for config use).

    Args:
        debug: keep full tracebacks; default from the ``MMPT_DEBUG`` environment variable.

    Example (first entry of a bundle config's ``initialize``)::

        "initialize": ["$common.engines.errors.readable_errors()", ...]
    """
    for message in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    if debug is None:
        debug = os.environ.get("MMPT_DEBUG", "").lower() in ("1", "true", "yes")
    if debug or getattr(sys.excepthook, "_mmpt", False):
        return
    previous = sys.excepthook

    def hook(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        user = find_user_error(exc)
        if user is None:
            previous(kind, exc, tb)
            return
        sys.stderr.write(f"\n{type(user).__name__}: {user}\n\n(set MMPT_DEBUG=1 to see the full traceback)\n")
        sys.stderr.flush()

    hook._mmpt = True  # type: ignore[attr-defined]
    sys.excepthook = hook
