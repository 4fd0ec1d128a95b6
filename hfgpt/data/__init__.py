"""Text -> token files -> batches: prepare (sources, tables, tokenizer, encode, shards, meta,
nanogpt_data) writes a dataset folder; batches reads training windows from it."""
