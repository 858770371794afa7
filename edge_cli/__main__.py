import sys

from edge_cli import main

sys.exit(main())
