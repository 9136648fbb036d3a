"""``python -m llmattr``: the ``llmattr`` command line."""

import sys

from .cli import main

sys.exit(main())
