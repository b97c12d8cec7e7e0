"""`python -m dfkd` runs the command line."""

from dfkd.cli import main

main()
