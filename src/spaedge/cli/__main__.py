"""``python -m spaedge.cli`` (what ``torchrun -m spaedge.cli train`` runs)."""

import sys

from spaedge.cli import main

sys.exit(main())
