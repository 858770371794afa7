import sys

from edge_launch import main

sys.exit(main())
