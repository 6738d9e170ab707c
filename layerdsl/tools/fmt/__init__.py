"""`layerdsl fmt`: the canonical layout of `.layer` specs (`formatter`)."""
