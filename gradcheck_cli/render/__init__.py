"""Renderers: one per output format, chosen in one place (:mod:`.formats`), each a function
of a result and :class:`~.options.RenderOptions` to text. The CLI decides where it goes."""
