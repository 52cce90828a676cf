"""Integrations of tokred with other tools (optional extras; each subpackage imports its tool lazily)."""
