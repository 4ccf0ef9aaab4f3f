"""``python -m mugv_quickstart``: the ``mugv-quickstart`` command."""

from mugv_quickstart.cli import main

raise SystemExit(main())
