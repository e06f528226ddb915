"""What the training examples share: batching, the training loop, the summary table and the pictures.

The pictures are the lesson of the examples: training curves; the first layer's learned filters
(edge and blob detectors on images, small wave shapes on signals); and the feature maps of one input
at each depth, which grow coarser in space and richer in channels as the network goes deeper.
"""
import argparse
import math
import os
import time

import matplotlib

matplotlib.use("Agg")  # write files only; no display needed

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from tqdm import tqdm  # noqa: E402

import fastconv  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------------------------
# Command line and setup
# ----------------------------------------------------------------------------------------------


def default_device():
    """CUDA when a GPU is visible and this build of fastconv has CUDA kernels, else CPU."""
    if torch.cuda.is_available() and fastconv.build_info()["cuda"]:
        return "cuda"
    return "cpu"


def base_parser(name, description):
    """The options every example has; each example adds its own."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="a budget of seconds, to check that everything runs")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: per budget)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate of the one-cycle schedule")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--algo", default="auto", choices=fastconv.functional.CONV_ALGOS,
                        help="fastconv convolution algorithm")
    parser.add_argument("--device", default=default_device())
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads (default: torch's choice); on a busy machine fewer threads wait less")
    parser.add_argument("--out", default=os.path.join("out", name), help="folder for pictures and checkpoints")
    return parser


def fill_budget(args, quick, full):
    """Options left unset on the command line take the --quick or the default budget's value."""
    if args.threads:
        torch.set_num_threads(args.threads)
    budget = quick if args.quick else full
    for key, value in budget.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    os.makedirs(args.out, exist_ok=True)
    return args


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------


class TensorLoader:
    """Mini-batches of in-memory tensors, reshuffled each epoch from its own seeded generator.

    Two loaders made with the same seed give the same batches in the same order, so two models
    trained side by side see exactly the same data. Much lighter than a DataLoader for small tensors.
    """

    def __init__(self, inputs, targets, batch_size, shuffle=False, seed=0):
        self.inputs, self.targets = inputs, targets
        self.batch_size, self.shuffle = batch_size, shuffle
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self):
        return math.ceil(len(self.inputs) / self.batch_size)

    def __iter__(self):
        n = len(self.inputs)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        for start in range(0, n, self.batch_size):
            idx = order[start:start + self.batch_size]
            yield self.inputs[idx], self.targets[idx]


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(model, loader, device):
    """(mean loss, accuracy in %) over a loader, in eval mode."""
    was_training = model.training
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        count += len(y)
    model.train(was_training)
    return loss_sum / count, 100.0 * correct / count


def train(model, train_loader, test_loader, epochs, lr, device, desc, weight_decay=1e-4):
    """AdamW with a one-cycle learning rate; a tqdm bar shows loss and accuracy as it goes.

    Returns a history with per-epoch train/test loss and accuracy and the training time in seconds.
    """
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * len(train_loader))
    history = {"train_loss": [], "train_acc": [], "test_loss": [], "test_acc": [], "seconds": 0.0}
    bar = tqdm(total=epochs * len(train_loader), desc=desc, unit="batch", leave=True, dynamic_ncols=True)
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        loss_sum, correct, count = 0.0, 0, 0
        for x, y in train_loader:
            x, y = x.to(device), y.to(device)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            count += len(y)
            bar.update()
            bar.set_postfix(loss=f"{loss_sum / count:.3f}", acc=f"{100.0 * correct / count:.1f}%", refresh=False)
        test_loss, test_acc = evaluate(model, test_loader, device)
        history["train_loss"].append(loss_sum / count)
        history["train_acc"].append(100.0 * correct / count)
        history["test_loss"].append(test_loss)
        history["test_acc"].append(test_acc)
        bar.set_postfix(loss=f"{loss_sum / count:.3f}", acc=f"{100.0 * correct / count:.1f}%",
                        test_acc=f"{test_acc:.1f}%")
    history["seconds"] = time.perf_counter() - start
    bar.close()
    return history


def print_summary(title, rows):
    """A small aligned table: rows are dicts with the same keys (the header)."""
    header = list(rows[0])
    cells = [[str(row[key]) for key in header] for row in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]
    print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for c in cells:
        print("  ".join(v.ljust(w) for v, w in zip(c, widths)))


# ----------------------------------------------------------------------------------------------
# Pictures
# ----------------------------------------------------------------------------------------------


def _save(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"saved {path}")


def plot_curves(histories, path, title):
    """Loss and test accuracy per epoch for each labelled history, side by side."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for i, (label, h) in enumerate(histories.items()):
        epochs = range(1, len(h["train_loss"]) + 1)
        width = 3.5 if i == 0 else 1.5  # curves that coincide stay visible: the first is drawn wider
        (line,) = ax_loss.plot(epochs, h["train_loss"], lw=width, alpha=0.8, label=f"{label} train")
        ax_loss.plot(epochs, h["test_loss"], "--", lw=width, alpha=0.8, color=line.get_color(), label=f"{label} test")
        ax_acc.plot(epochs, h["test_acc"], lw=width, alpha=0.8, color=line.get_color(), label=label)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss", yscale="log")
    ax_acc.set(xlabel="epoch", ylabel="test accuracy (%)", title="test accuracy")
    ax_loss.legend(fontsize=7)
    ax_acc.legend(fontsize=7)
    fig.suptitle(title)
    _save(fig, path)


def _grid(n, max_cols=8):
    cols = min(n, max_cols)
    return math.ceil(n / cols), cols


def plot_filters(weight, path, title, max_filters=64):
    """The first layer's filters: line plots for 1-D kernels, images for 2-D (RGB when 3 input channels)."""
    weight = weight.detach().float().cpu()[:max_filters]
    rows, cols = _grid(len(weight))
    fig, axes = plt.subplots(rows, cols, figsize=(1.4 * cols, 1.2 * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, w in zip(axes.flat, weight):
        if w.dim() == 2:  # (in_channels, taps)
            for channel in w:
                ax.plot(channel.numpy(), marker=".")
            ax.axhline(0, color="grey", lw=0.5)
        elif w.shape[0] == 3:  # an RGB filter, scaled to [0, 1]
            w = (w - w.min()) / (w.max() - w.min() + 1e-12)
            ax.imshow(w.permute(1, 2, 0).numpy(), interpolation="nearest")
        else:
            limit = w[0].abs().max().item() or 1.0  # white is zero, red positive, blue negative
            ax.imshow(w[0].numpy(), cmap="coolwarm", vmin=-limit, vmax=limit, interpolation="nearest")
    fig.suptitle(title)
    _save(fig, path)


@torch.no_grad()
def capture_feature_maps(model, x, layers):
    """Runs one input through ``model`` (eval mode) and returns [(name, output of that layer)].

    ``layers`` lists (name, module) pairs inside the model, in depth order; forward hooks record
    what each produces.
    """
    maps = []
    handles = [m.register_forward_hook(lambda mod, inp, out, name=name: maps.append((name, out[0].cpu())))
               for name, m in layers]
    was_training = model.training
    model.eval()
    try:
        model(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return maps


def plot_feature_maps(x, maps, path, title, max_channels=8):
    """One row per depth: the input, then each layer's first channels (heat maps for signals)."""
    x = x[0].detach().float().cpu()
    rows = 1 + len(maps)
    one_d = x.dim() == 2
    cols = 1 if one_d else max_channels
    fig, axes = plt.subplots(rows, cols, figsize=(9 if one_d else 1.3 * cols, 1.4 * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    if one_d:
        axes[0, 0].axis("on")
        axes[0, 0].plot(x[0].numpy())
        axes[0, 0].set_title("input signal", fontsize=8)
    else:
        image = x.permute(1, 2, 0) if x.shape[0] == 3 else x[0]
        image = (image - image.min()) / (image.max() - image.min() + 1e-12)
        axes[0, 0].imshow(image.numpy(), cmap=None if x.shape[0] == 3 else "gray")
        axes[0, 0].set_title(f"input {tuple(x.shape)}", fontsize=7)
    for row, (name, fmap) in enumerate(maps, start=1):
        fmap = fmap.float()
        if one_d:  # (channels, length): every channel as one row of a heat map
            ax = axes[row, 0]
            ax.axis("on")
            ax.imshow(fmap.numpy(), aspect="auto", cmap="viridis", interpolation="nearest")
            ax.set_title(f"{name}: {fmap.shape[0]} channels x {fmap.shape[1]} positions", fontsize=8)
            ax.set_yticks([])
        else:  # one colour scale per depth, so that 1x1 maps of deep layers still show their values
            shown = fmap[:cols]
            low, high = shown.min().item(), shown.max().item()
            for col in range(len(shown)):
                axes[row, col].imshow(shown[col].numpy(), cmap="viridis", vmin=low, vmax=high, interpolation="nearest")
            axes[row, 0].set_title(f"{name} {tuple(fmap.shape)}", fontsize=7, loc="left")
    fig.suptitle(title)
    _save(fig, path)
