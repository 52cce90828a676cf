"""Getting started: find, configure and inspect strategies (no model needed)."""

import tokred

# Every registered strategy: the built-ins plus those of installed plugins.
print(tokred.list_strategies())

# Build one by name; options are validated by the strategy's Config.
fastv = tokred.create_strategy("fastv", keep_ratio=0.25)
print(fastv.components)  # {'merger': None, 'scorer': ..., 'scheduler': ...}

# Visual tokens each decoder layer processes (32 layers, 576 visual tokens: LLaVA-1.5).
budgets = fastv.scheduler.budgets(num_layers=32, num_tokens=576)
print(budgets[:4])  # all tokens in layers 0 and 1, a quarter from layer 2 on
assert budgets[:4] == [576, 576, 144, 144]

# Unknown names and options fail loudly, with suggestions.
try:
    tokred.create_strategy("fastv", keep_ration=0.25)
except tokred.ConfigError as err:
    print(err)  # ... unknown option 'keep_ration'; did you mean 'keep_ratio'? ...

# Compose registered components into an ad-hoc strategy.
custom = tokred.compose(
    scorer=tokred.create_component("scorer", "random", seed=1),
    scheduler=tokred.create_component("scheduler", "pyramid", ratio=0.5),
    label="random-pyramid",
)
budgets = custom.scheduler.budgets(num_layers=8, num_tokens=576)
print(budgets)  # [576, 576, 288, 288, 144, 144, 72, 72]
assert budgets == [576, 576, 288, 288, 144, 144, 72, 72]
