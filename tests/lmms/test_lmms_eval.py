"""tokred as an lmms-eval backend, end to end and offline: a shapes split exported as a local parquet task, run
through lmms-eval's ``simple_evaluate`` on a tiny model saved with a processor and on the reference model.

Needs the ``tokred[lmms]`` extra plus ``lmms-eval==0.7.3`` (``make setup`` installs both). Without lmms-eval the
module is skipped locally; under CI (``CI=true``) a missing lmms-eval is a failure, never a skip.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

if importlib.util.find_spec("lmms_eval") is None:
    if os.environ.get("CI", "").strip().lower() in ("1", "true", "yes"):
        raise ImportError("CI runs the lmms-eval tests: lmms-eval is missing from this venv (make setup installs it)")
    pytest.skip(
        "lmms-eval is not installed (pip install -e '.[lmms]' && pip install --no-deps lmms-eval==0.7.3)",
        allow_module_level=True,
    )

from tokred.errors import ConfigError  # noqa: E402

pytestmark = pytest.mark.integration
LIMIT = 4


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    from tokred.integrations.lmms_eval.task import export_shapes_task

    folder = tmp_path_factory.mktemp("task")
    export_shapes_task(folder, split="test", limit=6, name="tokred_shapes")
    return folder


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from tokred.testing.saved import save_tiny_llava

    return save_tiny_llava(tmp_path_factory.mktemp("tiny"))


_MANAGERS: dict = {}


def evaluate(task_dir, model_args, task="tokred_shapes", **kwargs):
    """``simple_evaluate`` on the exported task (the task index is built once: it scans every lmms-eval task)."""
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    manager = _MANAGERS.get(task_dir) or _MANAGERS.setdefault(
        task_dir, TaskManager("WARNING", include_path=str(task_dir))
    )
    return simple_evaluate(
        model="tokred",
        model_args=model_args,
        tasks=[task],
        task_manager=manager,
        limit=LIMIT,
        log_samples=True,
        bootstrap_iters=0,
        verbosity="WARNING",
        **kwargs,
    )


def _stats(sample):
    [counts] = sample["token_counts"][:1]
    return counts["tokred"]


def test_the_entry_point_registers_the_backend():
    from lmms_eval.models import get_model, get_model_manifest

    manifest = get_model_manifest("tokred")
    assert manifest.chat_class_path.endswith("TokredChat") and manifest.simple_class_path.endswith("TokredSimple")
    assert get_model("tokred").is_simple is False and get_model("tokred", force_simple=True).is_simple is True


def test_tiny_saved_model_generates_in_batches_with_reduction_stats(task_dir, tiny_dir):
    out = evaluate(task_dir, f"pretrained={tiny_dir},strategy=fastv,layer=1,keep_ratio=0.25,batch_size=3")
    assert out["results"]["tokred_shapes"]["exact_match,none"] in {i / LIMIT for i in range(LIMIT + 1)}
    samples = out["samples"]["tokred_shapes"]
    assert sorted(s["doc_id"] for s in samples) == list(range(LIMIT))
    for s in samples:
        st = _stats(s)
        assert st["strategy"] == "fastv" and st["visual_tokens_in"] == 16 and st["visual_tokens_out"] == 4
        assert st["tokens_per_layer"][0] == st["text_tokens"] + 16
        assert st["tokens_per_layer"][1:] == [st["text_tokens"] + 4] * 3
        assert 0 < st["relative_prefill_flops"] < 1
        assert isinstance(s["filtered_resps"][0], str)
    tp = out["throughput"]
    assert tp["avg_tokred_requests"] == LIMIT and tp["avg_tokred_visual_tokens_out"] == 4
    mean = sum(_stats(s)["relative_prefill_flops"] for s in samples) / LIMIT
    assert tp["avg_tokred_relative_prefill_flops"] == pytest.approx(mean)


def test_batched_answers_equal_single_answers(task_dir, tiny_dir):
    args = f"pretrained={tiny_dir},strategy=fastv,layer=1,keep_ratio=0.25,max_new_tokens=6"
    batched = evaluate(task_dir, args + ",batch_size=4")["samples"]["tokred_shapes"]
    single = evaluate(task_dir, args + ",batch_size=1")["samples"]["tokred_shapes"]
    assert [s["filtered_resps"] for s in batched] == [s["filtered_resps"] for s in single]
    assert [_stats(s) for s in batched] == [_stats(s) for s in single]


def test_loglikelihood_multiple_choice_with_force_simple(task_dir, tiny_dir):
    out = evaluate(
        task_dir, f"pretrained={tiny_dir},strategy=fastv,layer=1,batch_size=4", "tokred_shapes_mc", force_simple=True
    )
    assert 0.0 <= out["results"]["tokred_shapes_mc"]["acc,none"] <= 1.0
    for s in out["samples"]["tokred_shapes_mc"]:
        scores = s["filtered_resps"]
        assert len(scores) >= 1 and all(isinstance(x[0], float) and x[0] > 0 for x in scores)  # mean NLL, per choice
        assert s["acc"] == float(min(range(len(scores)), key=lambda i: scores[i][0]) == int(s["target"]))
        assert all(c["tokred"]["visual_tokens_out"] < c["tokred"]["visual_tokens_in"] for c in s["token_counts"])


def test_unreduced_loglikelihood_equals_a_manual_forward(task_dir, tiny_dir):
    """strategy=none is the stock model: its scores equal a hand-computed forward pass on the same prompt."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from tokred.integrations.lmms_eval import _core as core
    from tokred.integrations.lmms_eval.task import doc_to_text, doc_to_visual

    out = evaluate(task_dir, f"pretrained={tiny_dir},strategy=none", "tokred_shapes_mc", force_simple=True)
    sample = out["samples"]["tokred_shapes_mc"][0]
    model = AutoModelForImageTextToText.from_pretrained(tiny_dir, attn_implementation="sdpa").eval()
    processor = AutoProcessor.from_pretrained(tiny_dir)
    import datasets

    doc = datasets.load_dataset("parquet", data_files={"test": str(next(task_dir.glob("*.parquet")))})["test"][0]
    prompt = core.render(processor, core.user_turn(doc_to_text(doc), 1))
    for choice, (score, _greedy) in zip(doc["choices"], sample["filtered_resps"]):
        cont = torch.tensor(processor.tokenizer(choice, add_special_tokens=False)["input_ids"])
        enc = processor(text=[prompt], images=doc_to_visual(doc), return_tensors="pt")
        ids = torch.cat([enc["input_ids"], cont[None]], 1)
        with torch.inference_mode():
            logits = model(input_ids=ids, pixel_values=enc["pixel_values"]).logits
        logp = torch.log_softmax(logits[0, -cont.shape[0] - 1 : -1], -1)
        assert score == pytest.approx(float(-logp.gather(-1, cont[:, None]).mean()), rel=1e-5)


@pytest.mark.slow
def test_reference_model_fastv_and_report(task_dir, tmp_path):
    from tokred.report import load_runs, summarise_runs

    outs = {}
    for strategy in ("none", "fastv"):
        outs[strategy] = evaluate(task_dir, f"pretrained=tokred:reference,strategy={strategy},batch_size=2")
        folder = tmp_path / strategy / "tokred__reference"
        folder.mkdir(parents=True)
        results = {k: v for k, v in outs[strategy].items() if k != "samples"}
        (folder / "x_results.json").write_text(json.dumps(results, default=str))
        lines = [
            json.dumps({k: v for k, v in s.items() if k != "doc"}, default=str)
            for s in outs[strategy]["samples"]["tokred_shapes"]
        ]
        (folder / "x_samples_tokred_shapes.jsonl").write_text("\n".join(lines) + "\n")
    none, fastv = (outs[k]["samples"]["tokred_shapes"] for k in ("none", "fastv"))
    assert all(_stats(s)["visual_tokens_in"] == 256 and _stats(s)["relative_prefill_flops"] == 1.0 for s in none)
    assert all(_stats(s)["visual_tokens_out"] == 128 for s in fastv)  # FastV's default keeps half after layer 2
    assert outs["none"]["results"]["tokred_shapes"]["exact_match,none"] >= 0.5  # the trained reference answers
    rows = summarise_runs(load_runs([tmp_path / "none", tmp_path / "fastv"]))["tokred_shapes"]
    assert [r["strategy"] for r in rows] == ["none", "fastv"] and rows[1]["n"] == LIMIT
    assert rows[1]["relative_flops"] < 0.7


def test_a_bad_option_fails_loudly_through_the_python_api(task_dir):
    with pytest.raises(ConfigError, match="did you mean 'keep_ratio'"):
        evaluate(task_dir, "pretrained=tokred:reference,strategy=fastv,keep_ratoi=0.25")


def test_a_bad_option_makes_the_lmms_eval_command_exit_nonzero(task_dir):
    """lmms-eval's CLI catches every Exception and exits 0; the backend turns a bad argument into exit status 2."""
    cmd = [sys.executable, "-m", "lmms_eval", "--model", "tokred", "--model_args",
           "pretrained=tokred:reference,strategy=fastv,keep_ratio=7", "--tasks", "tokred_shapes",
           "--include_path", str(task_dir), "--limit", "1"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "tokred: error:" in proc.stderr and "keep_ratio" in proc.stderr


def _request(doc_id, context, n_images):
    from lmms_eval.api.instance import Instance

    def visuals(doc):
        return [doc["image"]] * n_images

    gen = {"max_new_tokens": 5, "temperature": 0, "do_sample": False, "until": ["\n\n"]}
    args = (context, gen, visuals, doc_id, "t", "test")
    return Instance("generate_until", args, idx=0, metadata={"task": "t", "doc_id": doc_id, "repeats": 1})


def test_multi_image_requests_batch_like_singles(tiny_dir):
    """Requests with one, two and one images in one chunk (split into a batch per visual-token count, as in-LLM
    pruning needs equal counts) give the answers and statistics of the same requests one at a time."""
    from PIL import Image

    from tokred.integrations.lmms_eval._model import TokredSimple

    docs = [{"image": Image.new("RGB", (60, 60), c)} for c in ("red", "green", "blue")]
    requests = [_request(i, f"Describe image set {i}{'!' * i}", n) for i, n in enumerate((1, 2, 1))]
    results = {}
    for size in (3, 1):
        lm = TokredSimple(pretrained=str(tiny_dir), strategy="fastv", layer=1, keep_ratio=0.5, batch_size=size)
        lm.task_dict = {"t": {"test": docs}}
        results[size] = lm.generate_until(requests)
    assert [r.text for r in results[3]] == [r.text for r in results[1]]
    stats = [r.token_counts.tokred for r in results[3]]
    assert [s["visual_tokens_in"] for s in stats] == [16, 32, 16]
    assert [s["visual_tokens_out"] for s in stats] == [8, 16, 8]
    assert stats == [r.token_counts.tokred for r in results[1]]


@pytest.mark.slow
def test_two_accelerate_processes_give_the_answers_of_one(task_dir, tiny_dir, tmp_path):
    """``accelerate launch`` with two CPU processes (gloo): lmms-eval shards the requests by the backend's rank; the
    merged sample log equals a single-process run, and the logged means cover both ranks."""
    args = f"pretrained={tiny_dir},strategy=fastv,layer=1,keep_ratio=0.25,max_new_tokens=6,batch_size=2"
    single = {s["doc_id"]: s for s in evaluate(task_dir, args)["samples"]["tokred_shapes"]}
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "lmms_eval", "--model", "tokred",
           "--model_args", args, "--tasks", "tokred_shapes", "--include_path", str(task_dir), "--limit", str(LIMIT),
           "--log_samples", "--output_path", str(tmp_path), "--verbosity", "DEBUG"]  # fmt: skip
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [log] = tmp_path.rglob("*_samples_tokred_shapes.jsonl")
    dp = {s["doc_id"]: s for s in map(json.loads, log.read_text().splitlines())}
    assert sorted(dp) == sorted(single) == list(range(LIMIT))
    # the written log flattens a one-element filtered_resps list (lmms-eval's EvaluationTracker)
    assert [dp[i]["filtered_resps"] for i in dp] == [single[i]["filtered_resps"][0] for i in dp]
    assert [dp[i]["token_counts"] for i in dp] == [single[i]["token_counts"] for i in dp]
    [results] = tmp_path.rglob("*_results.json")
    assert json.loads(results.read_text())["throughput"]["avg_tokred_requests"] == LIMIT  # both ranks gathered
