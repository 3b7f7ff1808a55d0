"""``python -m service.cli``: the pollinid command."""

import sys

from service.cli.main import main

sys.exit(main())
