"""``python -m mojax.train --help``: the training CLI (:mod:`mojax.train.cli`)."""

from mojax.train.cli import main

if __name__ == "__main__":
    main()
