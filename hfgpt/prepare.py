"""Prepare: text -> token files, meta.json and the tokenizer, in data_dir/dataset/.

    hfgpt prepare recipes/shakespeare_char.yaml
    python -m hfgpt.prepare recipes/my_dataset.yaml --source=notes.txt --tokenizer=gpt2
    python -m hfgpt.prepare --config my.yaml --source="[books/, extra.jsonl]" --tokenizer=bpe --vocab_size=8192

`python -m hfgpt.train` runs this itself; running it again on an unchanged source and recipe does
nothing. Output, in data_dir/dataset/:
  train.bin, val.bin  flat token ids (uint16 when the vocabulary fits, else uint32), as nanoGPT's;
                      a split over shard_size tokens is train-00000.bin, train-00001.bin, ...
  meta.json           shards and token counts, vocab_size, dtype, tokenizer, source and its sha256
  tokenizer/          the tokenizer as a PreTrainedTokenizerFast folder
One text stream (a single file or document) is split as nanoGPT splits it: the first
1 - val_fraction of the tokens train, the rest validate. Many documents are split by document:
a seeded draw picks val_fraction of them for validation, and each document ends with the
tokenizer's end-of-text id. Text is read in ~1 MB pieces, tokenized by num_proc threads and
written as it comes, so memory does not grow with the corpus (hfgpt/data/). Everything is written
in a temporary folder and moved into place at the end.
"""

import sys

from hfgpt.config import Command, Parsed, command


@command(Command("prepare", "Tokenize the recipe's source into data_dir/dataset/.", recipe_step="prepare"))
def main(parsed: Parsed) -> int:
    from hfgpt.data.prepare import prepare
    from hfgpt.data.spec import data_spec

    prepare(data_spec(parsed.recipe))
    return 0


if __name__ == "__main__":
    sys.exit(main())
