"""The three component roles (merger, scorer, scheduler) and their composition, the strategy.

A *merger* turns V visual token features into fewer and says where each output came from; a *scorer* gives
every token an importance (higher = keep) from what a stage makes available; a *scheduler* says how many
reducible tokens each layer of a stack processes. A *strategy* is a named, configured composition of the three,
and is what users name on the command line.

Authors subclass the ``Base*`` classes; the ``Merger``/``Scorer``/``Scheduler`` protocols describe the contract for
type checkers and the docs.

Example:
    >>> import tokred
    >>> s = tokred.create_strategy("fastv", keep_ratio=0.25)
    >>> s.scheduler.budgets(num_layers=4, num_tokens=8)
    [8, 8, 2, 2]
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, runtime_checkable

from tokred._config import ComponentConfig
from tokred.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch

Kind = Literal["merger", "scorer", "scheduler", "router", "strategy"]
MergeStage = Literal["vision", "pre_llm"]
QueryRows = Literal["none", "last", "text", "all"]
TowerInput = Literal["cls_attention", "keys", "features"]


class BaseComponent:
    """Common base of every component: a unique ``name``, a nested ``Config`` and a cited ``paper``.

    Args:
        config: A ready ``Config`` instance; mutually exclusive with keyword options.
        **options: Options validated by the class's ``Config`` (unknown names and out-of-range values raise
            [`ConfigError`][tokred.ConfigError]).
    """

    kind: ClassVar[Kind]
    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""

    class Config(ComponentConfig):
        """No options."""

    def __init__(self, config: ComponentConfig | None = None, **options: Any) -> None:
        if config is not None and options:
            raise ConfigError(f"{type(self).__name__}: pass either a Config instance or keyword options, not both")
        if config is not None and not isinstance(config, self.Config):
            raise ConfigError(
                f"{type(self).__name__} expects a {self.Config.__qualname__}, got {type(config).__qualname__}"
            )
        self.config = config if config is not None else make_config(self.Config, options, owner=self.name)

    @classmethod
    def summary(cls) -> str:
        """First paragraph of the class docstring, on one line."""
        doc = inspect.getdoc(cls) or ""
        return " ".join(doc.split("\n\n")[0].split())

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self.config.model_dump().items())
        return f"{type(self).__name__}({options})"


def make_config(config_cls: type[ComponentConfig], options: dict[str, Any], *, owner: str) -> ComponentConfig:
    """Validate ``options`` against ``config_cls``, turning pydantic errors into one readable ``ConfigError``."""
    from pydantic import ValidationError

    try:
        return config_cls(**options)
    except ValidationError as err:
        problems = []
        valid = ", ".join(config_cls.model_fields) or "(none)"
        for e in err.errors():
            loc = ".".join(str(p) for p in e["loc"]) or "<config>"
            if e["type"] == "extra_forbidden":
                hint = _did_you_mean(loc, list(config_cls.model_fields))
                problems.append(f"unknown option '{loc}'{hint} (valid options: {valid})")
            else:
                problems.append(f"option '{loc}': {e['msg']} (got {e.get('input')!r})")
        raise ConfigError(f"invalid options for '{owner}': " + "; ".join(problems)) from None


def _did_you_mean(name: str, choices: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else ""


# --------------------------------------------------------------------------------------------------- mergers


@dataclass
class MergeContext:
    """What a merger may use besides the features.

    Attributes:
        target: Number of tokens the merger must output, set by the pipeline when a schedule drives the merge
            (vision-tower stage); ``None`` lets the merger use its own configured amount.
        metric: Similarity metric, shape (B, N, C'); e.g. attention keys averaged over heads. ``None``: use x.
        size: Number of original patches each token stands for, shape (B, N); ``None`` means all ones.
        protected: Tokens that must pass through untouched (e.g. a class token), shape (B, N) bool.
        grid: (rows, cols) of the visual token grid when the tokens form one, row-major.
        layer: Index of the layer the merge runs in (vision-tower stage), else ``None``.
        num_layers: Depth of the stack the merge runs in, else ``None``.
        text_embedding: For each row, the mean LLM input embedding of the non-visual, non-padding prompt tokens of
            the sample the image belongs to, shape (B, C); filled by the pre-LLM stage for mergers that set
            ``uses_text``, else ``None``.
        text_tokens: For each row, the LLM input embeddings of those prompt tokens themselves, in prompt order, shape
            (B, T, C); filled with ``text_embedding`` (TensorRT-Edge-LLM's DART picks text pivots among them).
        tower: The vision tower's attention for these images (see [`TowerContext`][tokred.TowerContext]); filled by
            the pre-LLM stage for mergers that declare ``tower_inputs``, else ``None``.
        frames: For a ``temporal`` merger, the number of frames ``T`` of the clip in ``x`` (1, T * n_frame, C),
            frame-major; ``grid`` is then one frame's grid. ``None`` for a single image or frame.
    """

    target: int | None = None
    metric: torch.Tensor | None = None
    size: torch.Tensor | None = None
    protected: torch.Tensor | None = None
    grid: tuple[int, int] | None = None
    layer: int | None = None
    num_layers: int | None = None
    text_embedding: torch.Tensor | None = None
    text_tokens: torch.Tensor | None = None
    tower: TowerContext | None = None
    frames: int | None = None


@dataclass
class TowerContext:
    """The vision tower's internals for the patches a pre-LLM merger reduces (mergers that set ``tower_inputs``).

    Token ``0`` of the tower is its class token ([CLS]); tokens ``1..n`` are the ``n`` patches, in the order of the
    merger's input rows (``x[:, j]`` is tower token ``j + 1``), so a patch's column is its row plus one. Captured by
    the pre-LLM stage during the stock image-feature call, from forward hooks on the tower's query and key
    projections (the model keeps its own attention kernel; ``output_attentions`` is never asked for), only for the
    fields and layers the merger declares. "The feature layer" is the tower layer whose output the projector reads
    (LLaVA's ``vision_feature_layer = -2``: the second-to-last layer; with several feature layers the deepest one).

    Attributes:
        layers: 0-based tower layers of the rows in ``cls_attention``, ascending.
        feature_layer: 0-based index of the feature layer.
        num_layers: Tower depth.
        cls_attention: Softmax attention of the class token's query over all tower tokens, per layer of ``layers``
            and per head, shape (B, L_c, H, T) float32 (T = n + 1); ``None`` unless ``"cls_attention"`` is declared.
        keys: The feature layer's keys (its key projection, bias included, of the layer's normed input), per head,
            shape (B, H, T, D); ``None`` unless ``"keys"`` is declared.
        features: The pre-projector features of all tower tokens, shape (B, T, C_v): the hidden states the projector
            reads (concatenated over the feature layers), class token included; ``None`` unless ``"features"`` is
            declared.
        project: The model's projector, mapping pre-projector features (B, M, C_v) to LLM-input features (B, M, C);
            present with ``features``.
    """

    layers: tuple[int, ...]
    feature_layer: int
    num_layers: int
    cls_attention: torch.Tensor | None = None
    keys: torch.Tensor | None = None
    features: torch.Tensor | None = None
    project: Callable[[torch.Tensor], torch.Tensor] | None = None

    def cls_rows(self, layer: int, *, heads: Literal["mean", "sum", "each"] = "mean") -> torch.Tensor:
        """The class token's attention to the patches at one tower layer.

        Args:
            layer: A 0-based tower layer of ``layers``.
            heads: ``"mean"`` (head-mean, shape (B, n)), ``"sum"`` (summed over heads, (B, n)) or ``"each"``
                (per head, (B, H, n)).

        Returns:
            Attention of the class token's query to each patch, float32.
        """
        if self.cls_attention is None or layer not in self.layers:
            raise KeyError(f"no class-token attention captured for tower layer {layer} (captured: {self.layers})")
        rows = self.cls_attention[:, self.layers.index(layer), :, 1:]  # (B, H, n)
        if heads == "each":
            return rows
        return rows.mean(1) if heads == "mean" else rows.sum(1)

    def row(self, i: int) -> TowerContext:
        """The context of batch row ``i`` alone (batch size 1)."""

        def pick(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[i : i + 1]

        return TowerContext(
            self.layers, self.feature_layer, self.num_layers,
            pick(self.cls_attention), pick(self.keys), pick(self.features), self.project,
        )  # fmt: skip


@dataclass
class MergeResult:
    """Output of a merger.

    Attributes:
        x: Reduced tokens, shape (B, M, C).
        source: Provenance: for each input token, the output index it went into or -1 if dropped, shape (B, N).
        size: Patches each output stands for, shape (B, M), when the merger tracks sizes, else ``None``.
        grid: Grid of the outputs when they still form one (e.g. after pooling), else ``None``.
        class_slot: Index of the output that holds the vision tower's class token (VisionZip keeps it), which no
            input token went into, else ``None``.
    """

    x: torch.Tensor
    source: torch.Tensor
    size: torch.Tensor | None = None
    grid: tuple[int, int] | None = None
    class_slot: int | None = None


@runtime_checkable
class Merger(Protocol):
    """Turns V visual token features into fewer; see [`BaseMerger`][tokred.BaseMerger]."""

    name: ClassVar[str]
    stage: ClassVar[MergeStage]

    def merge(self, x: torch.Tensor, ctx: MergeContext) -> MergeResult:
        """Reduce ``x`` of shape (B, N, C)."""
        ...


class BaseMerger(BaseComponent):
    """Base class for mergers: subclass it, set ``name``, ``stage`` and ``Config``, implement ``merge``.

    ``stage`` says where the merger acts: ``"pre_llm"`` on the projected features of each image before they enter
    the language model, or ``"vision"`` inside the vision tower's layers (then ``layer_budgets`` drives how many
    tokens each tower layer keeps). ``uses_text = True`` asks the pre-LLM stage for the prompt's mean text embedding
    (``MergeContext.text_embedding``). ``tower_inputs`` names what a pre-LLM merger reads from the vision tower
    (``"cls_attention"``, ``"keys"``, ``"features"``; see [`TowerContext`][tokred.TowerContext]): the pre-LLM stage
    then captures exactly that (class-token rows at the layers ``tower_layers`` returns) and passes it as
    ``MergeContext.tower``; an empty set (the default) captures nothing and costs nothing.
    """

    kind: ClassVar[Kind] = "merger"
    stage: ClassVar[MergeStage] = "pre_llm"
    uses_text: ClassVar[bool] = False
    #: ``True``: the pre-LLM stage hands the merger a whole clip (every frame of a video, or a sample's images taken
    #: as frames) in one call, ``MergeContext.frames`` set; ``False`` (default): each frame and image on its own.
    temporal: ClassVar[bool] = False
    tower_inputs: ClassVar[frozenset[TowerInput]] = frozenset()

    def tower_layers(self, num_layers: int, feature_layer: int) -> list[int]:
        """0-based tower layers whose class-token attention the merger reads (default: the feature layer only).

        Args:
            num_layers: Tower depth.
            feature_layer: 0-based tower layer whose output the projector reads.
        """
        return [feature_layer]

    def merge(self, x: torch.Tensor, ctx: MergeContext) -> MergeResult:
        """Reduce tokens.

        Args:
            x: Token features, shape (B, N, C). All rows hold the same kind of input (e.g. frames of one video).
            ctx: Metric, sizes, protected tokens, grid and target count; see [`MergeContext`][tokred.MergeContext].

        Returns:
            The reduced tokens, shape (B, M, C), and their provenance.
        """
        raise NotImplementedError

    def output_count(self, n: int, grid: tuple[int, int] | None = None) -> int:
        """Number of tokens ``merge`` returns for ``n`` input tokens (pre-LLM stage), without running it."""
        raise NotImplementedError

    def layer_budgets(self, num_layers: int, num_tokens: int) -> list[int] | None:
        """Tokens entering each vision-tower layer (vision stage); ``None`` for pre-LLM mergers."""
        return None

    def for_video(self) -> BaseMerger:
        """The merger to apply to the frames of a video input (default: this one; AIM's ``variant="auto"`` switches
        to its video keep ratio)."""
        return self


# --------------------------------------------------------------------------------------------------- scorers


@dataclass
class ScoreContext:
    """What a scorer may read at the stage where it runs. Fields a stage cannot supply are ``None``.

    Attributes:
        visual_mask: Which tokens are reducible visual tokens, shape (B, N) bool.
        attention_mask: Which tokens are real (not padding), shape (B, N) bool.
        features: Token features before the LLM, shape (B, N, C) (pre-LLM stage).
        hidden_states: Input hidden states of the layer, shape (B, N, C) (in-LLM stage).
        query: Post-RoPE attention queries for the rows the scorer asked for, shape (B, H, Q, D).
        query_index: Sequence positions of those query rows, shape (B, Q).
        key: Post-RoPE attention keys of all tokens, shape (B, H_kv, N, D).
        scaling: Softmax scale of the attention logits (usually D ** -0.5).
        layer: Index of the decoder layer the scores come from.
        num_layers: Number of decoder layers.
        seed: Seed for scorers that draw random numbers.
        final_norm: The decoder's final norm (in-LLM stage), for scorers that compare hidden states the way the LM
            head sees them (DART); ``None`` where the stage has none.
        key_mask: Which tokens the scoring layer's attention could see as keys, shape (B, N) bool, when it differs
            from ``attention_mask``: in mask mode pruned tokens stay in the sequence (real tokens, query rows) but
            are hidden as keys. ``None`` means ``attention_mask``.
    """

    visual_mask: torch.Tensor
    attention_mask: torch.Tensor | None = None
    features: torch.Tensor | None = None
    hidden_states: torch.Tensor | None = None
    query: torch.Tensor | None = None
    query_index: torch.Tensor | None = None
    key: torch.Tensor | None = None
    scaling: float | None = None
    layer: int | None = None
    num_layers: int | None = None
    seed: int | None = None
    final_norm: Callable[[torch.Tensor], torch.Tensor] | None = None
    key_mask: torch.Tensor | None = None


@runtime_checkable
class Scorer(Protocol):
    """Gives each token an importance (higher = keep); see [`BaseScorer`][tokred.BaseScorer]."""

    name: ClassVar[str]
    query_rows: ClassVar[QueryRows]

    def score(self, ctx: ScoreContext) -> torch.Tensor:
        """Importance of every token in ``ctx``, shape (B, N)."""
        ...


class BaseScorer(BaseComponent):
    """Base class for scorers: subclass it, set ``name``, ``query_rows`` and ``Config``, implement ``score``.

    ``query_rows`` tells the pipeline which attention query rows to capture at the scoring layer: ``"none"`` (the
    scorer reads features or hidden states only), ``"last"`` (the last token), ``"text"`` (all non-visual tokens) or
    ``"all"`` (every token; scorers must then process them in chunks to bound memory). The pipeline never asks the
    model for ``output_attentions``. ``scores_own_layer = True`` moves the capture from layer ``l - 1`` to a
    projection-only pass of pruning layer ``l`` itself (``ScoreContext.layer`` is then ``l``).
    """

    kind: ClassVar[Kind] = "scorer"
    query_rows: ClassVar[QueryRows] = "none"
    #: ``True``: the scores of pruning layer ``l`` come from layer ``l``'s *own* input norm, query/key projections
    #: and RoPE applied to its input (PyramidDrop), computed before the layer runs on the reduced set; ``False``
    #: (default): from layer ``l - 1``'s attention as that layer ran (FastV).
    scores_own_layer: ClassVar[bool] = False

    def score(self, ctx: ScoreContext) -> torch.Tensor:
        """Score tokens.

        Args:
            ctx: The inputs available at this stage; see [`ScoreContext`][tokred.ScoreContext].

        Returns:
            Importance of every token in the sequence, shape (B, N); only visual entries are used.
        """
        raise NotImplementedError


# ------------------------------------------------------------------------------------------------ schedulers


@runtime_checkable
class Scheduler(Protocol):
    """Says how many reducible tokens each layer processes; see [`BaseScheduler`][tokred.BaseScheduler]."""

    name: ClassVar[str]

    def budgets(self, num_layers: int, num_tokens: int) -> list[int]:
        """Non-increasing budget per layer."""
        ...


class BaseScheduler(BaseComponent):
    """Base class for schedulers: subclass it, set ``name`` and ``Config``, implement ``_budgets``.

    ``budgets`` validates what ``_budgets`` returns: one entry per layer, non-increasing, within
    ``[0, num_tokens]``. A budget is the number of reducible (visual) tokens that the layer processes; text tokens
    are never counted and never dropped.
    """

    kind: ClassVar[Kind] = "scheduler"
    #: ``True``: every layer >= 1 is a pruning layer and the budgets are upper bounds; the scorer sizes each layer by
    #: scoring the visual tokens to drop ``-inf`` (one sample per batch; FitPrune's calibration uses it).
    adaptive: ClassVar[bool] = False

    def for_video(self) -> BaseScheduler:
        """The scheduler for a prompt with video input (default: this one; AIM's ``variant="auto"`` switches to its
        video (l1, l2))."""
        return self

    def budgets(self, num_layers: int, num_tokens: int) -> list[int]:
        """Visual tokens processed by each layer.

        Args:
            num_layers: Depth of the stack (decoder layers, or vision-tower layers).
            num_tokens: Reducible tokens entering the first layer.

        Returns:
            ``num_layers`` non-increasing integers in ``[0, num_tokens]``.

        Raises:
            ConfigError: If the schedule cannot be applied to this depth.
            RuntimeError: If the implementation breaks the contract (a bug in the scheduler).
        """
        if num_layers < 1 or num_tokens < 0:
            raise ConfigError(f"scheduler '{self.name}': need num_layers >= 1 and num_tokens >= 0")
        out = [int(b) for b in self._budgets(num_layers, num_tokens)]
        check_budgets(out, num_layers, num_tokens, owner=self.name)
        return out

    def _budgets(self, num_layers: int, num_tokens: int) -> list[int]:
        raise NotImplementedError


def check_budgets(budgets: list[int], num_layers: int, num_tokens: int, *, owner: str) -> None:
    """Raise ``RuntimeError`` unless ``budgets`` is a valid schedule for this stack."""
    if len(budgets) != num_layers:
        raise RuntimeError(f"scheduler '{owner}' returned {len(budgets)} budgets for {num_layers} layers")
    if any(b < 0 or b > num_tokens for b in budgets):
        raise RuntimeError(f"scheduler '{owner}' returned a budget outside [0, {num_tokens}]: {budgets}")
    if any(b2 > b1 for b1, b2 in zip(budgets, budgets[1:])):
        raise RuntimeError(f"scheduler '{owner}' returned an increasing schedule: {budgets}")


# --------------------------------------------------------------------------------------------------- routers


@dataclass
class RouteContext:
    """What a router sees before a Mixture-of-Depths layer runs (in-LLM stage, prefill).

    Attributes:
        hidden_states: The layer's full-length input, shape (B, N, C).
        routable: Tokens the router may let skip the layer, shape (B, N) bool: visual tokens and the instruction
            text before the last visual token; the question after it, generated tokens and padding never are.
        attention_mask: Which tokens are real (not padding), shape (B, N) bool.
        visual_mask: Which tokens are visual, shape (B, N) bool.
        layer: Index of the decoder layer about to run.
        num_layers: Decoder depth.
    """

    hidden_states: torch.Tensor
    routable: torch.Tensor
    attention_mask: torch.Tensor
    visual_mask: torch.Tensor
    layer: int
    num_layers: int


@dataclass
class RouteDecision:
    """A router's verdict for one layer.

    Attributes:
        scores: Priority of every token to be processed, shape (B, N) float; the pipeline processes the
            ``capacity`` routable tokens with the highest scores of each row (ties: the earlier token) and every
            non-routable one.
        weight: Factor on the MLP output of each processed routable token, shape (B, N) (gamma-MoD's router weight,
            differentiable when the router trains), or ``None`` for 1; non-routable tokens always get 1.
    """

    scores: torch.Tensor
    weight: torch.Tensor | None = None


class BaseRouter(BaseComponent):
    """Base class for routers (Mixture-of-Depths): subclass it, set ``name`` and ``Config``, implement ``route``.

    At every layer ``layers`` names (never layer 0, which anchors the cache's positions and mask sizes), the routed
    tokens run the layer and the others skip it: their hidden state passes through unchanged and they are absent
    from that layer's keys, values and KV cache; they come back at the next layer. ``capacity`` says how many of a
    row's routable tokens a layer processes. See the [token-routing note](../../concepts/token-routing.md).
    """

    kind: ClassVar[Kind] = "router"
    #: ``True``: ``route`` returns a ``weight`` that scales the MLP output of processed tokens (the pipeline then
    #: hooks each MoD layer's MLP branch through the transformers seam); ``False``: no weight.
    weighted: ClassVar[bool] = False

    def layers(self, num_layers: int) -> list[int]:
        """The decoder layers that route (MoD layers), ascending, each in ``[1, num_layers)``."""
        raise NotImplementedError

    def capacity(self, layer: int, routable: int) -> int:
        """How many of ``routable`` routable tokens of one row layer ``layer`` processes, in ``[0, routable]``."""
        raise NotImplementedError

    def route(self, ctx: RouteContext) -> RouteDecision:
        """Score the tokens of one MoD layer's input.

        Args:
            ctx: The layer's input and masks; see [`RouteContext`][tokred.RouteContext].

        Returns:
            The priorities (B, N) and the optional MLP weights (B, N).
        """
        raise NotImplementedError


# ------------------------------------------------------------------------------------------------ strategies


class Strategy(BaseComponent):
    """A named, configured composition of a merger, a scorer and a scheduler (any may be absent).

    Subclasses set ``name``, ``Config``, ``budget_knob`` and implement ``build``. ``budget_knob`` names the one
    float option (higher = more tokens kept) that ``tokred compare --match`` searches to equalise budgets across
    strategies. The pipeline uses the components as follows:

    * ``merger`` with ``stage="vision"``: merging inside the vision tower, per ``merger.layer_budgets``;
    * ``merger`` with ``stage="pre_llm"``: reduces each image's projected features before the LLM;
    * ``scorer`` + ``scheduler``: in-LLM dropping; at every layer whose budget is lower than the previous one the
      scorer ranks the visual tokens and only the top ones go on (layer 0 is never pruned).
    """

    kind: ClassVar[Kind] = "strategy"
    budget_knob: ClassVar[str | None] = None
    budget_direction: ClassVar[int] = 1  # +1: a larger knob keeps more tokens; -1: fewer (e.g. ToMe's r)
    #: The KV stage's component (`tokred.BaseKVCompressor`): which cache entries each layer keeps after the prefill;
    #: set by ``build`` of strategies that compress the cache (PrefixKV), else ``None``.
    kv_compressor: Any = None
    #: The router (`tokred.BaseRouter`) of a Mixture-of-Depths strategy (gamma-MoD): which tokens each routed
    #: decoder layer processes; set by ``build``, else ``None``.
    router: BaseRouter | None = None
    #: A strategy that is one merger configured by the strategy's own options sets this (and ``Config`` to the
    #: merger's): the default ``build`` then creates ``merger_class(self.config)`` and nothing else.
    merger_class: ClassVar[type[BaseMerger] | None] = None

    def __init__(self, config: ComponentConfig | None = None, **options: Any) -> None:
        super().__init__(config, **options)
        merger, scorer, scheduler = self.build()
        self.merger: BaseMerger | None = merger
        self.scorer: BaseScorer | None = scorer
        self.scheduler: BaseScheduler | None = scheduler
        if (scorer is None) != (scheduler is None):
            raise ConfigError(f"strategy '{self.name}': a scorer needs a scheduler and vice versa")

    def build(self) -> tuple[BaseMerger | None, BaseScorer | None, BaseScheduler | None]:
        """Create the components from ``self.config``; the default is ``merger_class`` alone, if set, else no
        reduction at all."""
        return (None if self.merger_class is None else self.merger_class(self.config)), None, None

    def prepare(self, model: Any) -> None:
        """Called by ``tokred.patch`` before anything is installed: strategies whose setup depends on the model (a
        calibrated per-layer recipe) resolve it here, and raise ``ConfigError`` when they cannot. Default: nothing."""

    @property
    def components(self) -> dict[str, BaseComponent | None]:
        """The strategy's components by role."""
        return {"merger": self.merger, "scorer": self.scorer, "scheduler": self.scheduler}

    @property
    def prune_mode(self) -> str:
        """How in-LLM pruning is realised: ``"drop"`` (real dropping, default) or ``"mask"`` (parity studies)."""
        return str(getattr(self.config, "mode", "drop"))

    @property
    def position_policy(self) -> str:
        """Positions of the tokens after an in-LLM drop: ``"original"`` (default: kept tokens keep theirs) or
        ``"reindex"`` (``0..n-1`` over the kept tokens after every drop, as PyramidDrop's reference)."""
        return str(getattr(self.config, "positions", "original"))

    def with_budget(self, value: float) -> Strategy:
        """A copy of this strategy with its budget knob set to ``value``."""
        if self.budget_knob is None:
            raise ConfigError(f"strategy '{self.name}' has no budget knob to set")
        options = self.config.model_dump()
        options[self.budget_knob] = value
        return type(self)(**options)


class ComposedStrategy(Strategy):
    """An ad-hoc strategy assembled from component instances with [`compose`][tokred.compose]."""

    name: ClassVar[str] = "composed"

    def __init__(
        self,
        merger: BaseMerger | None = None,
        scorer: BaseScorer | None = None,
        scheduler: BaseScheduler | None = None,
        *,
        label: str = "composed",
    ) -> None:
        self._parts = (merger, scorer, scheduler)
        self.label = label
        super().__init__()

    def build(self) -> tuple[BaseMerger | None, BaseScorer | None, BaseScheduler | None]:
        return self._parts

    def __repr__(self) -> str:
        parts = ", ".join(f"{k}={v!r}" for k, v in self.components.items() if v is not None)
        return f"ComposedStrategy({self.label!r}, {parts})"


def compose(
    *,
    merger: BaseMerger | None = None,
    scorer: BaseScorer | None = None,
    scheduler: BaseScheduler | None = None,
    label: str = "composed",
) -> Strategy:
    """Compose component instances into a strategy without registering a class.

    Example:
        >>> import tokred
        >>> s = tokred.compose(scorer=tokred.create_component("scorer", "random", seed=1),
        ...                    scheduler=tokred.create_component("scheduler", "one-shot", layer=2, keep_ratio=0.5))
        >>> s.scheduler.budgets(4, 10)
        [10, 10, 5, 5]
    """
    return ComposedStrategy(merger, scorer, scheduler, label=label)
