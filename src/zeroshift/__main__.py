"""`python -m zeroshift` and `torchrun ... -m zeroshift`: the command line."""
from .cli.main import main

raise SystemExit(main())
