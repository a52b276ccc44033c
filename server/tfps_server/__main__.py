"""``python -m tfps_server`` runs the server, as ``tfps-server`` does."""

import sys

from tfps_server.cli import main

sys.exit(main())
