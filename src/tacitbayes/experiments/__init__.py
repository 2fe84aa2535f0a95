"""One module per CLI sub-command: thin wiring of the library into experiments and reports."""
