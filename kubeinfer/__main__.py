import sys

from kubeinfer.cli import main

if __name__ == "__main__":  # a spawned process (--frontends) imports this module under another name
    sys.exit(main())
