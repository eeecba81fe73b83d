"""``python -m focusfuse``: the same command line as ``focusfuse``."""

from focusfuse.cli import main

if __name__ == "__main__":
    main()
