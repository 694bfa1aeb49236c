import sys

from venvfs.cli import main

sys.exit(main())
