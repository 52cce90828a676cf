"""Built-in scheduler plugins of tokred, installed as ``tokred.schedules``.

They are loaded through the plugin path (``tokred._plugins.DEFAULT_PLUGINS``), exactly like third-party plugins.
"""

if __name__ != "tokred.schedules":  # pragma: no cover - exercised by a subprocess test
    # PyPI has an unrelated distribution called "schedules"; never shadow it from a source checkout.
    raise ImportError(
        f"tokred's built-in schedules must be imported as 'tokred.schedules', not {__name__!r}; "
        "install tokred (pip install -e .) and use 'import tokred.schedules'"
    )
