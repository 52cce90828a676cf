"""Write a scheduler: how many visual tokens each decoder layer processes, as a validated, composable component."""

from pydantic import Field

import tokred
from tokred.testing import check_component


class HalvingScheduler(tokred.BaseScheduler):
    """Halve the visual tokens every ``every`` layers, starting after layer ``every - 1``."""

    name = "halving"

    class Config(tokred.ComponentConfig):
        every: int = Field(4, ge=1, le=64, description="Layers between two halvings.")

    config: Config

    def _budgets(self, num_layers: int, num_tokens: int) -> list[int]:
        # budgets() calls this and checks the contract: one entry per layer, non-increasing, within [0, num_tokens].
        return [num_tokens >> (layer // self.config.every) for layer in range(num_layers)]


scheduler = HalvingScheduler(every=2)
print(scheduler.budgets(num_layers=8, num_tokens=576))  # [576, 576, 288, 288, 144, 144, 72, 72]
assert scheduler.budgets(8, 576) == [576, 576, 288, 288, 144, 144, 72, 72]

# Options are validated by the Config: unknown names and out-of-range values raise ConfigError.
try:
    HalvingScheduler(every=0)
except tokred.ConfigError as err:
    print(err)  # invalid options for 'halving': option 'every': Input should be greater than or equal to 1 ...

# Pair it with a registered scorer into a strategy, without registering anything.
strategy = tokred.compose(scorer=tokred.create_component("scorer", "fastv"), scheduler=scheduler, label="fastv-halving")
print(strategy)

# The conformance suite that every built-in passes (name, docstring, Config, budgets for many depths).
check_component(scheduler)
