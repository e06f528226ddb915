"""Transfer learning with a torchvision ResNet-18 converted to fastconv.

A network trained on one task has learned features (edges, strokes, parts) that help on another. Two
ways to reuse it, both run here on the target task after fastconv.convert(resnet18):
  (a) feature extraction: freeze the network, train only a new linear head on its features;
  (b) fine-tuning: then let everything learn, with a lower learning rate.
A ResNet-18 trained from scratch on the target task with the same budget as (a) + (b) is the baseline.
With so few labelled images the result depends on which ones are labelled: the target task is run for
several draws of them (--draws) and the mean is compared.

Where the starting weights come from (--weights):
  pretrain   (default, offline) pretrain on digits 0-4 of scikit-learn's 8x8 digits, save that
             checkpoint, then transfer to digits 5-9 with only two labelled images per class
  imagenet   torchvision's ImageNet weights (ResNet18_Weights.IMAGENET1K_V1; downloaded, needs internet)
  PATH       a local checkpoint: one saved by this example, or a torchvision ResNet-18 state_dict

    python examples/finetune_resnet.py            # offline, default budget
    python examples/finetune_resnet.py --quick    # seconds: checks that everything runs
"""
import os
import time

import torch
import torch.nn.functional as F
import torchvision

import fastconv
from common import (TensorLoader, base_parser, capture_feature_maps, fill_budget, plot_curves, plot_feature_maps,
                    plot_filters, print_summary, train)

SOURCE_CLASSES, TARGET_CLASSES = (0, 1, 2, 3, 4), (5, 6, 7, 8, 9)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# ----------------------------------------------------------------------------------------------
# Data: the 8x8 digits as small RGB images
# ----------------------------------------------------------------------------------------------


def digits_as_rgb(size, mean, std):
    """scikit-learn's digits upsampled to size x size, grey copied to 3 channels, normalised per channel."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    images = images.expand(-1, 3, -1, -1)
    images = (images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    return images.contiguous(), torch.tensor(digits.target)


def task_split(images, labels, classes, train_per_class, test_per_class, seed):
    """Images of ``classes`` relabelled 0..k-1, split per class into training and test images.

    ``train_per_class``: how many of each class to train on (None: four fifths); the rest, at most
    ``test_per_class`` of them (None: all), are the test set.
    """
    generator = torch.Generator().manual_seed(seed)
    train_idx, test_idx = [], []
    for cls in classes:
        idx = torch.nonzero(labels == cls).flatten()
        idx = idx[torch.randperm(len(idx), generator=generator)]
        n_train = train_per_class if train_per_class is not None else len(idx) * 4 // 5
        train_idx.append(idx[:n_train])
        test_idx.append(idx[n_train:][:test_per_class])
    relabel = torch.full((10,), -1, dtype=torch.long)
    relabel[list(classes)] = torch.arange(len(classes))
    train_idx, test_idx = torch.cat(train_idx), torch.cat(test_idx)
    return images[train_idx], relabel[labels[train_idx]], images[test_idx], relabel[labels[test_idx]]


# ----------------------------------------------------------------------------------------------
# Models and checkpoints
# ----------------------------------------------------------------------------------------------


def resnet18(num_classes, algo, weights=None):
    """torchvision's ResNet-18 with fastconv's conv and pooling layers (``weights``: a torchvision enum)."""
    model = torchvision.models.resnet18(weights=weights)
    model.fc = torch.nn.Linear(model.fc.in_features, num_classes)  # a new head for this task
    return fastconv.convert(model, inplace=True, algo=algo)


def save_checkpoint(model, path, classes, size, mean, std):
    torch.save({"model": model.state_dict(), "classes": list(classes), "size": size,
                "mean": list(mean), "std": list(std)}, path)
    print(f"saved checkpoint {path}")


def load_backbone(model, path):
    """Loads every weight but the classifier head from a checkpoint of this example or a plain
    torchvision state_dict; returns the normalisation (mean, std) the checkpoint was trained with."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state = checkpoint.get("model", checkpoint)
    backbone = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = model.load_state_dict(backbone, strict=False)
    if unexpected or any(not k.startswith("fc.") for k in missing):
        raise RuntimeError(f"{path} is not a ResNet-18 checkpoint (missing {missing}, unexpected {unexpected})")
    return tuple(checkpoint.get("mean", IMAGENET_MEAN)), tuple(checkpoint.get("std", IMAGENET_STD))


@torch.no_grad()
def extract_features(model, images, device, batch_size=256):
    """What the frozen network hands its head: ResNet's 512 pooled features per image, in eval mode.

    A frozen network (batch norm included) gives the same features every epoch, so they are computed
    once and only the head trains on them: the cheap way to do feature extraction.
    """
    head, model.fc = model.fc, torch.nn.Identity()
    was_training = model.training
    model.eval()
    try:
        return torch.cat([model(images[i:i + batch_size].to(device)).cpu() for i in range(0, len(images), batch_size)])
    finally:
        model.fc = head
        model.train(was_training)


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------


HEAD, FINETUNE, SCRATCH = "(a) frozen features + new head", "(b) fine-tuned", "from scratch (baseline)"
TEST_BATCH = 256


def parse_args(argv):
    parser = base_parser("finetune_resnet", __doc__.split("\n\n")[0])
    parser.add_argument("--weights", default="pretrain", help="pretrain | imagenet | PATH (see above)")
    parser.add_argument("--size", type=int, default=None, help="image side fed to the network")
    parser.add_argument("--shots", type=int, default=None, help="labelled training images per target class")
    parser.add_argument("--source-shots", type=int, default=None,
                        help="pretraining images per source class (default: four fifths of them)")
    parser.add_argument("--test-per-class", type=int, default=None, help="cap on test images per class")
    parser.add_argument("--pretrain-epochs", type=int, default=None)
    parser.add_argument("--head-epochs", type=int, default=None, help="(a) feature-extraction epochs")
    parser.add_argument("--finetune-epochs", type=int, default=None, help="(b) fine-tuning epochs")
    parser.add_argument("--finetune-lr-ratio", type=float, default=0.3,
                        help="fine-tuning learning rate as a fraction of --lr")
    parser.add_argument("--target-batch-size", type=int, default=10, help="batch size on the few-shot target task")
    parser.add_argument("--draws", type=int, default=None,
                        help="repeat the target task with this many draws of its labelled images; report the mean")
    parser.add_argument("--no-baseline", action="store_true", help="skip the from-scratch comparison")
    args = parser.parse_args(argv)
    if args.weights not in ("pretrain", "imagenet") and not os.path.isfile(args.weights):
        parser.error(f"--weights: no such checkpoint file {args.weights!r}")
    return fill_budget(
        args,
        quick=dict(size=16, shots=2, source_shots=20, test_per_class=10, pretrain_epochs=1, head_epochs=1,
                   finetune_epochs=1, draws=1, batch_size=64, lr=3e-3),
        # ImageNet features need larger images than the 16x16 that the digits checkpoint is trained on
        full=dict(size=64 if args.weights == "imagenet" else 16, shots=2, test_per_class=40, pretrain_epochs=3,
                  head_epochs=10, finetune_epochs=10, draws=3, batch_size=64, lr=3e-3))


def pretrain_on_source(args):
    """Source task: digits 0-4, every labelled image, from scratch; returns its history and checkpoint."""
    mean = std = (0.5,) * 3
    images, labels = digits_as_rgb(args.size, mean, std)
    xs, ys, xs_test, ys_test = task_split(images, labels, SOURCE_CLASSES, args.source_shots, args.test_per_class,
                                         args.seed)
    torch.manual_seed(args.seed)
    model = resnet18(len(SOURCE_CLASSES), args.algo).to(args.device)
    print(f"pretraining on digits {SOURCE_CLASSES}: {len(xs)} training, {len(xs_test)} test images "
          f"of {args.size}x{args.size}")
    history = train(model, TensorLoader(xs, ys, args.batch_size, shuffle=True, seed=args.seed),
                    TensorLoader(xs_test, ys_test, TEST_BATCH), args.pretrain_epochs, args.lr, args.device,
                    desc="pretrain")
    checkpoint = os.path.join(args.out, "resnet18_digits0-4.pt")
    save_checkpoint(model, checkpoint, SOURCE_CLASSES, args.size, mean, std)
    return history, checkpoint


def transfer_to_target(args, starting_model, draw_seed):
    """Target task, digits 5-9, with ``args.shots`` labelled images per class drawn with ``draw_seed``.

    Runs (a) and (b) from ``starting_model()`` and the from-scratch baseline; returns their histories
    and the fine-tuned model.
    """
    torch.manual_seed(draw_seed)
    model, (mean, std) = starting_model()
    images, labels = digits_as_rgb(args.size, mean, std)
    xt, yt, xt_test, yt_test = task_split(images, labels, TARGET_CLASSES, args.shots, args.test_per_class, draw_seed)
    print(f"target task, digits {TARGET_CLASSES}: {len(xt)} labelled training images ({args.shots} per class, "
          f"draw {draw_seed - args.seed + 1} of {args.draws}), {len(xt_test)} test images")
    target_test = TensorLoader(xt_test, yt_test, TEST_BATCH)
    histories = {}

    # (a) feature extraction: the network is frozen, only the new head learns.
    start = time.perf_counter()
    features, features_test = extract_features(model, xt, args.device), extract_features(model, xt_test, args.device)
    extraction_seconds = time.perf_counter() - start
    histories[HEAD] = train(model.fc, TensorLoader(features, yt, args.target_batch_size, shuffle=True, seed=draw_seed),
                            TensorLoader(features_test, yt_test, TEST_BATCH), args.head_epochs, args.lr,
                            args.device, desc="(a) head")
    histories[HEAD]["seconds"] += extraction_seconds

    # (b) fine-tuning: everything learns, gently, starting from (a)'s head.
    histories[FINETUNE] = train(model, TensorLoader(xt, yt, args.target_batch_size, shuffle=True, seed=draw_seed),
                                target_test, args.finetune_epochs, args.lr * args.finetune_lr_ratio, args.device,
                                desc="(b) fine-tune")

    # Baseline: the same network from random weights, the same images, as many epochs as (a) and (b).
    if not args.no_baseline:
        torch.manual_seed(draw_seed)
        scratch = resnet18(len(TARGET_CLASSES), args.algo).to(args.device)
        histories[SCRATCH] = train(scratch, TensorLoader(xt, yt, args.target_batch_size, shuffle=True, seed=draw_seed),
                                   target_test, args.head_epochs + args.finetune_epochs, args.lr, args.device,
                                   desc="scratch")
    return histories, model, xt_test[:1]


def final_accuracy(history):
    return history["test_acc"][-1]


def main(argv=None):
    args = parse_args(argv)
    source = {"pretrain": "the digits 0-4 checkpoint", "imagenet": "ImageNet weights"}.get(args.weights, args.weights)
    curves, rows = {}, []

    checkpoint = args.weights
    if args.weights == "pretrain":
        curves["pretrain (digits 0-4)"], checkpoint = pretrain_on_source(args)
        rows.append({"run": "pretrain on digits 0-4", "epochs": args.pretrain_epochs,
                     "test accuracy": f"{final_accuracy(curves['pretrain (digits 0-4)']):.1f}%",
                     "time": f"{curves['pretrain (digits 0-4)']['seconds']:.1f} s"})
    if args.weights == "imagenet":
        print("loading torchvision's ImageNet weights (downloads them on first use)")

    def starting_model():
        """The network the transfer starts from, and the input normalisation its weights expect."""
        if args.weights == "imagenet":
            model = resnet18(len(TARGET_CLASSES), args.algo, torchvision.models.ResNet18_Weights.IMAGENET1K_V1)
            return model.to(args.device), (IMAGENET_MEAN, IMAGENET_STD)
        model = resnet18(len(TARGET_CLASSES), args.algo)
        normalisation = load_backbone(model, checkpoint)
        return model.to(args.device), normalisation

    # With two labelled images per class the result depends on which ones: repeat over several draws.
    runs = {}
    for draw in range(args.draws):
        histories, model, sample = transfer_to_target(args, starting_model, args.seed + draw)
        for name, history in histories.items():
            runs.setdefault(name, []).append(history)
        if draw == 0:  # the pictures show the first draw
            shown_model, shown_input = model, sample
            curves.update({name + (" (draw 1)" if args.draws > 1 else ""): h for name, h in histories.items()})

    means = {name: sum(map(final_accuracy, hs)) / len(hs) for name, hs in runs.items()}
    for name, hs in runs.items():
        per_draw = " / ".join(f"{final_accuracy(h):.1f}" for h in hs)
        label = f"{name}, lr {args.lr * args.finetune_lr_ratio:g}" if name == FINETUNE else name
        rows.append({"run": label, "epochs": len(hs[0]["test_acc"]),
                     "test accuracy": f"{means[name]:.1f}%" + (f" ({per_draw})" if len(hs) > 1 else ""),
                     "time": f"{sum(h['seconds'] for h in hs):.1f} s"})
    draws = f"mean of {args.draws} draws" if args.draws > 1 else "one draw"
    print_summary(f"ResNet-18 (fastconv layers), digits 5-9 with {args.shots} labelled images per class, "
                  f"{args.size}x{args.size}, starting from {source} ({draws} of the labelled images):", rows)
    if SCRATCH in runs:
        wins = sum(final_accuracy(t) > final_accuracy(s) for t, s in zip(runs[FINETUNE], runs[SCRATCH]))
        verdict = "beats" if means[FINETUNE] > means[SCRATCH] else "does NOT beat"
        print(f"starting from {source} {verdict} starting from scratch: {means[FINETUNE]:.1f}% vs "
              f"{means[SCRATCH]:.1f}% ({means[FINETUNE] - means[SCRATCH]:+.1f} points; ahead in {wins} of "
              f"{args.draws} draws) at the same budget of {args.head_epochs + args.finetune_epochs} epochs")

    plot_curves(curves, os.path.join(args.out, "curves.png"), "ResNet-18: pretraining and transfer")
    conv1 = shown_model.conv1.weight
    if args.weights == "imagenet":
        plot_filters(conv1, os.path.join(args.out, "filters.png"), "conv1: 64 filters of 7x7 (RGB)")
    else:  # grey digits copied to 3 channels: what a filter does is the sum of its three colour planes
        plot_filters(conv1.sum(1, keepdim=True), os.path.join(args.out, "filters.png"),
                     "conv1: 64 filters of 7x7, summed over RGB (the digits are grey)")
    depths = [("conv1+relu", shown_model.relu)] + [(name, getattr(shown_model, name))
                                                   for name in ("layer1", "layer2", "layer3", "layer4")]
    maps = capture_feature_maps(shown_model, shown_input.to(args.device), depths)
    plot_feature_maps(shown_input, maps, os.path.join(args.out, "feature_maps.png"),
                      "fine-tuned ResNet-18: feature maps of one test image at each depth")
    return {"transfer": means[FINETUNE], "scratch": means.get(SCRATCH), "checkpoint": checkpoint}


if __name__ == "__main__":
    main()
