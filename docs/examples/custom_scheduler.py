"""Write a scheduler: how many visual tokens each decoder layer processes."""

import tokred
from pydantic import Field
from tokred.testing import check_component


class HalvingScheduler(tokred.BaseScheduler):
    """Halve the visual tokens every ``every`` layers."""

    name = "halving"

    class Config(tokred.ComponentConfig):
        every: int = Field(4, ge=1, le=64, description="Layers between two halvings.")

    config: Config

    def _budgets(self, num_layers: int, num_tokens: int) -> list[int]:
        # budgets() calls this and checks the contract: one entry per layer,
        # non-increasing, within [0, num_tokens].
        every = self.config.every
        return [num_tokens >> (layer // every) for layer in range(num_layers)]


scheduler = HalvingScheduler(every=2)
print(scheduler.budgets(num_layers=8, num_tokens=576))
assert scheduler.budgets(8, 576) == [576, 576, 288, 288, 144, 144, 72, 72]

# Options are validated by the Config: unknown names and bad values raise ConfigError.
try:
    HalvingScheduler(every=0)
except tokred.ConfigError as err:
    print(err)  # invalid options for 'halving': option 'every': Input should be ...

# Pair it with a registered scorer into a strategy, without registering anything.
strategy = tokred.compose(
    scorer=tokred.create_component("scorer", "fastv"),
    scheduler=scheduler,
    label="fastv-halving",
)
print(strategy)

# The conformance suite that every built-in passes (name, docstring, Config, budgets).
check_component(scheduler)
