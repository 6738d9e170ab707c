"""Semantics: names and scopes, kinds, the checks of a spec, index notation, constant evaluation and shapes."""
