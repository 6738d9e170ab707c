"""Run-time checks of generated layers (gradcheck, state_dict, reset, ...), shared by `layerdsl test` and the test suite."""
