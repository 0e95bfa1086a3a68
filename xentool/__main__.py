import sys

from xentool.cli import main

sys.exit(main())
