"""What a cluster user runs from the login node: grids, preflight, submission, status, resume,
reports, prefetch, kernels, TensorBoard, and the job that runs on the nodes. ``dev/`` holds the
local real Slurm cluster and the demo, which a cluster user does not need."""
