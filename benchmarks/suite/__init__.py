"""objkit's performance suite as a package of row modules with one runner (``benchmarks/run.py``
is its command line). See benchmarks/README.md, "How the suite is laid out" and "Adding a row"."""
