"""gradcheck: diagnose exploding and vanishing gradients in recurrent networks."""

__version__ = "0.1.0"
