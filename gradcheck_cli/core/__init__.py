"""The definition of the numbers, NumPy only: the model's shapes and initialisation
(:mod:`.model`), BPTT by the book (:mod:`.reference`), the losses, the one norm rule
(:mod:`.norms`), truncated BPTT's chunks, the mitigations and the optimisers."""
