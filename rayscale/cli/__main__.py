"""``python3 -m rayscale.cli ...``: the same as the ``rayscale`` command."""

from rayscale.cli import main

main()
