"""``python -m xml_pipeline`` is the ``organism`` command."""

import sys

from xml_pipeline.cli import main

sys.exit(main())
