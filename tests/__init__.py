"""The test suite: `make test-fast` runs tests/unit, `make test` everything."""
