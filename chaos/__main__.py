import sys

from chaos.scenario import main

sys.exit(main())
