"""One point of ColossalAI's own ViT example on the project's data, timed from process start to exit.

Not project code, and ColossalAI's code is not in this repository: the example's folder
(``examples/images/vit/`` of the ColossalAI repository: vit_train_demo.py, args.py, data.py) is
carried to the device machine in an ignored folder and named with ``--example``. This wrapper

1. writes the beans-schema synthetic dataset (``python3 -m vit_train.synthetic``: 1,034 train /
   133 validation images at 224 px, as every grid benchmark here) and a local "pretrained" ViT-B/16
   folder (random weights, ``vit_train.model.save_local_model``: config, safetensors, processor),
   unless ``--model-dir`` names one (the grid benchmark's pre-trained stand-in);
2. starts ``torchrun --standalone --nproc_per_node 1`` on itself in child mode, where
   ``datasets.load_dataset("beans")`` is answered with ``load_from_disk`` of that dataset (the hub
   is unreachable there) before the example's ``data.py`` is imported, then runs
   ``vit_train_demo.py`` with runpy, its own arguments unchanged;
3. records wall time (torchrun start to exit), exit code and the example's printed evaluation
   lines as one JSON line in ``--out``/colossalai_example.jsonl.

Usage (device driver): ``script benchmarks/device/colossalai_example.py --example .cai_example
--batch-size 8 --lr 1e-4 --epochs 5``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import runpy
import subprocess
import sys
import time
from pathlib import Path


def _child(dataset: str, example: str, demo_args: list[str]) -> None:
    import datasets

    real = datasets.load_dataset

    def load_dataset(path: str, *args: object, **kwargs: object) -> object:
        if path == "beans":
            return datasets.load_from_disk(dataset)
        return real(path, *args, **kwargs)

    datasets.load_dataset = load_dataset  # data.py does `from datasets import load_dataset` at import
    sys.path.insert(0, example)
    sys.argv = [str(Path(example) / "vit_train_demo.py"), *demo_args]
    runpy.run_path(sys.argv[0], run_name="__main__")


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2], sys.argv[3], sys.argv[4:])
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--example", type=Path, required=True, help="folder holding vit_train_demo.py, args.py, data.py")
    p.add_argument("--plugin", default="gemini")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--weight-decay", type=float, default=0.5)
    p.add_argument("--warmup-ratio", type=float, default=0.3)
    p.add_argument("--work", type=Path, default=Path("/tmp/cai_example"))
    p.add_argument("--model-dir", type=Path, default=None, help="a local HF ViT folder to start from (e.g. the grid "
                   "benchmark's pre-trained stand-in, WORK/pretrain/model); default: random ViT-B/16 weights")
    step_out = os.environ.get("STEP_OUT")
    p.add_argument("--out", type=Path, required=step_out is None, default=step_out)
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    data, model = a.work / "beans224", a.model_dir or a.work / "vit_b16_local"
    if not data.exists():
        subprocess.run([sys.executable, "-m", "vit_train.synthetic", str(data), "--num-train", "1034",
                        "--num-validation", "133", "--num-test", "12", "--image-size", "224"], check=True)
    if not model.exists():
        import torch

        from vit_train.model import save_local_model

        torch.manual_seed(0)
        save_local_model("vit_b16", model, num_labels=3)
    demo = ["--model_name_or_path", str(model), "--output_path", str(a.work / f"out-{a.batch_size}-{a.lr:g}"),
            "--plugin", a.plugin, "--batch_size", str(a.batch_size), "--num_epoch", str(a.epochs),
            "--learning_rate", str(a.lr), "--weight_decay", str(a.weight_decay), "--warmup_ratio", str(a.warmup_ratio)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
           str(Path(__file__).resolve()), "--child", str(data), str(a.example.resolve()), *demo]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.time() - t0
    text = proc.stdout + proc.stderr
    (a.out / f"example-{a.plugin}-{a.batch_size}-{a.lr:g}.log").write_text(text)
    evals = re.findall(r"[Ee]valuat\w*[^\n]*accuracy[^\n]*", text)
    record = {"plugin": a.plugin, "model_dir": str(model), "batch_size": a.batch_size, "lr": a.lr, "epochs": a.epochs, "exit_code": proc.returncode,
              "wall_s": round(wall, 1), "eval_lines": evals[-a.epochs:], "command": " ".join(cmd)}
    with open(a.out / "colossalai_example.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    print(json.dumps(record))
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
