"""Training's parts: the run (accelerator, model, optimizer, batches, one step), its LoopState,
checkpoints, evaluation, the optimizer and schedule, signals, metrics, plots, trackers and MFU.
The loop that runs them is hfgpt.training.loop."""
