"""Built-in strategy plugins of tokred, installed as ``tokred.strategies``.

They are loaded through the plugin path (``tokred._plugins.DEFAULT_PLUGINS``), exactly like third-party plugins.
"""

if __name__ != "tokred.strategies":  # pragma: no cover - exercised by a subprocess test
    # PyPI has an unrelated distribution called "strategies"; never shadow it from a source checkout.
    raise ImportError(
        f"tokred's built-in strategies must be imported as 'tokred.strategies', not {__name__!r}; "
        "install tokred (pip install -e .) and use 'import tokred.strategies'"
    )
