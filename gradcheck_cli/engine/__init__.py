"""The fast BPTT, tested against :mod:`gradcheck_cli.core.reference` on every path:
:mod:`.forward` and :mod:`.backward` (the passes), :mod:`.kernels` (each cell's step, with
the reference cell's contract), :mod:`.lanes` (independent passes run as one),
:mod:`.hooks` (what the backward pass calls as it goes), :mod:`.buffers` and
:mod:`.arrays` (memory, and the table of it the memory estimate reads), :mod:`.bptt`
(whole runs and truncated BPTT)."""
