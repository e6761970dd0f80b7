"""``python -m kubetune_trainer --config FILE``: one training process (run it under torchrun)."""
import sys

from .train import main

if __name__ == "__main__":
    sys.exit(main())
