"""The GPT: built or loaded (gpt), its training attention (attention), saved as a model folder
(folder), generating text (generate), and nanoGPT's checkpoint format (nanogpt)."""
