"""Results as plain data (:mod:`.report`), their JSON and JSON Schema derived from the
dataclasses (:mod:`.json`), and the sentences they are published with (:mod:`.prose`)."""
