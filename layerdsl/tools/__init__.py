"""Tools built on the pipeline: the formatter (`fmt`) and the language server (`lsp`)."""
