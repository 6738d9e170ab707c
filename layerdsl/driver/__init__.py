"""The driver: the pipeline of one run, writing its output, and the `layerdsl` command line."""
