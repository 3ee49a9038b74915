"""doppel: LLM doppelganger users for recommender systems.

The code lives in two subpackages, installed under this one namespace so that they cannot shadow
another distribution's modules: `doppel.flows` (Prefect flows, the CLI; the checkout's flows/) and
`doppel.tasks` (the domain steps; the checkout's tasks/). SQL and contracts are `doppel.sql` and
`doppel.expectations` (package data).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("doppel")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
