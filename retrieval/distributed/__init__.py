"""Beyond one machine, on Ray (the ``distributed`` extra): encoding a collection through the one pipeline on a pool
of actors (encode.py; blocks.py for a corpus kept in the cluster, never whole on the driver; files.py reads
parquet/JSON-lines files into one), sharded indexes built by parallel tasks and searched by one actor per shard
(shards.py), and the BEIR evaluation run over both (beir.py). The only package that imports ray; nothing below it
does, and a sharded index opens without Ray too (``indexes.sharded.ShardedIndex``)."""

from .blocks import encode_blocks, read_plan
from .cluster import Cluster, RayUnavailableError, connect, require_ray, shutdown
from .encode import EncodeReport, HeadSpec, RayEncoder, encode_parts, read_parts
from .shards import RayShardedIndex, build_sharded_on_ray

__all__ = ["Cluster", "EncodeReport", "HeadSpec", "RayEncoder", "RayShardedIndex", "RayUnavailableError",
           "build_sharded_on_ray", "connect", "encode_blocks", "encode_parts", "read_parts", "read_plan", "require_ray",
           "shutdown"]
