"""Standing rules checked on the source: safe checkpoint loading, no downloads at run time, no eval of data."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCES = [p for d in ("common", "tools", "bundles") for p in (REPO / d).rglob("*.py")]


def _calls(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Call):
            yield node


def _name(func: ast.expr) -> str:
    if isinstance(func, ast.Attribute):
        return f"{_name(func.value)}.{func.attr}"
    return func.id if isinstance(func, ast.Name) else ""


def test_sources_exist():
    assert len(SOURCES) >= 10


def test_every_torch_load_uses_weights_only_true():
    offenders = []
    for path in SOURCES:
        for call in _calls(path):
            if _name(call.func) == "torch.load":
                kw = {k.arg: k.value for k in call.keywords}
                if not (isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True):
                    offenders.append(f"{path.relative_to(REPO)}:{call.lineno}")
    assert offenders == []


def test_no_eval_exec_or_pickle_of_data():
    offenders = [
        f"{p.relative_to(REPO)}:{c.lineno}"
        for p in SOURCES
        for c in _calls(p)
        if _name(c.func) in {"eval", "exec", "pickle.load", "pickle.loads", "numpy.load", "np.load"}
        and not (
            _name(c.func) in {"np.load", "numpy.load"}
            and any(
                k.arg == "allow_pickle" and isinstance(k.value, ast.Constant) and k.value.value is False
                for k in c.keywords
            )
        )
    ]
    assert offenders == []


def test_nothing_downloads_at_run_time():
    banned = {
        "urllib.request.urlretrieve",
        "urlretrieve",
        "requests.get",
        "hf_hub_download",
        "load_state_dict_from_url",
        "torch.hub.load",
        "download_url",
    }
    offenders = [
        f"{p.relative_to(REPO)}:{c.lineno}"
        for p in SOURCES
        if "tools" not in p.parts
        for c in _calls(p)
        if _name(c.func) in banned
    ]
    assert offenders == []
