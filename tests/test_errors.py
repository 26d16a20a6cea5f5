"""A data error raised deep inside MONAI's config evaluation is printed as one readable message, last."""

from __future__ import annotations

import io
import sys

import pytest

from common.data.validate import DataValidationError, Problem
from common.engines import errors
from common.engines.checkpoint import ResumeRefused
from common.engines.contract import ContractError


def _data_error() -> DataValidationError:
    return DataValidationError([Problem("error", "S1", "a.nii.gz", "t2: file not found")])


def _wrapped(inner: BaseException) -> RuntimeError:
    """What monai.bundle does: RuntimeError("Failed to instantiate ...") from the real error, twice over."""
    try:
        try:
            raise inner
        except BaseException as e:
            raise RuntimeError("Failed to instantiate component 'common.data.validate.check_or_raise'") from e
    except RuntimeError as outer:
        try:
            raise RuntimeError("Failed to evaluate ConfigExpression") from outer
        except RuntimeError as top:
            return top


@pytest.mark.parametrize("inner", [_data_error(), ContractError("x"),
                                   ResumeRefused("y"), FloatingPointError("z")])  # fmt: skip
def test_the_user_error_is_found_through_the_chain(inner):
    assert errors.find_user_error(_wrapped(inner)) is inner


def test_other_errors_are_not_user_errors():
    assert errors.find_user_error(_wrapped(KeyError("image"))) is None
    assert errors.find_user_error(None) is None


def _hook_output(monkeypatch, exc: BaseException, debug: bool | None = None) -> tuple[str, list]:
    calls = []
    monkeypatch.setattr(sys, "excepthook", lambda *a: calls.append(a))
    errors.readable_errors(debug=debug)
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    sys.excepthook(type(exc), exc, exc.__traceback__)
    return err.getvalue(), calls


def test_hook_prints_only_the_message_last(monkeypatch):
    text, calls = _hook_output(monkeypatch, _wrapped(_data_error()))
    assert calls == []  # the default hook (the traceback) is not called
    lines = text.strip().splitlines()
    assert lines[0] == "DataValidationError: 1 data error(s), fix them before training:"
    assert lines[1] == "ERROR S1 a.nii.gz: t2: file not found"
    assert lines[-1] == "(set MMPT_DEBUG=1 to see the full traceback)"


def test_hook_keeps_the_traceback_of_other_errors(monkeypatch):
    exc = _wrapped(KeyError("image"))
    text, calls = _hook_output(monkeypatch, exc)
    assert text == "" and len(calls) == 1 and calls[0][1] is exc


def test_debug_keeps_every_traceback(monkeypatch):
    monkeypatch.setenv("MMPT_DEBUG", "1")
    sentinel = object()
    monkeypatch.setattr(sys, "excepthook", sentinel)
    errors.readable_errors()
    assert sys.excepthook is sentinel
    errors.readable_errors(debug=False)  # explicit argument wins over the environment
    assert sys.excepthook is not sentinel and sys.excepthook._mmpt


def test_installing_twice_wraps_once(monkeypatch):
    monkeypatch.setattr(sys, "excepthook", sys.__excepthook__)
    errors.readable_errors(debug=False)
    first = sys.excepthook
    errors.readable_errors(debug=False)
    assert sys.excepthook is first


def test_the_unhelpful_plugin_warning_is_silenced(recwarn):
    import warnings

    errors.readable_errors(debug=True)
    warnings.warn("NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register successfully.", UserWarning)
    warnings.warn("something the user can act on", UserWarning)
    assert [str(w.message) for w in recwarn] == ["something the user can act on"]


@pytest.mark.parametrize("value", ["1", "TRUE", "yes", "Yes"])
def test_debug_switch_spellings(monkeypatch, value):
    monkeypatch.setenv("MMPT_DEBUG", value)
    sentinel = object()
    monkeypatch.setattr(sys, "excepthook", sentinel)
    errors.readable_errors()
    assert sys.excepthook is sentinel


def test_without_the_switch_the_hook_is_installed(monkeypatch):
    monkeypatch.delenv("MMPT_DEBUG", raising=False)
    monkeypatch.setattr(sys, "excepthook", sys.__excepthook__)
    errors.readable_errors()
    assert sys.excepthook._mmpt


def test_other_errors_reach_the_previous_hook_unchanged(monkeypatch):
    try:
        raise KeyError("image")
    except KeyError as e:
        exc = e
    assert exc.__traceback__ is not None
    _, calls = _hook_output(monkeypatch, exc)
    assert calls == [(KeyError, exc, exc.__traceback__)]


def test_the_chain_is_followed_through_context_and_survives_cycles():
    inner = ResumeRefused("stop")
    outer = RuntimeError("while handling")
    outer.__context__ = inner  # no __cause__: raised inside an except block
    assert errors.find_user_error(outer) is inner
    a, b = RuntimeError("a"), RuntimeError("b")
    a.__context__, b.__context__ = b, a  # a cycle without a user error ends
    assert errors.find_user_error(a) is None


def test_an_unimportable_entry_is_skipped_not_the_rest(monkeypatch):
    monkeypatch.setattr(errors, "USER_ERRORS", ("no.such.module.Error", "common.engines.contract.ContractError"))
    assert errors.user_error_types() == (ContractError,)
