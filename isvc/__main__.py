import sys

from isvc.cli import main

sys.exit(main())
