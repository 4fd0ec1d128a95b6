"""hfgpt: train your own GPT on your own text, nanoGPT's workflow on the Hugging Face stack."""

__version__ = "0.1.0"
