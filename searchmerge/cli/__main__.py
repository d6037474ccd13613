"""``python -m searchmerge.cli``: the same as the ``searchmerge`` console script."""

from searchmerge.cli.commands import main

raise SystemExit(main())
