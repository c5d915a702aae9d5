"""The limits the serve tests' server runs with (shared by its fixture and the tests that probe them)."""

MAX_PIXELS = 200 * 200
MAX_BODY = 2 * 1024 * 1024
