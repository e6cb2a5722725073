"""The `herd` command line: one module per resource; parse, call the API, render."""
