"""Run a search from Python and read its run folder back (tests only)."""

from easc.search.config import SearchConfig
from easc.search.loop import Search
from easc.search.store import ExperimentStore


def run_search(out, **options):
    """Start a search with `options` (SearchConfig fields) in `out`, run it to the end, close it."""
    search = Search.start(SearchConfig(**options), out)
    try:
        return search.run()
    finally:
        search.close()


def resume_search(out, **overrides):
    search = Search.resume(out, overrides)
    try:
        return search.run()
    finally:
        search.close()


def children_of(run_dir) -> list:
    with ExperimentStore.open_existing(run_dir) as store:
        return store.children()


def steps_of(run_dir) -> list:
    with ExperimentStore.open_existing(run_dir) as store:
        return store.steps()
