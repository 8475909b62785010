"""``python -m topoot_gpu``: the ``topoot`` command (:mod:`topoot_gpu.cli`)."""

import sys

from .cli import main

sys.exit(main())
