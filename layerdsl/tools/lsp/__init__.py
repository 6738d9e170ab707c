"""`layerdsl lsp`: the language server, one module per feature.

- `server`: the pygls wiring (the server, its handlers, `serve()`);
- `documents`: open documents, the workspace's other specs, and each version's parse and check;
- `layer_index`: the layers a document's folder sees, the other specs parsed only when a name is looked up;
- `diagnostics`: publishing the analysis's diagnostics;
- `positions`: LSP positions and ranges to and from spans;
- `navigation`: what is where in a layer, what a name means there, go to definition;
- `hover`, `completion`, `symbols`, `formatting`: those features;
- `show_generated`: the `layerdsl.showGenerated` command.
"""
