"""Run the command line with ``python -m tokred``."""

from tokred.cli import main

main()
