"""Looking at the results: :mod:`.neuroglancer` (``affinity-dist view``, screenshots),
:mod:`.webknossos` (datasource metadata) and :mod:`.preview` (PNG sections)."""
