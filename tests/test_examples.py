"""The training examples at their --quick budget: they run, learn, print their summary and draw.

The MNIST-1D and digits examples run as users run them (a subprocess); the others run in this process
so that torchvision's download paths can be replaced by local stand-ins (FakeData, a random
state_dict): nothing here touches the network.
"""
import os
import re
import subprocess
import sys

import pytest
import torch
import torchvision

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
PICTURES = ("curves.png", "filters.png", "feature_maps.png")


def run_script(name, *args):
    # One thread: these models are small, and a second thread only adds waiting when the cores are
    # shared with other work.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])),
               OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, os.path.join(EXAMPLES, name), *args], capture_output=True, text=True,
                            cwd=ROOT, env=env, timeout=600)
    assert result.returncode == 0, f"{name} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result.stdout


def assert_pictures(folder):
    for name in PICTURES:
        path = os.path.join(folder, name)
        assert os.path.isfile(path), f"missing {path}"
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"


@pytest.fixture
def examples_on_path(monkeypatch):
    """The example modules importable in this process, run on one thread (as run_script does)."""
    monkeypatch.syspath_prepend(EXAMPLES)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_mnist1d_quick_fastconv_and_torch_side_by_side(tmp_path):
    out = run_script("train_mnist1d.py", "--quick", "--out", str(tmp_path))
    accuracy = {name: float(acc) for name, acc in re.findall(r"^(fastconv|torch\.nn)\s+([\d.]+)%", out, re.M)}
    assert set(accuracy) == {"fastconv", "torch.nn"}, out
    assert accuracy["fastconv"] >= 60.0, out  # chance is 10%; two epochs reach about 90%
    assert abs(accuracy["fastconv"] - accuracy["torch.nn"]) <= 0.5, out
    assert "accuracy difference fastconv - torch.nn" in out
    assert_pictures(tmp_path)


def test_images_digits_quick(tmp_path):
    out = run_script("train_images.py", "--quick", "--out", str(tmp_path))
    assert "fastconv.Conv2d(1, 32" in out and "fastconv.MaxPool2d" in out  # the model really is fastconv's
    (accuracy,) = re.findall(r"^fastconv\s.*?([\d.]+)%\s+\S+ s\s*$", out, re.M)
    assert float(accuracy) >= 80.0, out  # chance is 10%
    assert_pictures(tmp_path / "digits")


@pytest.mark.parametrize("dataset,shape", [("mnist", (1, 28, 28)), ("cifar10", (3, 32, 32))])
def test_images_torchvision_datasets_without_download(dataset, shape, tmp_path, monkeypatch, examples_on_path):
    """The online path, with torchvision's dataset class replaced by FakeData of the same image shape."""
    import train_images

    calls = []

    def offline_dataset(root, train, transform, download):
        calls.append((root, train, download))
        return torchvision.datasets.FakeData(size=300 if train else 100, image_size=shape, num_classes=10,
                                             transform=transform, random_offset=0 if train else 300)

    class_name = train_images.TORCHVISION_DATASETS[dataset][0]
    monkeypatch.setattr(torchvision.datasets, class_name, offline_dataset)
    history = train_images.main(["--quick", "--dataset", dataset, "--workers", "0", "--out", str(tmp_path),
                                 "--data", str(tmp_path / "data")])
    assert calls == [(str(tmp_path / "data"), True, True), (str(tmp_path / "data"), False, True)]
    assert len(history["test_acc"]) == 2
    assert_pictures(tmp_path / dataset)


def test_images_fakedata(tmp_path, examples_on_path):
    import train_images

    history = train_images.main(["--quick", "--dataset", "fake", "--workers", "0", "--out", str(tmp_path)])
    assert len(history["train_loss"]) == 2 and all(loss > 0 for loss in history["train_loss"])
    assert_pictures(tmp_path / "fake")


def test_finetune_pretrains_saves_and_reuses_a_checkpoint(tmp_path, examples_on_path, capsys):
    import finetune_resnet

    result = finetune_resnet.main(["--quick", "--out", str(tmp_path / "first")])
    out = capsys.readouterr().out
    assert "pretrain on digits 0-4" in out and "(a) frozen features + new head" in out
    assert "(b) fine-tuned" in out and "from scratch (baseline)" in out
    assert re.search(r"starting from the digits 0-4 checkpoint (beats|does NOT beat) starting from scratch", out)
    assert 0.0 <= result["transfer"] <= 100.0 and 0.0 <= result["scratch"] <= 100.0
    assert_pictures(tmp_path / "first")

    checkpoint = torch.load(result["checkpoint"], weights_only=True)
    assert checkpoint["classes"] == [0, 1, 2, 3, 4] and checkpoint["model"]["fc.weight"].shape == (5, 512)

    # --weights PATH: no pretraining; the backbone comes from the checkpoint
    finetune_resnet.main(["--quick", "--weights", result["checkpoint"], "--no-baseline",
                          "--out", str(tmp_path / "second")])
    out = capsys.readouterr().out
    assert "pretrain on digits 0-4" not in out and "(b) fine-tuned" in out
    assert f"starting from {result['checkpoint']}" in out


def test_finetune_backbone_really_comes_from_the_checkpoint(tmp_path, examples_on_path):
    import finetune_resnet

    source = torchvision.models.resnet18()
    path = tmp_path / "plain_torchvision.pt"
    torch.save(source.state_dict(), path)  # a plain torchvision state_dict, 1000-class head
    model = finetune_resnet.resnet18(5, "auto")
    mean, std = finetune_resnet.load_backbone(model, str(path))
    assert (mean, std) == (finetune_resnet.IMAGENET_MEAN, finetune_resnet.IMAGENET_STD)
    assert torch.equal(model.layer3[1].conv2.weight, source.layer3[1].conv2.weight)
    assert type(model.layer3[1].conv2).__module__ == "fastconv.nn"
    torch.save({"conv.weight": torch.zeros(1)}, path)
    with pytest.raises(RuntimeError, match="not a ResNet-18 checkpoint"):
        finetune_resnet.load_backbone(model, str(path))


def test_finetune_imagenet_weights_through_torchvision_api(tmp_path, examples_on_path, monkeypatch, capsys):
    """--weights imagenet asks torchvision's weights API; the download is replaced by a local state_dict."""
    import finetune_resnet
    import torchvision.models._api as weights_api

    urls = []

    def local_state_dict(url, *args, **kwargs):
        urls.append(url)
        return torchvision.models.resnet18().state_dict()

    monkeypatch.setattr(weights_api, "load_state_dict_from_url", local_state_dict)
    finetune_resnet.main(["--quick", "--weights", "imagenet", "--no-baseline", "--out", str(tmp_path)])
    assert urls == [torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url]
    assert "starting from ImageNet weights" in capsys.readouterr().out


def test_finetune_rejects_a_missing_checkpoint(examples_on_path, tmp_path):
    import finetune_resnet

    with pytest.raises(SystemExit):
        finetune_resnet.main(["--quick", "--weights", str(tmp_path / "nothing.pt"), "--out", str(tmp_path)])
