import sys

from xentool.client import main

sys.exit(main())
