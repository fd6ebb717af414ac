"""Shared fixtures. Helpers are the package `tests.helpers`; the fast tier (tests/unit) has its
own conftest that keeps it free of servers."""
