"""Run the command line with ``python -m tokred.cli``."""

from tokred.cli import main

main()
