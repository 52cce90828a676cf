"""Reproduce AIM's published prefill FLOPs: 99.63 TB -> 14.76 TB.

AIM (arXiv:2412.03248) reports analytical LLM prefill FLOPs computed with LLM-Viewer:
2 FLOPs per multiply-accumulate, SwiGLU MLP, grouped-query attention, full attention
matrix. tokred's "llm-viewer" convention is that accounting. The setting:
LLaVA-OneVision-7B (Qwen2-7B decoder, 28 layers), 32 video frames of 196 tokens each
(6272 visual tokens) and 100 text tokens.
"""

import tokred
from tokred.budget import predict_tokens_per_layer
from tokred.flops import (
    aim_linear_schedule,
    get_known_config,
    prefill_flops,
    tokens_per_layer_from_budgets,
)

TB = 1e12  # AIM's "TB" is 10^12 FLOPs
config = get_known_config("llava-onevision-7b")  # d=3584, m=18944, 28 heads, 4 KV heads
LAYERS, TEXT, FRAMES, PER_FRAME = 28, 100, 32, 196

# 1. By hand: the tokens each layer processes, then the FLOPs.
#    (label, visual tokens entering the LLM, (l1, l2) pruning or None, published TB)
rows = [
    ("no reduction", FRAMES * PER_FRAME, None, 99.63),
    ("merge to 50 %", FRAMES * PER_FRAME // 2, None, 46.48),
    ("merge to 25 %", FRAMES * PER_FRAME // 4, None, 22.90),
    ("AIM: merge to 25 % + prune (14, 22)", FRAMES * PER_FRAME // 4, (14, 22), 14.76),
]
print(f"{'setting':40} {'visual':>7} {'tokred TB':>10} {'AIM paper TB':>13}")
for label, visual, schedule, published in rows:
    l1, l2 = schedule or (LAYERS, LAYERS + 1)  # (28, 29) keeps every token everywhere
    budgets = aim_linear_schedule(visual, LAYERS, l1, l2)
    tokens = tokens_per_layer_from_budgets(TEXT, budgets)
    computed = prefill_flops(config, tokens, convention="llm-viewer") / TB
    print(f"{label:40} {visual:>7} {computed:>10.2f} {published:>13.2f}")
    assert round(computed, 2) == published, (label, computed, published)

# 2. From the strategy itself: tokred's `aim` with the paper's video defaults (merge
#    each frame to 25 %, prune on the (14, 22) schedule of a 28-layer decoder) predicts
#    the same tokens per layer, hence the same FLOPs.
aim = tokred.create_strategy("aim", variant="video")
tokens = predict_tokens_per_layer(
    aim, num_layers=LAYERS, text_tokens=TEXT, visual_tokens=PER_FRAME, images=FRAMES
)
full = prefill_flops(config, [TEXT + FRAMES * PER_FRAME] * LAYERS)
reduced = prefill_flops(config, tokens)
print(f"aim strategy: {reduced / TB:.2f} TB, {full / reduced:.2f}x fewer FLOPs")
assert round(reduced / TB, 2) == 14.76

# 3. The FastV paper's convention (one FLOP per MAC, 4nd^2 + 2n^2d + 2ndm): absolute
#    numbers are about half, and the ratio differs because the MLP share is smaller.
unreduced = [TEXT + FRAMES * PER_FRAME] * LAYERS
full_fastv = prefill_flops(config, unreduced, convention="fastv")
reduced_fastv = prefill_flops(config, tokens, convention="fastv")
print(f"fastv convention: {full_fastv / TB:.2f} TB -> {reduced_fastv / TB:.2f} TB")
