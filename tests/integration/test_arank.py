"""``tokred analyze arank`` against ranks computed independently from eager attention weights."""

from __future__ import annotations

import json

import pytest
import torch

from tokred.arank import attention_ranks
from tokred.testing.models import tiny_model

pytestmark = pytest.mark.integration


def _ranks_from_eager_weights(model, inputs) -> list[list[int]]:
    """Per layer and head: rank of the eager attention weights (``output_attentions``) with the diagonal zeroed."""
    model.set_attn_implementation({"text_config": "eager"})
    try:
        with torch.no_grad():
            out = model(**inputs, output_attentions=True, use_cache=False)
    finally:
        model.set_attn_implementation({"text_config": "sdpa"})
    ranks = []
    for att in out.attentions:  # (1, H, N, N) per decoder layer
        m = att[0].float().clone()
        m[:, torch.arange(m.shape[-1]), torch.arange(m.shape[-1])] = 0.0
        ranks.append([int(torch.linalg.matrix_rank(h)) for h in m])
    return ranks


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_arank_equals_ranks_of_eager_attention_weights(family):
    model, make = tiny_model(family)
    with torch.no_grad():  # sharper attention in deeper layers, so that ranks fall below N - 1 and differ by layer
        for i, layer in enumerate(model.get_decoder().layers):
            layer.self_attn.q_proj.weight.mul_(1.0 + 30.0 * i)
    samples = [make(batch=1, seed=s) for s in range(3)]
    result = attention_ranks(model, samples)
    want = [_ranks_from_eager_weights(model, s) for s in samples]
    assert len(set(result.per_layer)) > 1 and min(result.per_layer) < sum(result.tokens) / len(result.tokens) - 1
    layers = len(want[0])
    assert len(result.per_layer) == layers == len(result.per_head)
    for i in range(layers):
        heads = [sum(w[i][h] for w in want) / len(want) for h in range(len(want[0][i]))]
        assert result.per_head[i] == pytest.approx(heads)
        assert result.per_layer[i] == pytest.approx(sum(heads) / len(heads))
    assert result.tokens == [int(s["input_ids"].shape[1]) for s in samples]
    assert model.config.get_text_config()._attn_implementation == "sdpa"  # restored


def test_rank_op_on_known_maps():
    """Uniform causal rows are strictly lower triangular once the diagonal is zeroed (rank N - 1); an attention sink
    (every row on token 0) has rank 1; keeping the diagonal makes the uniform map full rank."""
    from tokred.ops.attention import attention_map_rank

    n = 12
    uniform = torch.tril(torch.ones(n, n)) / torch.arange(1, n + 1.0)[:, None]
    sink = torch.zeros(n, n)
    sink[:, 0] = 1.0
    probs = torch.stack([uniform, sink])[None]  # (1, 2, N, N)
    assert attention_map_rank(probs).tolist() == [[n - 1, 1]]
    assert attention_map_rank(probs, zero_diagonal=False).tolist() == [[n, 1]]


def test_cli_prints_table_and_json(tmp_path):
    from typer.testing import CliRunner

    from tokred.cli import app

    runner = CliRunner()
    out = runner.invoke(app, ["analyze", "arank", "--model", "tiny", "--samples", "2", "--format", "json",
                              "--plot", str(tmp_path / "a.png"), "--output", str(tmp_path / "a.json")])  # fmt: skip
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert [r["layer"] for r in data["rows"]] == list(range(len(data["per_layer"])))
    assert (tmp_path / "a.png").stat().st_size > 0
    assert json.loads((tmp_path / "a.json").read_text())["per_layer"] == data["per_layer"]
    table = runner.invoke(app, ["analyze", "arank", "--model", "tiny", "--samples", "1"])
    assert table.exit_code == 0 and "ARank" in table.stdout
