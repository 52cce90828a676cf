"""Every bad input of issue 16 item 1, run through the CLI entry point: exit 1, exactly one ``Error:`` line on
stderr, no traceback, and (unless the check needs the model) no model loaded.

Each case is ``(id, argv, expected substring, needs_model, environment)``. ``{name}`` in an argument is replaced by
the path of a prepared file (see ``files``). The runner calls ``tokred.cli.main(argv)`` in-process, as the console
script does, with ``load_runner`` replaced by a trap for the cases that must fail before any model is loaded.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

import tokred.compare
from tokred.cli import main

TINY = ["--model", "tiny"]
C = ["compare", *TINY, "--limit", "2", "--timing-repeats", "1"]

CASES: list[tuple[str, list[str], str, bool, dict[str, str]]] = [
    # ---- compare settings
    ("limit-0", [*C, "--limit", "0"], "--limit 0", False, {}),
    ("limit-negative", [*C, "--limit", "-3"], "--limit -3", False, {}),
    ("batch-size-0", [*C, "--batch-size", "0"], "--batch-size 0", False, {}),
    ("batch-size-huge", [*C, "--batch-size", "100000"], "batch-size <= 512", False, {}),
    ("max-new-tokens-1000", [*C, "--max-new-tokens", "1000"], "max-new-tokens <= 64", False, {}),
    ("max-new-tokens-0", [*C, "--max-new-tokens", "0"], "--max-new-tokens 0", False, {}),
    ("seed-negative", [*C, "--seed", "-1"], "--seed -1", False, {}),
    ("timing-repeats-0", [*C, "--timing-repeats", "0"], "--timing-repeats 0", False, {}),
    ("strategies-empty", [*C, "-s", ","], "at least one name", False, {}),
    ("strategy-typo", [*C, "-s", "fastV"], "Did you mean: fastv", False, {}),
    ("option-out-of-range", [*C, "-s", "fastv", "-o", "keep_ratio=2"], "keep_ratio", False, {}),
    ("option-unknown", [*C, "-s", "fastv", "-o", "kep_ratio=0.5"], "did you mean 'keep_ratio'", False, {}),
    ("option-malformed", [*C, "-s", "fastv", "-o", "keep_ratio"], "key=value", False, {}),
    ("option-no-key", [*C, "-s", "fastv", "-o", "=3"], "has no key", False, {}),
    ("option-which-strategy", [*C, "-s", "fastv,aim", "-o", "keep_ratio=0.5"], "say which strategy", False, {}),
    ("option-absent-strategy", [*C, "-s", "fastv", "-o", "aim.keep_ratio=0.5"], "not among", False, {}),
    ("option-bool-for-float", [*C, "-s", "fastv", "-o", "keep_ratio=true"], "bool", False, {}),
    ("match-flops-2", [*C, "-s", "fastv", "--match", "flops=2"], "(0, 1]", False, {}),
    ("match-unknown-kind", [*C, "-s", "fastv", "--match", "speed=3"], "flops=FRACTION", False, {}),
    ("match-not-a-number", [*C, "-s", "fastv", "--match", "tokens=many"], "not a number", False, {}),
    ("match-list-repeated", [*C, "-s", "fastv", "--match", "flops=0.25,0.25"], "given twice", False, {}),
    ("match-list-out-of-range", [*C, "-s", "fastv", "--match", "flops=0.25,1.5"], "flops=1.5", False, {}),
    ("match-list-empty-item", [*C, "-s", "fastv", "--match", "flops=0.25,"], "not a number", False, {}),
    ("match-variant-sets-knob", [*C, "-s", "fastv@keep_ratio=0.2", "--match", "flops=0.25"], "conflicts", False, {}),
    ("variant-typo", [*C, "-s", "fastV@keep_ratio=0.2"], "Did you mean: fastv", False, {}),
    ("variant-option-unknown", [*C, "-s", "fastv@kep_ratio=0.2"], "did you mean 'keep_ratio'", False, {}),
    ("variant-option-range", [*C, "-s", "fastv@keep_ratio=2"], "-s fastv@keep_ratio=2", False, {}),
    ("variant-malformed", [*C, "-s", "fastv@keep_ratio"], "key=value", False, {}),
    ("variant-twice", [*C, "-s", "fastv@layer=1", "-s", "fastv@layer=1"], "given twice", False, {}),
    ("variant-same-config", [*C, "-s", "fastv,fastv@keep_ratio=0.5"], "same configuration", False, {}),
    ("variant-and-option", [*C, "-s", "fastv@layer=1", "-o", "fastv.layer=2"], "set it once", False, {}),
    ("strategy-twice", [*C, "-s", "aim,fastv,aim"], "given twice", False, {}),
    ("batch-sizes-zero", [*C, "--batch-sizes", "1,0"], "--batch-sizes 1,0", False, {}),
    ("batch-sizes-text", [*C, "--batch-sizes", "1,many"], "integers", False, {}),
    ("progress-every-0", [*C, "--progress-every", "0"], "--progress-every 0", False, {}),
    ("option-not-a-number", [*C, "-s", "fastv", "-o", "keep_ratio=abc"], "valid number", False, {}),
    ("option-nan", [*C, "-s", "fastv", "-o", "keep_ratio=nan"], "keep_ratio", False, {}),
    ("option-inconsistent", [*C, "-s", "aim", "-o", "l1=3", "-o", "l2=2"], "l1 < l2", False, {}),
    # ---- datasets
    ("dataset-missing", [*C, "--dataset", "{missing}"], "no such file", False, {}),
    ("dataset-directory", [*C, "--dataset", "{folder}"], "is a folder", False, {}),
    ("dataset-empty-path", [*C, "--dataset", ""], "--dataset is empty", False, {}),
    ("split-valid", [*C, "--split", "valid"], "unknown split 'valid'", False, {}),
    ("split-in-name", [*C, "--dataset", "shapes:dev"], "unknown split 'dev'", False, {}),
    ("split-empty-in-name", [*C, "--dataset", "shapes:"], "unknown split ''", False, {}),
    ("dataset-not-an-image", [*C, "--dataset", "{not_image_jsonl}"], "not an image", False, {}),
    ("dataset-decompression-bomb", [*C, "--dataset", "{bomb}"], "decompression bomb", False, {}),
    ("dataset-latin1", [*C, "--dataset", "{latin1}"], "not UTF-8", False, {}),
    ("dataset-wrong-keys", [*C, "--dataset", "{wrong_keys}"], "unknown key(s): answer", False, {}),
    ("dataset-empty-answers", [*C, "--dataset", "{empty_answers}"], "non-empty list", False, {}),
    ("dataset-blank-answer", [*C, "--dataset", "{blank_answer}"], "empty answer", False, {}),
    ("dataset-colliding-ids", [*C, "--dataset", "{colliding_ids}"], "lines 1 and 2", False, {}),
    ("dataset-duplicate-ids", [*C, "--dataset", "{duplicate_ids}", "--limit", "5"], "appears on lines", False, {}),
    ("dataset-bool-id", [*C, "--dataset", "{bool_id}"], "'id' must be", False, {}),
    ("dataset-invalid-json", [*C, "--dataset", "{invalid_json}"], "line 1: invalid JSON", False, {}),
    ("dataset-empty-file", [*C, "--dataset", "{empty_jsonl}"], "has no samples", False, {}),
    ("dataset-missing-image", [*C, "--dataset", "{missing_image}"], "image file not found", False, {}),
    # ---- models
    ("model-missing-path", ["compare", "--model", "./no/such/model"], "no such folder", False, {}),
    ("model-empty-folder", ["compare", "--model", "{folder}"], "has no config.json", False, {}),
    ("model-text-only", ["compare", "--model", "{text_only}"], "not an image-text-to-text model", False, {}),
    ("model-bad-config", ["compare", "--model", "{bad_config_model}"], "not valid JSON", False, {}),
    ("model-a-file", ["compare", "--model", "{not_image}"], "is a file", False, {}),
    (
        "model-unknown-hub-offline",
        ["compare", "--model", "nobody/no-such-model"],
        "offline",
        False,
        {"HF_HUB_OFFLINE": "1"},
    ),
    ("model-case", ["compare", "--model", "Tiny"], "did you mean 'tiny'", False, {}),
    ("model-case-reference", ["compare", "--model", "Reference"], "did you mean 'reference'", False, {}),
    ("model-empty", ["compare", "--model", ""], "--model is empty", False, {}),
    # ---- output folders
    ("output-is-a-file", [*C, "--output", "{not_image}"], "is a file, not a folder", False, {}),
    ("output-under-a-file", [*C, "--output", "{not_image}/sub"], "cannot create the folder", False, {}),
    ("output-empty", [*C, "--output", ""], "--output is empty", False, {}),
    ("output-unwritable", [*C, "--output", "/proc/tokred-test-out"], "cannot create the folder", False, {}),
    ("output-read-only", [*C, "--output", "/sys"], "not writable", False, {}),
    # ---- flops
    ("flops-visual-negative", ["flops", "--visual", "-4"], "--visual -4", False, {}),
    ("flops-visual-0", ["flops", "--visual", "0"], "--visual 0", False, {}),
    ("flops-text-negative", ["flops", "--text", "-1"], "--text -1", False, {}),
    ("flops-images-0", ["flops", "--images", "0"], "--images 0", False, {}),
    ("flops-convention", ["flops", "--convention", "paper"], "llm-viewer, fastv", False, {}),
    ("flops-heads-divide", ["flops", "{heads_config}", "--visual", "16"], "does not divide", False, {}),
    ("flops-kv-heads-divide", ["flops", "{kv_config}", "--visual", "16"], "num_key_value_heads", False, {}),
    ("flops-malformed-config", ["flops", "{bad_config}", "--visual", "16"], "not valid JSON", False, {}),
    ("flops-empty-config", ["flops", "{empty_config}", "--visual", "16"], "is empty", False, {}),
    ("flops-config-missing-keys", ["flops", "{partial_config}", "--visual", "16"], "lacks", False, {}),
    ("flops-config-string-size", ["flops", "{string_config}", "--visual", "16"], "positive integer", False, {}),
    ("flops-config-list", ["flops", "{list_config}", "--visual", "16"], "not an object", False, {}),
    ("flops-folder-without-config", ["flops", "{folder}"], "has no config.json", False, {}),
    ("flops-unknown-name", ["flops", "llava-9b"], "Unknown model config", False, {}),
    ("flops-layer-beyond-depth", ["flops", "-s", "fastv", "-o", "layer=100"], "stack has 32 layers", False, {}),
    ("flops-no-visual-count", ["flops", "{heads_ok_config}"], "pass --visual", False, {}),
    # ---- bench
    ("bench-threads-0", ["bench", "--threads", "0"], "--threads 0", False, {}),
    ("bench-heads-divide", ["bench", "--heads", "3"], "does not divide --hidden", False, {}),
    ("bench-visual-not-square", ["bench", "--visual", "10"], "not a square", False, {}),
    ("bench-repeats-0", ["bench", "--repeats", "0"], "--repeats 0", False, {}),
    ("bench-warmup-negative", ["bench", "--warmup", "-1"], "--warmup -1", False, {}),
    ("bench-layers-0", ["bench", "--layers", "0"], "--layers 0", False, {}),
    ("bench-hidden-0", ["bench", "--hidden", "0"], "--hidden 0", False, {}),
    ("bench-unknown-strategy", ["bench", "-s", "fastvv"], "Did you mean", False, {}),
    # ---- silent nonsense
    ("schedule-beyond-depth", [*C, "-s", "aim-prune", "-o", "l1=40", "-o", "l2=50"], "reduces nothing", True, {}),
    ("flops-schedule-beyond-depth", ["flops", "-s", "aim-prune", "-o", "l1=40", "-o", "l2=50"], "layer 40", False, {}),
    ("match-tokens-inf", [*C, "-s", "fastv", "--match", "tokens=inf"], "finite", False, {}),
    ("match-tokens-nan", [*C, "-s", "fastv", "--match", "tokens=nan"], "finite", False, {}),
    ("match-flops-nan", [*C, "-s", "fastv", "--match", "flops=nan"], "finite", False, {}),
    (
        "match-overrides-knob",
        [*C, "-s", "fastv", "-o", "keep_ratio=0.3", "--match", "flops=0.5"],
        "conflicts",
        False,
        {},
    ),
    ("option-twice", [*C, "-s", "fastv", "-o", "keep_ratio=0.3", "-o", "fastv.keep_ratio=0.2"], "twice", False, {}),
    ("show-wrong-kind", ["show", "fastv", "--kind", "scheduler"], "is a strategy and a scorer, not a", False, {}),
    ("show-unknown", ["show", "fastvv"], "Did you mean: fastv", False, {}),
    ("show-unknown-kind", ["show", "fastv", "--kind", "thing"], "Unknown kind 'thing'", False, {}),
    ("list-unknown-kind", ["list", "thing"], "Unknown kind 'thing'", False, {}),
    # ---- environment switches
    ("env-debug-maybe", ["list"], "TOKRED_DEBUG='maybe'", False, {"TOKRED_DEBUG": "maybe"}),
    ("env-trace-on", ["list"], "TOKRED_TRACE_PLUGINS='on'", False, {"TOKRED_TRACE_PLUGINS": "on"}),
    ("env-autoload-2", ["list"], "TOKRED_DISABLE_PLUGIN_AUTOLOAD='2'", False, {"TOKRED_DISABLE_PLUGIN_AUTOLOAD": "2"}),
    ("env-progress-y", ["list"], "TOKRED_DISABLE_PROGRESS_BARS='y'", False, {"TOKRED_DISABLE_PROGRESS_BARS": "y"}),
    ("env-debug-0-is-off", [*C, "--limit", "0"], "--limit 0", False, {"TOKRED_DEBUG": "0"}),
    ("env-debug-no-is-off", [*C, "--seed", "-1"], "--seed -1", False, {"TOKRED_DEBUG": "no"}),
    (
        "env-disabled-plugin",
        [*C, "-s", "fastv"],
        "TOKRED_DISABLED_PLUGINS disables",
        False,
        {"TOKRED_DISABLED_PLUGINS": "tokred.strategies.fastv"},
    ),
]


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` pixels (a decompression bomb's calling card)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every file the cases refer to, by name."""
    root = tmp_path_factory.mktemp("bad-inputs")
    Image.new("RGB", (16, 16), "red").save(root / "red.png")
    (root / "notes.txt").write_text("not an image\n")
    (root / "bomb.png").write_bytes(_png_header(30000, 30000))
    good = {"image": "red.png", "question": "What colour?", "answers": ["red"]}

    def jsonl(name: str, *lines: object) -> Path:
        path = root / name
        path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
        return path

    out = {
        "missing": root / "missing.jsonl",
        "folder": root / "empty-folder",
        "not_image": root / "notes.txt",
        "bomb": jsonl("bomb.jsonl", {**good, "image": "bomb.png"}),
        "not_image_jsonl": jsonl("not-image.jsonl", {**good, "image": "notes.txt"}),
        "wrong_keys": jsonl("wrong-keys.jsonl", {"image": "red.png", "question": "Q?", "answer": "red"}),
        "empty_answers": jsonl("empty-answers.jsonl", {**good, "answers": []}),
        "blank_answer": jsonl("blank-answer.jsonl", {**good, "answers": [" "]}),
        "colliding_ids": jsonl("colliding.jsonl", {**good, "id": 1}, {**good, "id": "1"}),
        "duplicate_ids": jsonl("duplicate.jsonl", {**good, "id": "a"}, {**good, "id": "b"}, {**good, "id": "a"}),
        "bool_id": jsonl("bool-id.jsonl", {**good, "id": True}),
        "invalid_json": jsonl("invalid.jsonl", "{not json"),
        "empty_jsonl": jsonl("empty.jsonl"),
        "missing_image": jsonl("missing-image.jsonl", {**good, "image": "nope.png"}),
    }
    out["not_image"] = root / "notes.txt"
    out["folder"].mkdir()
    (root / "latin1.jsonl").write_bytes(
        json.dumps({**good, "question": "Quelle couleur ? é"}, ensure_ascii=False).encode("latin-1") + b"\n"
    )
    out["latin1"] = root / "latin1.jsonl"
    text_only = root / "text-only"
    text_only.mkdir()
    (text_only / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    out["text_only"] = text_only
    bad_model = root / "bad-model"
    bad_model.mkdir()
    (bad_model / "config.json").write_text("{")
    out["bad_config_model"] = bad_model
    decoder = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128}
    configs = {
        "heads_config": {**decoder, "num_attention_heads": 3},
        "kv_config": {**decoder, "num_key_value_heads": 3},
        "partial_config": {"hidden_size": 64},
        "string_config": {**decoder, "hidden_size": "64"},
        "list_config": [decoder],
        "heads_ok_config": decoder,
    }
    for name, cfg in configs.items():
        (root / f"{name}.json").write_text(json.dumps(cfg))
        out[name] = root / f"{name}.json"
    (root / "bad_config.json").write_text("{")
    (root / "empty_config.json").write_text("")
    out["bad_config"], out["empty_config"] = root / "bad_config.json", root / "empty_config.json"
    return out


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run the console script's ``main`` in-process; returns (exit status, stdout, stderr)."""
    capsys.readouterr()
    try:
        main(argv)
        code = 0
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def no_model_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokred.compare, "load_runner", _trap)


@pytest.mark.parametrize(("argv", "expected", "needs_model", "env"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_line(argv, expected, needs_model, env, files, capsys, monkeypatch, fresh_plugins):
    for key in ("TOKRED_DEBUG", "TOKRED_TRACE_PLUGINS", "TOKRED_DISABLE_PLUGIN_AUTOLOAD", "TOKRED_DISABLED_PLUGINS"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    if not needs_model:
        monkeypatch.setattr(tokred.compare, "load_runner", _trap)
    args = [a.format(**{k: str(v) for k, v in files.items()}) for a in argv]
    code, _, err = run_cli(args, capsys)
    lines = err.strip().splitlines()
    assert code == 1, (code, err)
    assert len(lines) == 1, err
    assert lines[0].startswith("Error: "), err
    assert "Traceback" not in err and "internal error" not in err, err
    assert expected in lines[0], (expected, lines[0])


def _trap(model: object) -> None:
    raise AssertionError(f"a model ({model}) was loaded before the bad input was refused")


def test_there_are_at_least_60_cases_covering_every_class():
    assert len(CASES) >= 60
    prefixes = {c[0].split("-")[0] for c in CASES}
    assert {"limit", "dataset", "model", "output", "flops", "bench", "env", "match", "show"} <= prefixes


def test_bom_prefixed_jsonl_is_accepted(files, tmp_path):
    from tokred.eval.datasets import load_dataset

    path = tmp_path / "bom.jsonl"
    red = files["not_image"].parent / "red.png"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"image": str(red), "question": "Q?", "answers": ["red"]}).encode())
    ds = load_dataset(path)
    assert len(ds) == 1 and not ds.errors


def test_debug_shows_the_traceback(capsys, monkeypatch, no_model_load):
    from tokred.errors import ConfigError

    monkeypatch.setenv("TOKRED_DEBUG", "1")
    with pytest.raises(ConfigError, match="--limit 0"):
        main([*C, "--limit", "0"])


@pytest.mark.parametrize(
    "argv",
    [[*C, "--limit", "abc"], ["compare", "--no-such-flag"], ["show"], ["flops", "--visual", "x"]],
    ids=["type", "unknown-flag", "missing-argument", "flops-type"],
)
def test_usage_errors_keep_exit_2(argv, capsys):
    code, _, err = run_cli(argv, capsys)
    assert code == 2, err
    assert "Usage:" in err and "Traceback" not in err
