"""``python -m picker`` — same as the ``picker`` console script."""

import sys

from picker.cli import main

sys.exit(main())
