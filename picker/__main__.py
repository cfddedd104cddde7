"""``python -m picker`` — same as the ``picker`` console script.

Guarded: ``picker serve --workers N`` starts workers with multiprocessing's spawn method, which imports
the parent's main module (this one) in every worker; only the real entry point may run the CLI.
"""

import sys

from picker.cli import main

if __name__ == "__main__":
    sys.exit(main())
