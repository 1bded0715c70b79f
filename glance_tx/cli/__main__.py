"""C{python -m glance_tx.cli}: the same as the C{glance-tx} console script."""

from glance_tx.cli import main

main()
