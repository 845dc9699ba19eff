import sys

from cacheserver.main import main

sys.exit(main())
