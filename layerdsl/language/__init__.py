"""The language's data: the operation table, initialisers, `torch.nn` layers, reserved names, naming rules."""
