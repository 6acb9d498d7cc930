"""The training-speed benchmark (``python -m vit_train.bench``): a driver that starts one worker
process per configuration, the worker, and the data-path measurements; and the grid benchmark
(``python -m vit_train.bench grid``: the reference grid through ``submit --local``); and the check that
``model.cuda_graph`` trains what eager trains (``python -m vit_train.bench.graph_check``, GPU). Not imported by training."""
