"""C{python -m epcat}: the same as the C{epcat} console script."""

from epcat.entry import main

if __name__ == "__main__":
    main()
