"""`ocellus train ARGS...` as a script, for tests/distributed/test_fsdp_export.py to run alone or under torchrun."""
import sys

from ocellus.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
