"""``tokred flops``: the analytical FLOPs breakdown of a model config under a strategy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from tokred.cli._options import parse_options
from tokred.cli._output import Format, print_json, stdout
from tokred.errors import ConfigError

CONVENTIONS = ("llm-viewer", "fastv")
TEXT_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")


def load_config(model: str) -> dict[str, Any]:
    """A built-in config by name, or ``config.json`` of a local model directory / file.

    Raises:
        ConfigError: For a folder without config.json, a file that is not JSON, or a config without the LLM's sizes.
        UnknownNameError: For a name that is neither a file nor a built-in config.
    """
    if not model.strip():
        raise ConfigError("the model config is empty: give a built-in name (e.g. llava-1.5-7b) or a config.json")
    path = Path(model)
    if path.is_dir():
        path = path / "config.json"
        if not path.is_file():
            raise ConfigError(f"{model} has no config.json; give a model folder or the config file itself")
    if path.suffix == ".json" and path.exists():
        raw = _read_json(path)
        text = raw.get("text_config", raw)
        check_text_config(text, str(path))
        return {
            "text_config": text,
            "vision_config": raw.get("vision_config"),
            "projector": None,
            "visual_tokens": None,
            "hf_id": str(path),
        }
    from tokred.flops import get_known_config

    return get_known_config(model)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text; give a transformers config.json") from None
    except json.JSONDecodeError as err:
        what = "empty" if not path.read_bytes().strip() else f"not valid JSON ({err.msg} at line {err.lineno})"
        raise ConfigError(f"{path} is {what}; give a transformers config.json") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} holds a JSON {type(raw).__name__}, not an object; give a transformers config.json")
    return raw


def check_text_config(text: Any, source: str) -> None:
    """Refuse an LLM config whose sizes are missing, not positive integers, or inconsistent.

    Raises:
        ConfigError: Naming the config and the key.
    """
    if not isinstance(text, dict):
        raise ConfigError(f"{source}: text_config must be a JSON object")
    missing = [k for k in TEXT_KEYS if k not in text]
    if missing:
        raise ConfigError(f"{source} lacks {', '.join(missing)}; a decoder config needs {', '.join(TEXT_KEYS)}")
    for key in (*TEXT_KEYS, "num_key_value_heads", "head_dim"):
        value = text.get(key)
        if value is None and key in ("num_key_value_heads", "head_dim"):
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{source}: {key} must be a positive integer, got {value!r}")
    heads, kv = text["num_attention_heads"], text.get("num_key_value_heads") or text["num_attention_heads"]
    if text.get("head_dim") is None and text["hidden_size"] % heads:
        raise ConfigError(
            f"{source}: num_attention_heads={heads} does not divide hidden_size={text['hidden_size']} (and no head_dim)"
        )
    if heads % kv:
        raise ConfigError(f"{source}: num_key_value_heads={kv} does not divide num_attention_heads={heads}")


def check_counts(**counts: tuple[int | None, int]) -> None:
    """Refuse a count below its minimum: ``check_counts(visual=(v, 1))``.

    Raises:
        ConfigError: Naming the flag, its value and the minimum.
    """
    for name, (value, minimum) in counts.items():
        if value is not None and value < minimum:
            raise ConfigError(f"--{name.replace('_', '-')} {value}: must be at least {minimum}")


def check_convention(convention: str) -> None:
    """Refuse an unknown FLOPs convention.

    Raises:
        ConfigError: Listing the conventions.
    """
    if convention not in CONVENTIONS:
        raise ConfigError(f"--convention {convention!r}: use one of {', '.join(CONVENTIONS)}")


def flops_report(
    config: dict[str, Any],
    strategy_name: str,
    options: dict[str, Any],
    *,
    visual: int,
    text: int,
    images: int,
    convention: str,
) -> dict[str, Any]:
    """FLOPs of the unreduced model and of the strategy, by part, as a JSON-ready dict."""
    import tokred
    from tokred.budget import predict_tokens_per_layer
    from tokred.flops import FlopsReport, decode_step_flops, prefill_flops, projector_flops, vision_tower_flops
    from tokred.pipeline._checks import check_schedule_depth

    strategy = tokred.create_strategy(strategy_name, **options)
    text_cfg, vision_cfg = config["text_config"], config.get("vision_config")
    layers = int(text_cfg["num_hidden_layers"])
    check_schedule_depth(strategy, layers)
    vision_layers = int(vision_cfg["num_hidden_layers"]) if vision_cfg else None
    # The tower (and projector) see every patch of an image even when the LLM gets fewer tokens (e.g. OneVision
    # pools video frames 729 -> 196 after the projector).
    tower_tokens = int(vision_cfg.get("tokens_per_image") or visual) if vision_cfg else visual
    rows = {}
    for label, strat in (("none", tokred.create_strategy("none")), (strategy_name, strategy)):
        tokens = predict_tokens_per_layer(
            strat,
            num_layers=layers,
            text_tokens=text,
            visual_tokens=visual,
            images=images,
            vision_layers=vision_layers,
            video=images > 1,  # several --images are the frames of one video
        )
        proj = config.get("projector")
        report = FlopsReport(
            llm_prefill=prefill_flops(text_cfg, tokens, convention),  # type: ignore[arg-type]
            llm_decode_step=decode_step_flops(text_cfg, tokens, convention),  # type: ignore[arg-type]
            vision=vision_tower_flops(vision_cfg, tower_tokens) * images if vision_cfg else 0.0,
            projector=projector_flops(tower_tokens * images, **proj) if proj else 0.0,
            convention=convention,
            extra={"tokens_per_layer": tokens, "visual_into_llm": tokens[0] - text},
        )
        rows[label] = report.to_dict()
    base = rows["none"]["llm_prefill"]
    for row in rows.values():
        row["relative_llm_prefill"] = row["llm_prefill"] / base if base else 1.0
    return {
        "model": config.get("hf_id"),
        "visual_tokens": visual,
        "text_tokens": text,
        "images": images,
        "strategy": {"name": strategy_name, "options": strategy.config.model_dump(mode="json")},
        "rows": rows,
    }


def flops_command(
    model: Annotated[str, typer.Argument(help="Built-in config name (e.g. llava-1.5-7b) or a local config.json.")] = (
        "llava-1.5-7b"
    ),
    strategy: Annotated[str, typer.Option("--strategy", "-s", help="Strategy to account for.")] = "aim",
    option: Annotated[list[str] | None, typer.Option("--option", "-o", help="Strategy option key=value.")] = None,
    visual: Annotated[int | None, typer.Option(help="Visual tokens per image (default: the config's).")] = None,
    text: Annotated[int, typer.Option(help="Text tokens in the prompt.")] = 64,
    images: Annotated[
        int, typer.Option(help="Frames of one video (N > 1: video defaults, e.g. AIM's) or 1 image.")
    ] = 1,
    convention: Annotated[str, typer.Option(help="llm-viewer (AIM) or fastv (FastV paper).")] = "llm-viewer",
    per_layer: Annotated[bool, typer.Option("--per-layer", help="Also print the tokens of every layer.")] = False,
    fmt: Annotated[Format, typer.Option("--format", help="table or json.")] = Format.table,
) -> None:
    """Analytical FLOPs of a model config, unreduced and under a strategy (LLM prefill, one decode step, vision
    tower, projector).

    Examples:

    \b
    tokred flops llava-1.5-7b --strategy fastv
    tokred flops llava-onevision-7b --strategy aim -o variant=video --visual 196 --images 32 --text 100
    tokred flops ./my-model/config.json --strategy pooling -o kernel=3 --format json
    """
    check_counts(visual=(visual, 1), text=(text, 0), images=(images, 1))
    check_convention(convention)
    config = load_config(model)
    n_visual = visual if visual is not None else config.get("visual_tokens")
    if not n_visual:
        raise ConfigError(f"model '{model}' has no fixed visual token count: pass --visual")
    opts = parse_options(option, [strategy]).get(strategy, {})
    data = flops_report(config, strategy, opts, visual=int(n_visual), text=text, images=images, convention=convention)
    if fmt is Format.json:
        print_json(data)
        return
    _print(data, per_layer)


def _print(data: dict[str, Any], per_layer: bool) -> None:
    table = Table(
        title=f"FLOPs of {data['model']} ({data['visual_tokens']} visual x {data['images']}, "
        f"{data['text_tokens']} text tokens)",
        title_justify="left",
    )
    for col in (
        "strategy",
        "visual into LLM",
        "LLM prefill (TFLOPs)",
        "relative",
        "decode step (GFLOPs)",
        "vision (TFLOPs)",
        "projector (TFLOPs)",
    ):
        table.add_column(col, justify="right" if col != "strategy" else "left")
    for name, row in data["rows"].items():
        table.add_row(
            name,
            str(row["extra"]["visual_into_llm"]),
            f"{row['llm_prefill'] / 1e12:.3f}",
            f"{row['relative_llm_prefill']:.3f}",
            f"{row['llm_decode_step'] / 1e9:.3f}",
            f"{row['vision'] / 1e12:.3f}",
            f"{row['projector'] / 1e12:.4f}",
        )
    console = stdout()
    console.print(table)
    if per_layer:
        for name, row in data["rows"].items():
            console.print(f"{name} tokens per layer: {row['extra']['tokens_per_layer']}")
