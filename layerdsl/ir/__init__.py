"""The IR: the nodes every stage passes on, how to build and traverse them, and their spec-language text."""
