"""``python -m diffcore`` (what ``torchrun -m diffcore`` runs)."""

import sys

from diffcore.cli import main

sys.exit(main())
