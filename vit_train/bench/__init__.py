"""The training-speed benchmark (``python -m vit_train.bench``): a driver that starts one worker
process per configuration, the worker, and the data-path measurements. Not imported by training."""
