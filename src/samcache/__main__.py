import sys

from samcache.cli import main

sys.exit(main())
