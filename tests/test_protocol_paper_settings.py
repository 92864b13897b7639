"""Settings of `protocol=paper` that follow the released code or the setups the paper cites: COPA as MeZO's
fine-tuning script trains it, the adapter's initialisation, and the vision protocol of Table 2."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from rmpeft.errors import RmpeftError
from rmpeft.identity import identity_hash, run_identity
from rmpeft.methods import MethodContext, get_method
from rmpeft.run import check_config
from tests.helpers import compose_train


# ------------------------------------------------------------------------------------------------ COPA


def test_paper_protocol_trains_copa_as_mezos_finetune_script():
    """MeZO's large_models/finetune.sh: Copa) DEV=100, --train_as_classification False (LM loss on the
    gold option only, only_train_option defaults to True)."""
    paper = compose_train(["protocol=paper", "task=copa"]).task
    assert (paper.objective, paper.num_val) == ("lm", 100)
    clean = compose_train(["task=copa"]).task
    assert (clean.objective, clean.num_val) == ("classification", 100)


# --------------------------------------------------------------------------------------------- adapter


def _adapted(down_bias_init: str | None):
    """A two-layer toy with an adapter after each ``out`` projection (``down_bias_init`` as given)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 6), nn.Linear(6, 6))
    for i, layer in enumerate(model):
        model._modules[str(i)] = nn.Sequential()
        model._modules[str(i)].add_module("out", layer)
    cfg = {"name": "adapter", "bottleneck": 3, "activation": "relu", "target_modules": ["out"]}
    if down_bias_init is not None:
        cfg["down_bias_init"] = down_bias_init
    x = torch.randn(4, 6)
    before = model(x).detach().clone()
    get_method("adapter").apply(model, OmegaConf.create(cfg), MethodContext(seed=0))
    return model, model(x).detach(), before


def test_adapter_down_bias_init_follows_the_field_and_the_paper_protocol_keeps_the_released_init():
    assert compose_train(["method=adapter"]).method.down_bias_init == "zero"
    assert compose_train(["protocol=paper", "method=adapter"]).method.down_bias_init == "default"
    for init, nonzero in (("zero", False), ("default", True), (None, False)):
        model, after, before = _adapted(init)
        adapters = [m.out.adapter for m in model]
        assert all(bool(a.down.bias.abs().sum() > 0) is nonzero for a in adapters), init
        assert all(a.up.weight.abs().sum() == 0 and a.up.bias.abs().sum() == 0 for a in adapters)
        assert torch.equal(after, before)      # the output is unchanged at initialisation either way
    # nn.Linear's own init: uniform in +-1/sqrt(fan_in)
    model, _, _ = _adapted("default")
    assert all(float(m.out.adapter.down.bias.detach().abs().max()) <= 6 ** -0.5 for m in model)


def test_adapter_down_bias_init_is_validated_and_neutral_for_earlier_identities():
    cfg = compose_train(["method=adapter", "method.down_bias_init=normal"])
    with pytest.raises(RmpeftError, match=r"^method\.down_bias_init='normal' is invalid; expected one of "
                                          r"zero, default"):
        check_config(cfg)
    clean = compose_train(["method=adapter"])
    assert "down_bias_init" not in run_identity(clean)["method"]
    paper = compose_train(["method=adapter", "method.down_bias_init=default"])
    assert identity_hash(paper) != identity_hash(clean)


# ------------------------------------------------------------------------------------- vision (Table 2)

IMAGE_TASKS = ("cifar10", "gtsrb", "mnist", "svhn", "resisc45", "digits")


@pytest.mark.parametrize("task", IMAGE_TASKS)
def test_vision_paper_protocol_follows_the_cited_fine_tuning_scripts(task):
    """task_vectors / tangent_task_arithmetic src/finetune.py: clip_grad_norm_(params, 1.0), evaluation
    after the last step, open_clip's training preprocessing (a random resized crop)."""
    paper = compose_train(["experiment=table2", "protocol=paper", f"task={task}"])
    check_config(paper)
    assert (paper.optim.max_grad_norm, paper.trainer.select_epoch_by, paper.task.train_augment) == \
           (1.0, "last", "random_resized_crop")
    assert (paper.optim.weight_decay, paper.trainer.max_steps, paper.optim.warmup_steps) == (0.1, 2000, 200)
    clean = compose_train(["experiment=table2", f"task={task}"])
    assert (clean.optim.max_grad_norm, clean.trainer.select_epoch_by, clean.task.train_augment) == \
           (None, "val_metric", "none")
    assert "train_augment" not in run_identity(clean)["task"]      # earlier vision identities are kept
    assert identity_hash(paper) != identity_hash(clean)


def test_train_augment_is_validated():
    with pytest.raises(RmpeftError, match=r"^task\.train_augment='flip' is invalid; expected one of none, "
                                          r"random_resized_crop"):
        check_config(compose_train(["experiment=table2", "task.train_augment=flip"]))


def _digits(augment: str, seed: int = 0):
    from rmpeft.vision.data import load_image_splits
    cfg = compose_train(["experiment=smoke-vision", f"task.train_augment={augment}"]).task
    return load_image_splits(cfg, data_seed=seed)


def test_random_resized_crop_follows_open_clip_and_touches_only_training_images():
    from rmpeft.vision.data import CROP_RATIO, CROP_SCALE
    assert (CROP_SCALE, CROP_RATIO) == ((0.9, 1.0), (3 / 4, 4 / 3))    # open_clip's training transform
    plain, aug = _digits("none"), _digits("random_resized_crop")
    assert all(aug[s].augment is None for s in ("validation", "test")) and plain["train"].augment is None
    boxes = [aug["train"][i].box for i in range(200)]
    assert all(ex.box is None for ex in (plain["train"][0], aug["test"][0], aug["validation"][0]))
    width, height = aug["train"][0].image.size
    for left, top, right, bottom in boxes:
        area = (right - left) * (bottom - top) / (width * height)
        assert 0 <= left < right <= width and 0 <= top < bottom <= height
        assert 0.85 <= area <= 1.0                         # 0.9-1.0 of the image, up to rounding to pixels
    assert len(set(boxes)) > 10                            # drawn anew for every image read
    # the same seed draws the same crops in the same order; another seed others
    again, other = _digits("random_resized_crop")["train"], _digits("random_resized_crop", seed=1)["train"]
    assert [again[i].box for i in range(20)] == boxes[:20]
    assert [other[i].box for i in range(20)] != boxes[:20]
    # each epoch draws other crops, and an epoch's crops depend on nothing else (read order, earlier
    # epochs): a resumed run draws those of an uninterrupted one
    again.set_epoch(2)
    second = [again[i].box for i in range(20)]
    assert second != boxes[:20]
    fresh = _digits("random_resized_crop")["train"]
    fresh.set_epoch(2)
    assert [fresh[i].box for i in reversed(range(20))] == second[::-1]


def test_collate_resizes_the_crop_to_the_processors_size():
    from rmpeft.vision.data import ImageExample, collate_images
    from PIL import Image

    class Processor:  # records what the model's processor receives
        crop_size = {"height": 8, "width": 8}

        def __call__(self, images, return_tensors):
            self.sizes = [im.size for im in images]
            return {"pixel_values": torch.stack([torch.from_numpy(np.asarray(im, dtype=np.float32)).permute(2, 0, 1)
                                                 for im in images])}

    img = Image.new("RGB", (20, 10))
    img.paste((255, 0, 0), (0, 0, 14, 10))                 # red beyond the crop, so no black bleeds in
    plain = Image.new("RGB", (8, 8), (0, 0, 255))
    proc = Processor()
    batch = collate_images([ImageExample(img, 1, box=(0, 0, 10, 10)), ImageExample(plain, 2)], proc)
    assert proc.sizes == [(8, 8), (8, 8)]                   # the crop is resized to the processor's size
    assert tuple(batch.pixel_values.shape) == (2, 3, 8, 8)
    red, blue = batch.pixel_values
    assert float(red[0].min()) == 255.0 and float(red[1:].max()) == 0.0     # only the red half was cropped
    assert float(blue[2].min()) == 255.0                    # an example without a box goes through as it is
    assert batch.labels.tolist() == [1, 2]


def test_a_vision_run_under_the_paper_protocol_trains_on_crops_and_tests_the_last_weights(cache_dir, results_root):
    from rmpeft.trainer import train
    cfg = compose_train(["experiment=smoke-vision", "protocol=paper", f"cache_dir={cache_dir}",
                         f"results_root={results_root}", "trainer.progress=false", "trainer.epochs=2",
                         "trainer.max_steps=4", "task.num_train=64", "task.full_train=false", "task.num_test=32"])
    rec = train(cfg)
    assert rec["status"] == "finished" and len(rec["epochs"]) == 2 and rec["best_epoch"] == 2
    assert rec["config"]["task"]["train_augment"] == "random_resized_crop"
    assert rec["config"]["optim"]["max_grad_norm"] == 1.0


# ------------------------------------------------------------------------------------------------ sweeps

# The sweeps behind Figure 3, Figure 4 (and 9-11), Tables 1/5, 2, 3 and 4 and the Structured Masking
# table: all under the paper protocol, so that the figures and tables share Table 1's settings.
PAPER_SWEEPS = ("table1", "structured", "fig3", "fig4a", "fig4b", "fulltrain", "llama2", "table2")


@pytest.mark.parametrize("name", PAPER_SWEEPS)
def test_paper_sweeps_compose_under_the_paper_protocol(name):
    from rmpeft.sweeps.spec import load_sweep
    from tests.helpers import REPO
    runs = load_sweep(REPO / "sweeps" / f"{name}.yaml").runs()
    assert all("protocol=paper" in run for run in runs)
    # one composed run per method (and ratio band), first and last: the protocol reaches every one
    sample = {}
    for run in runs:
        sample.setdefault(tuple(o for o in run if o.startswith("method=")), run)
    for run in [*sample.values(), runs[-1]]:
        cfg = compose_train(list(run))
        check_config(cfg)
        assert cfg.protocol.name == "paper" and cfg.optim.max_grad_norm == 1.0, run
        if cfg.model.get("family") == "clip":
            assert (cfg.trainer.select_epoch_by, cfg.task.train_augment) == ("last", "random_resized_crop")
        elif cfg.method.name != "adalora":
            assert cfg.trainer.select_epoch_by == "val_loss"


def test_fig4a_sweep_measures_sharpness_and_distance_on_the_figures_tasks():
    """Figure 4(a) on SST-2 and its analogues on RTE, COPA and WiC (Figures 9-11): every Random Masking
    share of Table 5 and full fine-tuning, with the Hessian measured before and after training."""
    from rmpeft.sweeps.spec import load_sweep
    from tests.helpers import REPO
    runs = [dict(o.split("=", 1) for o in run) for run in load_sweep(REPO / "sweeps" / "fig4a.yaml").runs()]
    assert {r["task"] for r in runs} == {"sst2", "rte", "copa", "wic"}
    assert all(r["analysis.hessian"] == "true" and r["name"] == "fig4a" for r in runs)
    shares = {(r["method"], r.get("method.ratio") and float(r["method.ratio"])) for r in runs}
    assert shares == {("ft", None)} | {("masking", x) for x in (1e-1, 5e-2, 1e-2, 5e-3, 1e-3, 5e-4, 1e-4, 5e-5, 1e-5)}
    assert {float(r["optim.lr"]) for r in runs} == {1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1}
    cfg = compose_train(list(load_sweep(REPO / "sweeps" / "fig4a.yaml").runs()[0]))
    assert cfg.analysis.hessian is True and cfg.task.name == "sst2" and cfg.protocol.name == "paper"
