"""Derivation: a `@function` layer's forward as a tape, reverse mode over it, and the backward plan the emitter follows."""
