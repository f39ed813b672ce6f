"""Whole runs: :mod:`.config` (workflow files, validated when loaded), :mod:`.run`
(``affinity-dist run``: every stage on one cluster, resumable, with a report) and
:mod:`.slurm` (the SLURM cluster of ``workflows/submit_workflow.py``)."""
