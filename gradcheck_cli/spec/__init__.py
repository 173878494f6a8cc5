"""The YAML spec, parsed once at the edge into frozen dataclasses: its keys (:mod:`.schema`),
reading YAML (:mod:`.yaml`), and validating plain data into the dataclasses (:mod:`.parse`).
Resolving a spec against its files is its own step, :mod:`gradcheck_cli.io.resolve`.
"""
