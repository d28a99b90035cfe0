"""How the test process runs Python's cyclic garbage collector.

Collecting the tests imports Ray, vLLM and torch: about a million objects
that live until the process exits. Each full collection walked them all
again (21 in a fast-tier run, 12 s), and so did the collections at exit.
Collection now runs without the cyclic collector, the objects it leaves
are collected once and then frozen (the collector skips them from then
on), and what the tests create is collected as before.
"""

from __future__ import annotations

import gc


def pytest_configure(config):
    gc.disable()


def pytest_collection_finish(session):
    gc.collect()
    gc.freeze()
    # With the long-lived objects frozen, the rule that holds a full
    # collection back until they grow by a quarter no longer does: without
    # this, one came every 10 young collections.
    gc.set_threshold(700, 10, 100)
    gc.enable()


def pytest_unconfigure(config):
    # Frozen objects are never freed; xgrammar's bindings (nanobind) then
    # report them as leaked when the interpreter exits.
    gc.unfreeze()
