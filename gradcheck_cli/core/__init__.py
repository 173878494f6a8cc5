"""The reference: the model, its cells and BPTT by the book, norms."""
