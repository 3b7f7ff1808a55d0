"""``python -m service.cli.main``: the pollinid command."""

import sys

from service.cli.main.main import main

sys.exit(main())
