"""The transformers seam (`tokred.adapters.hf`): version range, warning, keyword aliases, and that the pipeline
names no transformers internals itself."""

from __future__ import annotations

import ast
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import tomllib
import torch

from tokred import _compat
from tokred.adapters import hf

ROOT = Path(__file__).resolve().parents[2]

# ------------------------------------------------------------------------------------------------ version range


def test_pyproject_declares_the_tested_range():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    spec = [d for d in deps if d.replace(" ", "").startswith("transformers")]
    low, high = hf.TESTED_RANGE
    assert spec == [f"transformers>={low},<{high}"]


@pytest.mark.in_range
def test_installed_version_is_in_the_tested_range():
    version = hf.installed_version()
    assert version is not None
    assert hf.version_in_range(version), f"the suite runs on transformers {version}, outside {hf.TESTED_RANGE}"


@pytest.mark.parametrize(
    "version,inside",
    [("5.18.0", True), ("5.24.0", True), ("5.24.9", True), ("5.17.2", False), ("5.25.0", False),
     ("5.25.0.dev0", False), ("6.0.0", False), ("4.57.1", False), ("5.20.0+local", True)],
)  # fmt: skip
def test_version_in_range(version, inside):
    assert hf.version_in_range(version, ("5.18.0", "5.25")) is inside


def test_warning_fires_once_in_one_line_for_an_out_of_range_version(monkeypatch):
    monkeypatch.setattr(_compat, "_warned", set())
    monkeypatch.setattr(_compat, "installed_version", lambda: "5.99.1")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert hf.check_version() is False
        assert hf.check_version() is False  # a second check stays silent
    assert len(caught) == 1
    w = caught[0]
    assert issubclass(w.category, hf.UntestedTransformersWarning)
    text = str(w.message)
    low, high = hf.TESTED_RANGE
    assert "\n" not in text
    assert "5.99.1" in text and f"pip install 'transformers>={low},<{high}'" in text


def test_no_warning_inside_the_range(monkeypatch):
    monkeypatch.setattr(_compat, "_warned", set())
    monkeypatch.setattr(_compat, "installed_version", lambda: hf.TESTED_RANGE[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert hf.check_version() is True


def test_import_tokred_warns_in_one_stderr_line_outside_the_range():
    code = (
        "import importlib.metadata as m\n"
        "orig = m.version\n"
        "m.version = lambda name: '5.31.0' if name == 'transformers' else orig(name)\n"
        "import tokred\n"
        "import tokred.adapters.hf\n"  # a second import warns no more
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, res.stderr
    assert "transformers 5.31.0" in lines[0] and "pip install" in lines[0]


@pytest.mark.in_range
def test_import_tokred_is_silent_inside_the_range():
    res = subprocess.run(
        [sys.executable, "-W", "error::UserWarning", "-c", "import tokred"], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0 and res.stderr == "", res.stderr


# ------------------------------------------------------------------------------------------------ keywords


def test_call_args_reads_both_cache_names_and_writes_the_one_used():
    cache = object()
    for name in hf.CACHE_NAMES:
        kwargs = {name: cache}
        call = hf.CallArgs((), kwargs)
        assert call.cache is cache
        call.cache = None
        assert list(kwargs) == [name]  # written back under the caller's name
    call = hf.CallArgs((), {})
    assert call.cache is None and call.cache_length() == 0
    call.cache = cache
    assert call.kwargs == {hf.CACHE_KWARG: cache}


def test_cache_kwarg_follows_the_installed_version():
    assert hf.CACHE_KWARG == ("cache" if hf.at_least("5.24") else "past_key_values")


def test_call_args_hidden_states_positional_or_keyword():
    h, h2 = torch.zeros(1, 2, 3), torch.ones(1, 2, 3)
    pos = hf.CallArgs((h, "x"), {})
    pos.hidden_states = h2
    assert pos.args[0] is h2 and pos.args[1] == "x"
    kw = hf.CallArgs((), {"hidden_states": h})
    assert kw.hidden_states is h
    kw.hidden_states = h2
    assert kw.kwargs["hidden_states"] is h2


def test_output_cache_reads_either_field():
    cache = object()
    assert hf.output_cache({"past_key_values": cache}) is cache
    assert hf.output_cache({"cache": cache}) is cache
    assert hf.output_cache({"logits": 1}) is None


# ------------------------------------------------------------------------------------------------ one seam

#: transformers names that only the seam may spell, in any form: string, keyword argument, attribute or import.
STRICT = {
    "past_key_values", "cache_position", "mm_encoder_outputs", "pooler_output", "get_seq_length",
    "get_image_features", "get_rope_index", "_attn_implementation", "set_attn_implementation", "DynamicCache",
    "DynamicLayer", "AttentionInterface", "AttentionMaskInterface", "sdpa_attention_forward",
    "eager_attention_forward", "use_cache", "logits_to_keep", "output_attentions", "return_dict",
    "cache_implementation", "prefill_chunk_size", "assistant_model", "generation_config", "self_attn", "k_proj",
    "vision_feature_layer", "token_type_ids", "mm_token_type_ids", "sequences", "rotary_emb",
}  # fmt: skip
#: Call keywords of transformers forwards that tokred's own API also uses as attribute names (``CallArgs.cache``,
#: ``ScoreContext.attention_mask``): the pipeline may not spell them as strings (``kwargs["attention_mask"]``) or
#: pass them to anything but tokred's own classes.
KEYWORDS = {
    "cache", "input_ids", "inputs_embeds", "attention_mask", "position_ids", "position_embeddings", "hidden_states",
    "pixel_values", "scaling", "image",
}  # fmt: skip
OWN_CLASSES = {"ScoreContext", "MergeContext", "Captured", "ImagePlan", "ReductionStats"}


def _docstring_ids(tree: ast.AST) -> set[int]:
    return {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }


def _names_in(path: Path) -> list[tuple[int, str]]:
    """(line, name) of every transformers name a module spells outside calls to the seam."""
    tree = ast.parse(path.read_text())
    docstrings = _docstring_ids(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            found += [(node.lineno, node.value)] if node.value in STRICT | KEYWORDS else []
        elif isinstance(node, ast.Call):
            func = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            for kw in node.keywords:
                if kw.arg in STRICT or (kw.arg in KEYWORDS and func not in OWN_CLASSES):
                    found.append((kw.value.lineno, f"{kw.arg}="))
        elif isinstance(node, ast.Attribute) and node.attr in STRICT:
            found.append((node.lineno, node.attr))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            module = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
            if module and module.split(".")[0] == "transformers":
                found.append((node.lineno, f"import {module}"))
    return found


def test_pipeline_names_no_transformers_internals():
    offenders = [
        f"{path.relative_to(ROOT)}:{line}: {name}"
        for path in sorted((ROOT / "tokred" / "pipeline").glob("*.py"))
        for line, name in _names_in(path)
    ]
    assert offenders == [], "ask tokred.adapters.hf instead:\n" + "\n".join(offenders)


def test_the_name_check_can_fail(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        '"""Docstrings may say past_key_values."""\n'
        "from transformers.cache_utils import DynamicCache\n"
        "def f(kwargs, out, m):\n"
        '    c = kwargs.get("past_key_values")\n'
        '    kwargs["attention_mask"] = m(cache=c)\n'
        "    ScoreContext(attention_mask=c)\n"  # tokred's own class: allowed
        "    return out.pooler_output\n"
    )
    names = [n for _, n in _names_in(bad)]
    assert names.count("past_key_values") == 1
    assert sorted(names) == sorted(
        ["import transformers.cache_utils", "past_key_values", "attention_mask", "cache=", "pooler_output"]
    )
