"""A CNN trained from scratch on images, built from full fastconv conv blocks.

Each block is Conv2d -> BatchNorm2d -> ReLU -> MaxPool2d: the convolution finds local patterns, batch
norm keeps the activations in range, ReLU keeps what matched, max pooling halves the resolution so the
next block sees a wider area. Three blocks, a global average pool and a linear head.

Datasets:
  digits        (default) the 8x8 handwritten digits that scikit-learn ships: 1797 images, offline
  mnist, fashionmnist, cifar10
                torchvision's datasets, downloaded to --data on first use (needs internet)
  fake          torchvision's FakeData: random images, offline; checks the plumbing only (chance accuracy)

    python examples/train_images.py                       # digits, default budget (under a minute)
    python examples/train_images.py --dataset cifar10     # online: downloads CIFAR-10
    python examples/train_images.py --quick               # seconds: checks that everything runs
"""
import functools
import os

import torch

from fastconv import nn as fnn
from common import (TensorLoader, base_parser, capture_feature_maps, fill_budget, plot_curves, plot_feature_maps,
                    plot_filters, print_summary, train)

# torchvision dataset class name, channels, normalisation mean and std (per channel, of the training set)
TORCHVISION_DATASETS = {
    "mnist": ("MNIST", (0.1307,), (0.3081,)),
    "fashionmnist": ("FashionMNIST", (0.2860,), (0.3530,)),
    "cifar10": ("CIFAR10", (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "fake": ("FakeData", (0.5, 0.5, 0.5), (0.2887, 0.2887, 0.2887)),  # uniform [0, 1] pixels
}


def load_digits_tensors(seed=0):
    """scikit-learn's 8x8 digits as normalised (N, 1, 8, 8) tensors, split 80/20 with every class in both."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(digits.target)
    idx_train, idx_test = train_test_split(torch.arange(len(labels)).numpy(), test_size=0.2,
                                           stratify=labels.numpy(), random_state=seed)
    x_train, x_test = images[idx_train], images[idx_test]
    mean, std = x_train.mean(), x_train.std()
    return (x_train - mean) / std, labels[idx_train], (x_test - mean) / std, labels[idx_test]


def load_torchvision(name, root, limit=None):
    """(train set, test set) of one of torchvision's datasets, as normalised tensors per item.

    ``limit`` keeps the first samples of each split (the --quick budget).
    """
    import torchvision
    from torchvision import transforms

    class_name, mean, std = TORCHVISION_DATASETS[name]
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)])
    cls = getattr(torchvision.datasets, class_name)
    if name == "fake":
        train_set = cls(size=2000, image_size=(3, 32, 32), num_classes=10, transform=transform)
        test_set = cls(size=500, image_size=(3, 32, 32), num_classes=10, transform=transform, random_offset=2000)
    else:
        train_set = cls(root, train=True, transform=transform, download=True)
        test_set = cls(root, train=False, transform=transform, download=True)
    if limit:
        train_set = torch.utils.data.Subset(train_set, range(min(limit, len(train_set))))
        test_set = torch.utils.data.Subset(test_set, range(min(limit // 2, len(test_set))))
    return train_set, test_set


def build_model(in_channels, num_classes, layers=fnn, widths=(32, 64, 128), **conv_options):
    """Full conv blocks Conv2d -> BatchNorm2d -> ReLU -> MaxPool2d, then global average pooling and a head.

    ``layers``: fastconv.nn or torch.nn, whose Conv2d, MaxPool2d and AdaptiveAvgPool2d are used.
    """
    blocks, channels = [], in_channels
    for width in widths:
        blocks.append(torch.nn.Sequential(
            layers.Conv2d(channels, width, 3, padding=1, bias=False, **conv_options),
            torch.nn.BatchNorm2d(width), torch.nn.ReLU(inplace=True), layers.MaxPool2d(2)))
        channels = width
    return torch.nn.Sequential(*blocks, layers.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Dropout(0.1),
                               torch.nn.Linear(channels, num_classes))


def main(argv=None):
    parser = base_parser("images", __doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="digits", choices=["digits", *TORCHVISION_DATASETS])
    parser.add_argument("--data", default=os.path.join("out", "data"), help="download folder for torchvision data")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers for torchvision datasets")
    parser.add_argument("--layers", default="fastconv", choices=["fastconv", "torch.nn"])
    args = parser.parse_args(argv)
    small = args.dataset == "digits"
    full = dict(epochs=20, batch_size=64, lr=1e-2) if small else dict(epochs=5, batch_size=128, lr=5e-3)
    args = fill_budget(args, quick=dict(epochs=2, batch_size=64, lr=1e-2), full=full)
    out = os.path.join(args.out, args.dataset)
    os.makedirs(out, exist_ok=True)

    if small:
        x_train, y_train, x_test, y_test = load_digits_tensors()
        train_loader = TensorLoader(x_train, y_train, args.batch_size, shuffle=True, seed=args.seed)
        test_loader = TensorLoader(x_test, y_test, 256)
        sizes, sample = (len(x_train), len(x_test)), x_test[:1]
    else:
        train_set, test_set = load_torchvision(args.dataset, args.data, limit=512 if args.quick else None)
        loader = functools.partial(torch.utils.data.DataLoader, num_workers=args.workers,
                                   persistent_workers=args.workers > 0)
        train_loader = loader(train_set, batch_size=args.batch_size, shuffle=True,
                              generator=torch.Generator().manual_seed(args.seed))
        test_loader = loader(test_set, batch_size=256)
        sizes, sample = (len(train_set), len(test_set)), test_set[0][0].unsqueeze(0)

    torch.manual_seed(args.seed)
    if args.layers == "fastconv":
        model = build_model(sample.shape[1], 10, fnn, algo=args.algo)
    else:
        model = build_model(sample.shape[1], 10, torch.nn)
    model = model.to(args.device)
    print(f"{args.dataset}: {sizes[0]} training and {sizes[1]} test images of {tuple(sample.shape[1:])}; "
          f"{args.epochs} epochs, batch {args.batch_size}, {args.layers} layers, {args.device}")
    print(model)
    history = train(model, train_loader, test_loader, args.epochs, args.lr, args.device, desc=args.dataset)

    n_params = sum(p.numel() for p in model.parameters())
    print_summary(f"{args.dataset}, trained from scratch:", [{
        "layers": args.layers, "parameters": f"{n_params:,}", "epochs": args.epochs,
        "train accuracy": f"{history['train_acc'][-1]:.1f}%", "test accuracy": f"{history['test_acc'][-1]:.1f}%",
        "train time": f"{history['seconds']:.1f} s"}])

    plot_curves({args.layers: history}, os.path.join(out, "curves.png"), f"{args.dataset}: CNN from scratch")
    plot_filters(model[0][0].weight, os.path.join(out, "filters.png"),
                 f"first-layer 3x3 filters ({model[0][0].weight.shape[0]})")
    # after each block's ReLU: full resolution of that depth, before its pooling halves it
    maps = capture_feature_maps(model, sample.to(args.device), [(f"block {i + 1}", model[i][2]) for i in range(3)])
    plot_feature_maps(sample, maps, os.path.join(out, "feature_maps.png"),
                      "feature maps of one test image at each depth")
    return history


if __name__ == "__main__":
    main()
