import sys

from kubeinfer.cli import main

sys.exit(main())
