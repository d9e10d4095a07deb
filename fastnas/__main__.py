"""``python -m fastnas ...`` is the ``fastnas`` command."""
import sys

from fastnas.cli import main

sys.exit(main())
