"""Data, cache and model-building tests on locally generated data and models (the hub is unreachable).

Everything runs for real: the synthetic beans-like dataset is written with save_to_disk and exported
as an image folder, the cache is built by the real image processor, concurrent builders are real
processes, and the "pretrained" model is a real saved folder. The one fake is in
``test_hub_id_goes_to_load_dataset``: ``datasets.load_dataset`` is monkeypatched because the hub
cannot be reached here.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import datasets
import pytest
import torch
from safetensors.torch import load_file
from transformers import ViTImageProcessor

from vit_train.config import ConfigError, DataConfig, ModelConfig
from vit_train.data import ColumnInfo, detect_columns, load_source, prepare, processor_settings
from vit_train.model import build_image_processor, build_model, save_local_model
from vit_train.synthetic import CLASS_NAMES, export_image_folder, main as synthetic_main, make_beans_like

TINY = ModelConfig(name="tiny")


@pytest.fixture(scope="module")
def small_ds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_beans_like(tmp_path_factory.mktemp("small") / "beans", num_train=24, num_validation=12, num_test=6)


@pytest.fixture(scope="module")
def image_folder(small_ds: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_image_folder(small_ds, tmp_path_factory.mktemp("imgs") / "beans-images")


@pytest.fixture(scope="module")
def processor() -> ViTImageProcessor:
    return build_image_processor(TINY)


# ------------------------------------------------------------------------------ synthetic dataset
def test_synthetic_has_beans_schema(small_ds: Path) -> None:
    dd = datasets.load_from_disk(str(small_ds))
    assert list(dd) == ["train", "validation", "test"]
    expected = datasets.Features(
        {
            "image_file_path": datasets.Value("string"),
            "image": datasets.Image(),
            "labels": datasets.ClassLabel(names=["angular_leaf_spot", "bean_rust", "healthy"]),
        }
    )
    for split, n in zip(dd, (24, 12, 6)):
        assert dd[split].features == expected
        assert len(dd[split]) == n
        assert sorted(dd[split]["labels"]) == sorted(i % 3 for i in range(n))  # balanced
    row = dd["train"][0]
    assert row["image"].mode == "RGB" and row["image"].size == (64, 64) and row["image"].format == "PNG"
    assert row["image_file_path"].endswith(".png") and CLASS_NAMES[row["labels"]] in row["image_file_path"]


def test_synthetic_is_deterministic_and_idempotent(small_ds: Path, tmp_path: Path) -> None:
    again = make_beans_like(tmp_path / "again", num_train=24, num_validation=12, num_test=6)
    other = make_beans_like(tmp_path / "other", num_train=24, num_validation=12, num_test=6, seed=1)
    def fingerprints(folder: Path) -> list[str]:
        return [ds._fingerprint for ds in datasets.load_from_disk(str(folder)).values()]

    assert fingerprints(again) == fingerprints(small_ds) and fingerprints(other) != fingerprints(small_ds)
    mtime = (again / "dataset_dict.json").stat().st_mtime_ns
    assert make_beans_like(again, num_train=24, num_validation=12, num_test=6) == again  # same params: untouched
    assert (again / "dataset_dict.json").stat().st_mtime_ns == mtime
    with pytest.raises(FileExistsError):
        make_beans_like(again, num_train=25)


def test_synthetic_images_do_not_depend_on_the_number_of_drawing_processes(tmp_path: Path) -> None:
    """80 training images (above the 64 where processes start) drawn by 1 and by 3 processes: same bytes."""
    kw = dict(num_train=80, num_validation=2, num_test=1, image_size=16)
    one = make_beans_like(tmp_path / "one", **kw)
    three = make_beans_like(tmp_path / "three", **kw, num_proc=3)

    def pngs(folder: Path) -> list[bytes]:
        train = datasets.load_from_disk(str(folder))["train"].cast_column("image", datasets.Image(decode=False))
        return [row["bytes"] for row in train["image"]]

    assert len(set(pngs(one))) == 80 and pngs(one) == pngs(three)


def test_cli_writes_dataset_and_image_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    synthetic_main([str(tmp_path / "cli"), "--num-train", "3", "--num-validation", "3", "--num-test", "3", "--image-folder"])
    assert (tmp_path / "cli" / "dataset_dict.json").is_file()
    pngs = sorted(p.relative_to(tmp_path / "cli-images").as_posix() for p in (tmp_path / "cli-images").rglob("*.png"))
    assert len(pngs) == 9 and all(p.split("/")[0] in ("train", "validation", "test") for p in pngs)
    assert all(p.split("/")[1] in CLASS_NAMES for p in pngs)


def test_tiny_vit_learns_synthetic_beans(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Learnability check: a randomly initialised tiny ViT, plain torch loop, clearly above 1/3 chance."""
    root = tmp_path_factory.mktemp("learn")
    ds = make_beans_like(root / "beans", num_train=600, num_validation=150, num_test=3)
    prepared = prepare(DataConfig(dataset=str(ds), cache_dir=str(root / "cache")), build_image_processor(TINY))
    x_train, y_train = prepared.train.tensors(torch.float32)
    x_val, y_val = prepared.eval.tensors(torch.float32)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: extra threads only add sync overhead (10x slower on 2 cores)
    try:
        torch.manual_seed(0)
        model = build_model(TINY, prepared.class_names)
        epochs, batch_size = 40, 32
        steps = epochs * -(-len(y_train) // batch_size)
        opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.1)
        gen = torch.Generator().manual_seed(0)
        started = time.time()
        model.train()
        for _ in range(epochs):
            for idx in torch.randperm(len(y_train), generator=gen).split(batch_size):
                xb = x_train[idx]
                flip = torch.rand(len(idx), generator=gen) < 0.5  # leaves have no left/right
                xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
                loss = model(pixel_values=xb, labels=y_train[idx]).loss
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
        model.eval()
        with torch.no_grad():
            accuracy = (model(pixel_values=x_val).logits.argmax(-1) == y_val).float().mean().item()
    finally:
        torch.set_num_threads(threads)
    print(f"tiny ViT val accuracy {accuracy:.3f} after {steps} steps in {time.time() - started:.1f}s")
    assert accuracy >= 0.6, f"val accuracy {accuracy:.3f} (chance 0.33)"


# ------------------------------------------------------------------------------ loading and columns
def test_load_save_to_disk_folder(small_ds: Path) -> None:
    dd = load_source(DataConfig(dataset=str(small_ds)))
    assert list(dd) == ["train", "validation", "test"]
    assert detect_columns(dd, DataConfig()) == ColumnInfo("image", "labels", CLASS_NAMES)


def test_load_image_folder(image_folder: Path, small_ds: Path) -> None:
    dd = load_source(DataConfig(dataset=str(image_folder)))
    assert sorted(dd) == ["test", "train", "validation"]
    assert {s: len(d) for s, d in dd.items()} == {"train": 24, "validation": 12, "test": 6}
    assert detect_columns(dd["train"], DataConfig()) == ColumnInfo("image", "label", CLASS_NAMES)
    # Same pixels as the save_to_disk copy (the bytes were copied, not re-encoded).
    original = datasets.load_from_disk(str(small_ds))["validation"]
    by_name = {Path(r["image_file_path"]).name: r["image"].tobytes() for r in original}
    for row in dd["validation"]:
        assert row["image"].tobytes() == by_name[Path(row["image"].filename).name]


def test_hub_id_goes_to_load_dataset(monkeypatch: pytest.MonkeyPatch, small_ds: Path, tmp_path: Path, processor) -> None:
    """Fake: the hub is unreachable here, so only ``datasets.load_dataset`` is replaced, by a function
    that records its arguments and returns the local synthetic copy."""
    calls = []

    def fake_load_dataset(path: str, *args, **kwargs) -> datasets.DatasetDict:
        calls.append((path, args, kwargs))
        return datasets.load_from_disk(str(small_ds))

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    cfg = DataConfig(dataset="AI-Lab-Makerere/beans", revision="0123abc", cache_dir=str(tmp_path))
    assert list(load_source(cfg)) == ["train", "validation", "test"]
    assert calls == [("AI-Lab-Makerere/beans", (), {"revision": "0123abc"})]
    prepared = prepare(cfg, processor)
    assert prepared.class_names == CLASS_NAMES and prepared.cache_path.name.startswith("beans-")


def test_missing_local_folder_is_not_sent_to_the_hub(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such folder"):
        load_source(DataConfig(dataset=str(tmp_path / "nope")))


def test_unknown_split_lists_available(small_ds: Path, tmp_path: Path, processor) -> None:
    with pytest.raises(ConfigError, match=r"data.eval_split='valid'.*use one of train, validation, test"):
        prepare(DataConfig(dataset=str(small_ds), eval_split="valid", cache_dir=str(tmp_path)), processor)


def _empty(features: dict) -> datasets.Dataset:
    return datasets.Dataset.from_dict({k: [] for k in features}, features=datasets.Features(features))


def test_column_detection_errors() -> None:
    img, lab = datasets.Image(), datasets.ClassLabel(names=["a", "b"])
    two_images = _empty({"img_a": img, "img_b": img, "y": lab})
    with pytest.raises(ConfigError, match=r"data.image_column=None: cannot decide.*img_a.*img_b"):
        detect_columns(two_images, DataConfig())
    assert detect_columns(two_images, DataConfig(image_column="img_b")) == ColumnInfo("img_b", "y", ["a", "b"])
    with pytest.raises(ConfigError, match=r"data.image_column='photo': no such column; columns are img_a \(Image\)"):
        detect_columns(two_images, DataConfig(image_column="photo"))
    int_labels = _empty({"image": img, "label": datasets.Value("int64")})
    no_class_label = r"data.label_column=None: cannot decide, no columns of type ClassLabel.*label \(int64\)"
    with pytest.raises(ConfigError, match=no_class_label):
        detect_columns(int_labels, DataConfig())
    with pytest.raises(ConfigError, match="not ClassLabel"):
        detect_columns(int_labels, DataConfig(label_column="label"))


# ------------------------------------------------------------------------------ the cache
def test_cache_built_once_and_keyed_by_processor(small_ds: Path, tmp_path: Path, processor) -> None:
    cfg = DataConfig(dataset=str(small_ds), cache_dir=str(tmp_path))
    first = prepare(cfg, processor)
    files = sorted(first.cache_path.iterdir())
    assert [f.name for f in files] == ["eval.safetensors", "meta.json", "train.safetensors"]
    mtimes = [f.stat().st_mtime_ns for f in files]
    second = prepare(cfg, processor)
    assert first.built and not second.built and second.cache_path == first.cache_path
    assert [f.stat().st_mtime_ns for f in files] == mtimes  # read, not re-processed
    assert torch.equal(second.train.tensors()[0], first.train.tensors()[0])

    item = second.train[0]
    assert item["pixel_values"].dtype == torch.float32 and item["pixel_values"].shape == (3, 32, 32)
    assert item["labels"].dtype == torch.int64
    assert len(second.train) == 24 and len(second.eval) == 12
    on_disk = load_file(str(first.cache_path / "train.safetensors"))  # the mmap reader agrees with safetensors'
    assert torch.equal(on_disk["pixel_values"], second.train.pixel_values)
    assert torch.equal(on_disk["labels"], second.train.labels)

    bigger = ViTImageProcessor(**{**processor.to_dict(), "size": {"height": 48, "width": 48}})
    other = prepare(cfg, bigger)
    assert other.built and other.cache_path != first.cache_path and other.train[0]["pixel_values"].shape == (3, 48, 48)
    fewer = prepare(DataConfig(dataset=str(small_ds), cache_dir=str(tmp_path), max_train_samples=5), processor)
    assert fewer.built and fewer.cache_path not in (first.cache_path, other.cache_path) and len(fewer.train) == 5
    meta = json.loads((first.cache_path / "meta.json").read_text())
    assert meta["class_names"] == CLASS_NAMES and meta["key_material"]["processor"] == processor_settings(processor)


@pytest.mark.parametrize("damage", ["truncate_train", "garbage_eval_header", "meta_not_json", "meta_wrong_count"])
def test_damaged_cache_is_rebuilt(small_ds: Path, tmp_path: Path, processor, damage: str, caplog) -> None:
    """A cache folder damaged after it was completed (disk full, a copy cut short, a hand edit) is
    detected at open and rebuilt under the lock, instead of failing every run that uses it."""
    cfg = DataConfig(dataset=str(small_ds), cache_dir=str(tmp_path))
    good = prepare(cfg, processor)
    expected = [t.clone() for t in (*good.train.tensors(), *good.eval.tensors())]
    folder = good.cache_path
    del good
    if damage == "truncate_train":
        f = folder / "train.safetensors"
        f.write_bytes(f.read_bytes()[:-100])
    elif damage == "garbage_eval_header":
        f = folder / "eval.safetensors"
        data = bytearray(f.read_bytes())
        data[8:16] = b"\x00garbage"
        f.write_bytes(bytes(data))
    elif damage == "meta_not_json":
        (folder / "meta.json").write_text("{ not json")
    else:
        meta = json.loads((folder / "meta.json").read_text())
        meta["num_samples"]["train"] += 1
        (folder / "meta.json").write_text(json.dumps(meta))
    with caplog.at_level(logging.WARNING, logger="vit_train.data"):
        again = prepare(cfg, processor)
    assert again.built and again.cache_path == folder
    assert "damaged, rebuilding" in caplog.text
    got = [*again.train.tensors(), *again.eval.tensors()]
    assert all(torch.equal(a, b) for a, b in zip(got, expected))
    assert not prepare(cfg, processor).built  # the rebuilt cache is read as it is from then on


def test_float16_storage_loses_nothing(small_ds: Path, tmp_path: Path, processor) -> None:
    """Backs the float16 choice: on real processor output the rounding is far below one 8-bit pixel
    step, and no two distinct pixel levels collapse into one."""
    prepared = prepare(DataConfig(dataset=str(small_ds), cache_dir=str(tmp_path)), processor)
    images = datasets.load_from_disk(str(small_ds))["validation"]["image"]
    exact = torch.from_numpy(processor(images=list(images), return_tensors="np")["pixel_values"])
    stored = prepared.eval.tensors()[0]
    assert stored.dtype == torch.float16
    step = 1 / 255 / 0.5  # one 8-bit level after normalisation with std 0.5
    assert (stored.float() - exact).abs().max().item() < step / 8
    for c in range(3):
        assert exact[:, c].unique().numel() == stored[:, c].unique().numel()


def test_pickled_split_remaps_file(small_ds: Path, tmp_path: Path, processor) -> None:
    import pickle

    split = prepare(DataConfig(dataset=str(small_ds), cache_dir=str(tmp_path)), processor).train
    blob = pickle.dumps(split)
    assert len(blob) < 1000  # the path, not the pixels (spawned DataLoader workers)
    assert torch.equal(pickle.loads(blob).pixel_values, split.pixel_values)


def _prepare_in_child(dataset: str, cache_dir: str, barrier, results) -> None:
    barrier.wait()  # start together, so both really race for the lock
    prepared = prepare(DataConfig(dataset=dataset, cache_dir=cache_dir), build_image_processor(TINY))
    results.put((prepared.built, str(prepared.cache_path), prepared.train.tensors()[0].sum().item()))


def test_concurrent_processes_build_once(image_folder: Path, tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")  # separate interpreters, like ranks on one node
    barrier, results = ctx.Barrier(2), ctx.Queue()
    args = (str(image_folder), str(tmp_path), barrier, results)
    procs = [ctx.Process(target=_prepare_in_child, args=args) for _ in range(2)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert sorted(built for built, _, _ in outcomes) == [False, True]
    assert len({path for _, path, _ in outcomes}) == 1 and len({s for _, _, s in outcomes}) == 1
    assert not list(Path(tmp_path, "prepared").glob(".tmp-*"))


@pytest.mark.timeout(120)
def test_lock_of_killed_builder_is_released(small_ds: Path, tmp_path: Path, processor) -> None:
    """A builder killed with SIGKILL mid-build leaves its lock file and temp folder behind; flock is
    released by the kernel, so the next caller waits only while the holder lives, then builds."""
    cfg = DataConfig(dataset=str(small_ds), cache_dir=str(tmp_path))
    final = prepare(cfg, processor).cache_path
    shutil.rmtree(final)
    stale_tmp = final.parent / f".tmp-{final.name}-99999-deadbeef"
    stale_tmp.mkdir()
    (stale_tmp / "train.safetensors").write_bytes(b"partial")
    hold = "import filelock, sys, time; lock = filelock.FileLock(sys.argv[1]); lock.acquire(); print('held', flush=True); time.sleep(300)"
    holder = subprocess.Popen(
        [sys.executable, "-c", hold, str(final.parent / f"{final.name}.lock")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        result = {}
        waiter = threading.Thread(target=lambda: result.update(p=prepare(cfg, processor)))
        waiter.start()
        time.sleep(1.0)
        assert waiter.is_alive(), "prepare did not wait for the live lock holder"
    finally:
        holder.kill()
        holder.wait()
    waiter.join(timeout=60)
    assert not waiter.is_alive() and result["p"].built and result["p"].cache_path == final
    assert not stale_tmp.exists() and len(result["p"].train) == 24


# ------------------------------------------------------------------------------ model
def test_preset_model_and_processor() -> None:
    torch.manual_seed(0)
    model = build_model(TINY, CLASS_NAMES)
    assert model.config.num_labels == 3 and model.classifier.out_features == 3
    assert model.config.id2label == dict(enumerate(CLASS_NAMES)) and model.config.label2id["healthy"] == 2
    assert model.config._attn_implementation == "sdpa"
    proc = build_image_processor(TINY)
    assert proc.size == {"height": 32, "width": 32} and proc.image_mean == [0.5] * 3 and proc.resample == 2
    with pytest.raises(ValueError, match="duplicates"):
        build_model(TINY, ["a", "a"])


def test_preset_model_is_created_on_the_given_device() -> None:
    """The trainer passes its device (a GPU on a cluster; no GPU here, so the meta device stands in
    for "not the CPU"): every weight is created there, none on the CPU. On the CPU the weights are
    the default build's, bit for bit, and initialised (not torch's defaults left in place)."""
    meta = build_model(TINY, CLASS_NAMES, torch.device("meta"))
    assert {t.device.type for t in [*meta.parameters(), *meta.buffers()]} == {"meta"}
    torch.manual_seed(0)
    default = build_model(TINY, CLASS_NAMES)
    torch.manual_seed(0)
    on_cpu = build_model(TINY, CLASS_NAMES, torch.device("cpu"))
    assert all(torch.equal(a, b) for a, b in zip(default.state_dict().values(), on_cpu.state_dict().values()))
    assert float(on_cpu.classifier.bias.abs().max()) == 0.0  # transformers' init: zero biases
    assert 0.01 < float(on_cpu.classifier.weight.std()) < 0.03  # trunc_normal std 0.02


def test_from_pretrained_gets_new_head(tmp_path: Path) -> None:
    torch.manual_seed(0)
    folder = save_local_model("tiny", tmp_path / "pretrained", num_labels=1000)
    assert {p.name for p in folder.iterdir()} >= {"config.json", "model.safetensors", "preprocessor_config.json"}
    saved = load_file(str(folder / "model.safetensors"))
    assert saved["classifier.weight"].shape == (1000, 64)

    torch.manual_seed(1)
    model = build_model(ModelConfig(name=str(folder), attn_implementation="eager"), CLASS_NAMES)
    assert model.classifier.weight.shape == (3, 64) and model.config.num_labels == 3
    assert model.config.id2label == {0: "angular_leaf_spot", 1: "bean_rust", 2: "healthy"}
    assert model.config._attn_implementation == "eager"
    encoder = {k: v for k, v in model.state_dict().items() if not k.startswith("classifier.")}
    assert encoder.keys() == {k for k in saved if not k.startswith("classifier.")}
    assert all(torch.equal(v, saved[k]) for k, v in encoder.items())
    # The saved processor is the preset's: same settings, hence the same cache key.
    loaded = build_image_processor(ModelConfig(name=str(folder)))
    assert processor_settings(loaded) == processor_settings(build_image_processor(TINY))


def test_same_size_head_kept_only_for_same_labels(tmp_path: Path) -> None:
    torch.manual_seed(0)
    folder = save_local_model("tiny", tmp_path / "three", num_labels=3)  # labels LABEL_0..2
    saved = load_file(str(folder / "model.safetensors"))["classifier.weight"]
    other = build_model(ModelConfig(name=str(folder)), CLASS_NAMES)
    assert not torch.equal(other.classifier.weight, saved)  # other classes: fresh head
    same = build_model(ModelConfig(name=str(folder)), ["LABEL_0", "LABEL_1", "LABEL_2"])
    assert torch.equal(same.classifier.weight, saved)  # resuming on the same labels: kept
