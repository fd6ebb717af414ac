"""The fast tier (`make test-fast`): unit-level tests, no servers, no npm."""
