"""The `steerpatch` command line: a thin shell over the library."""
