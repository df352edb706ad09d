"""``python -m eagle_hub.cli``: what ``accelerate launch -m eagle_hub.cli`` runs."""

import sys

from . import main

sys.exit(main())
