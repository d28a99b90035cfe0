"""`shardserve run` and `shardserve status`: the same spec on one machine."""
