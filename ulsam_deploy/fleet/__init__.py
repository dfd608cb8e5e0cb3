"""``fleet``: the same steps on every device kind of a Dask cluster, gathered into one report.

:mod:`.schema` (what travels, validated at both ends), :mod:`.worker` (what runs on a board), :mod:`.cluster`
(connecting, or the embedded cluster), :mod:`.run` (the client: tasks, faults), :mod:`.report` (the matrix).
Importing this package imports no Dask.
"""
