"""Parts of a run around the loop: complete-or-absent checkpoints, progress/TensorBoard tracking,
Hugging Face export, evaluation figures, fault injection for tests, and safe file writes."""
