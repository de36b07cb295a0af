"""``python -m pipeline.server``: the server's command line without the pipeline's imports
(``make server-stop`` works before ``.venv`` exists)."""

import sys

from pipeline.server import main

sys.exit(main())
