"""One module per pipeline stage, each a ``prepare_*`` (validate against the data, write
nothing), a ``run_*`` (execute the plan on a cluster) and the API function that chains
them: :mod:`.sample`, :mod:`.ingest`, :mod:`.predict`, :mod:`.segment`, :mod:`.evaluate`,
:mod:`.pyramid`. Their options live in :mod:`affinity_dist.options`."""
