"""``python -m magihuman ...``: the same commands as the ``magihuman`` console script."""

from magihuman.cli.app import main

if __name__ == "__main__":
    main()
