"""Running blocks on Dask: :mod:`.cluster` (the client for ``--scheduler``, GPU workers),
:mod:`.scheduling` (one task per block, retries, progress), :mod:`.memory` (glibc malloc
tuning of the workers, peak memory) and :mod:`.state` (run state: which blocks of which
stage are done, under which configuration)."""
