"""Configuration base class shared by every component.

Every merger, scorer, scheduler and strategy carries a nested ``Config`` that subclasses
[`ComponentConfig`][tokred.ComponentConfig]. It is the single source for validation, the docs and
``tokred list --options``: each field has a description and, where numeric, bounds.

Example:
    >>> from pydantic import Field
    >>> class Config(ComponentConfig):
    ...     keep_ratio: float = Field(0.5, gt=0.0, le=1.0, description="Fraction of visual tokens kept.")
    >>> Config(keep_ratio=0.25).keep_ratio
    0.25
"""

from __future__ import annotations

from typing import Any, get_args

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator


class ComponentConfig(BaseModel):
    """Base of every component's nested ``Config``: unknown options are errors, instances are frozen, and a bool is
    never taken for a number (``keep_ratio=True`` is refused rather than read as 1.0)."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool) and info.field_name is not None:
            annotation = cls.model_fields[info.field_name].annotation
            if _admits_number(annotation) and not _admits_bool(annotation):
                raise ValueError(f"expected a number, got the bool {value}")
        return value


def _flatten(annotation: Any) -> list[Any]:
    args = get_args(annotation)
    if not args:
        return [annotation]
    return [annotation, *(a for arg in args for a in _flatten(arg))]


def _admits_number(annotation: Any) -> bool:
    return any(a in (int, float) for a in _flatten(annotation))


def _admits_bool(annotation: Any) -> bool:
    return any(a is bool or a is Any or a is True or a is False for a in _flatten(annotation))


def describe_options(config_cls: type[BaseModel]) -> list[dict[str, Any]]:
    """Describe the options of a config class for listings and docs.

    Args:
        config_cls: A pydantic model class (usually a component's ``Config``).

    Returns:
        One dict per field with ``name``, ``type``, ``default``, ``description`` and ``bounds`` (a short string
        such as ``"0 < x <= 1"``, empty when unbounded).
    """
    options = []
    for name, field in config_cls.model_fields.items():
        options.append(
            {
                "name": name,
                "type": _type_name(field.annotation),
                "default": _jsonable(field.default),
                "description": field.description or "",
                "bounds": _bounds(field.metadata),
            }
        )
    return options


def _type_name(annotation: Any) -> str:
    if annotation is None:
        return "None"
    name = getattr(annotation, "__name__", None)
    if name and not getattr(annotation, "__args__", None):
        return str(name)
    return str(annotation).replace("typing.", "")


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return repr(value)


def _bounds(metadata: list[Any]) -> str:
    lower = upper = ""
    for item in metadata:
        for attr, symbol in (("ge", ">="), ("gt", ">")):
            if getattr(item, attr, None) is not None:
                lower = f"{getattr(item, attr)} {symbol.replace('>', '<')} "
        for attr, symbol in (("le", "<="), ("lt", "<")):
            if getattr(item, attr, None) is not None:
                upper = f" {symbol} {getattr(item, attr)}"
    return f"{lower}x{upper}" if lower or upper else ""
