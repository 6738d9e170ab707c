"""Code generation: checked IR and backward plans → the Python source of each generated module."""
