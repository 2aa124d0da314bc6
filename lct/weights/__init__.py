"""Pretrained files: fetching and checking them (and random stand-ins for the tests)."""
