"""vqedge.dataset: a whole image dataset -> Parquet shards of tokens, resumable.

A stage beside the runtime, with its own extras: ``vqedge[tokenize]`` (pyarrow) for the local
engine, ``vqedge[ray]`` for the Ray engine. ``sources`` lists the inputs and plans the shards,
``shards`` tokenizes and writes one shard, ``local`` and ``ray_engine`` run the shards, ``run``
is the whole job (``tokenize_dataset``) that ``vqedge tokenize`` calls.
"""
