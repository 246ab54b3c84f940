"""``python -m ndlm_sk``: the ``ndlm-sk`` command line (see :mod:`ndlm_sk.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
