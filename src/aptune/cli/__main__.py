"""``python -m aptune.cli``: the ``aptune`` command."""

from aptune.cli import main

if __name__ == "__main__":  # pragma: no cover
    main()
