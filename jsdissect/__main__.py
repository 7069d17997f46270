"""`python -m jsdissect`: the same as the `jsdissect` command."""

from jsdissect.cli import main

main()
