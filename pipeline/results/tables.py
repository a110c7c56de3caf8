"""The lecture's tables and worked numbers, recomputed from the layer and model definitions.

Nothing here is typed in from the lecture except the example configurations it starts from (a 7x7
input and a 3x3 filter, the Inception example's 28x28x256 input...). Shapes come from running the
layers (large models on the meta device, which allocates nothing), parameters from the modules,
multiply-accumulates from torch's FlopCounterMode (`models._factory`), the same way for every model."""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from models._factory import count_macs, param_count
from pipeline.errors import PipelineError
from pipeline.results.lecture import annotate
from pipeline.results.profiling import (
    FEATURE_LAYERS,
    POOLS,
    forward_profile,
    input_shape,
    meta_model,
    num_classes_of,
    record_outputs,
    shape_text,
)

FORMATS = ("table", "markdown", "csv")


BYTES_FP32 = 4


@dataclass
class Table:
    key: str  # file stem and --only name
    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    note: str = ""

    def row(self, first: Any) -> dict[str, Any]:
        """The row whose first cell is `first`, as {column: value}."""
        for row in self.rows:
            if row[0] == first:
                return dict(zip(self.columns, row))
        raise KeyError(first)


def conv_examples() -> Table:
    """Output sizes and parameters of the lecture's convolution and pooling examples, by running the layers."""
    # (example, input C x H x W, layer) — the configurations the lecture asks about
    examples = [
        ("7x7 input, 3x3 filter, stride 1", (1, 7, 7), nn.Conv2d(1, 1, 3, stride=1)),
        ("7x7 input, 3x3 filter, stride 2", (1, 7, 7), nn.Conv2d(1, 1, 3, stride=2)),
        ("7x7 input, 3x3 filter, stride 1, pad 1", (1, 7, 7), nn.Conv2d(1, 1, 3, stride=1, padding=1)),
        ("7x7 input, 5x5 filter, stride 1, pad 2", (1, 7, 7), nn.Conv2d(1, 1, 5, stride=1, padding=2)),
        ("7x7 input, 7x7 filter, stride 1, pad 3", (1, 7, 7), nn.Conv2d(1, 1, 7, stride=1, padding=3)),
        ("6x6 input, 3x3 kernel (cross-correlation)", (1, 6, 6), nn.Conv2d(1, 1, 3)),
        ("32x32x3 input, 10 5x5 filters, stride 1, pad 2", (3, 32, 32), nn.Conv2d(3, 10, 5, stride=1, padding=2)),
        ("56x56x64 input, 32 1x1 filters", (64, 56, 56), nn.Conv2d(64, 32, 1)),
        ("4x4 input, 2x2 max pool, stride 2", (1, 4, 4), nn.MaxPool2d(2, 2)),
    ]
    table = Table("conv_examples", "Convolution output size and parameters (the lecture's examples)",
                  ["example", "output", "params", "params per filter"])
    for label, shape, layer in examples:
        with torch.no_grad():
            out = layer(torch.zeros(1, *shape))
        params = param_count(layer)
        per_filter = params // layer.out_channels if isinstance(layer, nn.Conv2d) else 0
        table.rows.append([label, shape_text(tuple(out.shape[1:])), params, per_filter])
    table.note = "Output size (N + 2P - F) / stride + 1; each filter has F*F*C weights + 1 bias."
    return table


def _alexnet_rows(model: nn.Module) -> list[tuple[str, str, str, int]]:
    kinds = (nn.Conv2d, nn.MaxPool2d, nn.LocalResponseNorm, nn.Linear)
    rows, counts = [], {"conv": 0, "pool": 0, "norm": 0}
    for _, module, out in record_outputs(model, input_shape("alexnet2012"), kinds):
        if isinstance(module, nn.Conv2d):
            counts["conv"] += 1
            k, s, p = module.kernel_size[0], module.stride[0], module.padding[0]
            rows.append((f"CONV{counts['conv']}", shape_text(out),
                         f"{module.out_channels} {k}x{k} filters at stride {s}, pad {p}", param_count(module)))
        elif isinstance(module, nn.MaxPool2d):
            counts["pool"] += 1
            rows.append((f"MAX POOL{counts['pool']}", shape_text(out),
                         f"{module.kernel_size}x{module.kernel_size} filters at stride {module.stride}", 0))
        elif isinstance(module, nn.LocalResponseNorm):
            counts["norm"] += 1
            rows.append((f"NORM{counts['norm']}", shape_text(out), f"local response normalization, n={module.size}", 0))
        else:  # FC layers continue the numbering after the convs (FC6, FC7, FC8)
            counts["conv"] += 1
            rows.append((f"FC{counts['conv']}", shape_text(out), f"{module.out_features} neurons", param_count(module)))
    return rows


def alexnet_layers() -> Table:
    """AlexNet's layer-by-layer output shapes at 227 px, and parameters with and without the two-GPU split."""
    single, split = meta_model("alexnet2012"), meta_model("alexnet2012", groups=2)
    table = Table("alexnet_layers", "AlexNet (2012): output shape of every layer, 227x227x3 input",
                  ["layer", "output", "configuration", "params", "params, two-GPU split (groups=2)"])
    table.rows.append(["INPUT", shape_text(input_shape("alexnet2012")), "", 0, 0])
    for (name, out, config, params), (*_, split_params) in zip(_alexnet_rows(single), _alexnet_rows(split)):
        table.rows.append([name, out, config, params, split_params])
    table.rows.append(["TOTAL", "", "", param_count(single), param_count(split)])
    table.note = ("Response normalization comes before each pool, in the paper's order. groups=2: CONV2, CONV4 "
                  "and CONV5 see only the feature maps on their own GPU (half of each layer's maps per GPU, "
                  "e.g. 55x55x48 x 2 after CONV1).")
    return table


def vgg16_memory() -> Table:
    """VGG-16's per-layer feature-map memory and parameters with totals (timm's vgg16, 224 px)."""
    model, shape = meta_model("vgg16"), input_shape("vgg16")
    table = Table("vgg16_memory", "VGG-16: memory and parameters per layer (forward pass, one 224x224x3 image)",
                  ["layer", "output", "memory (values)", "weights", "params (weights + biases)"])
    table.rows.append(["INPUT", shape_text(shape), math.prod(shape), 0, 0])
    for _, module, out in record_outputs(model, shape, FEATURE_LAYERS, skip_noops=True):
        if isinstance(module, POOLS):
            label = f"POOL{module.kernel_size if isinstance(module.kernel_size, int) else module.kernel_size[0]}"
        elif isinstance(module, nn.Linear) or (len(out) == 3 and out[1:] == (1, 1)):
            label = "FC"  # timm runs FC6/FC7 as 7x7 and 1x1 convolutions: the same weights
        else:
            label = f"CONV{module.kernel_size[0]}-{module.out_channels}"
        weights = module.weight.numel() if getattr(module, "weight", None) is not None else 0
        table.rows.append([label, shape_text(out), math.prod(out), weights, param_count(module)])
    total_memory = sum(r[2] for r in table.rows)
    total_weights = sum(r[3] for r in table.rows)
    table.rows.append(["TOTAL", "", total_memory, total_weights, param_count(model)])
    megabytes = total_memory * BYTES_FP32 / 1e6
    table.rows.append(["TOTAL bytes (fp32)", "", total_memory * BYTES_FP32, total_weights * BYTES_FP32,
                       param_count(model) * BYTES_FP32])
    table.note = (f"TOTAL memory: {total_memory / 1e6:.1f}M values x 4 bytes = {megabytes:.0f} MB / image "
                  f"(forward only; about twice that with the backward pass). TOTAL params: "
                  f"{param_count(model) / 1e6:.0f}M. Most memory is in the early convs, most parameters in the FCs.")
    return table


def _conv_label(module: nn.Module) -> str:
    if isinstance(module, nn.Conv2d):
        return f"[{module.kernel_size[0]}x{module.kernel_size[1]} conv, {module.out_channels}]"
    return f"[{module.kernel_size}x{module.kernel_size} pool]"


def inception_modules() -> Table:
    """The naive Inception module against the one with 1x1 bottlenecks, on the lecture's 28x28x256 input."""
    from models.googlenet import Inception

    shape = (256, 28, 28)
    # the lecture's example: 1x1 128, 3x3 192, 5x5 96 and 3x3 pooling; bottlenecks of 64 filters
    modules = {"naive": dict(naive=True), "with dimension reduction": dict(naive=False)}
    table = Table("inception_modules", "Inception module on a 28x28x256 input: naive vs 1x1 bottlenecks",
                  ["module", "layer", "output", "MACs"])
    for label, options in modules.items():
        with torch.device("meta"):
            module = Inception(256, c1=128, c3r=64, c3=192, c5r=64, c5=96, pool_proj=64, **options).eval()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            layers = record_outputs(module, shape, (nn.Conv2d, nn.MaxPool2d))
        flops = counter.get_flop_counts()
        for name, layer, out in layers:
            macs = sum(flops.get(f"{type(module).__name__}.{name}", {}).values()) // 2
            table.rows.append([label, _conv_label(layer), shape_text(out), macs])
        out_shape = (module.out_chs, *shape[1:])
        table.rows.append([label, "filter concatenation", shape_text(out_shape), count_macs(module, shape)])
    table.note = "MACs: multiply-accumulates of one image (the lecture's 'ops'), counted by torch's FlopCounterMode."
    return table


def _receptive_field(stack: nn.Module, channels: int) -> int:
    """Input pixels (along one axis) that reach one output pixel: the extent of its nonzero gradient."""
    with torch.no_grad():
        for p in stack.parameters():
            p.fill_(1.0)  # positive weights: no cancellation can hide an input pixel
    image = torch.zeros(1, channels, 15, 15, requires_grad=True)
    out = stack(image)
    out[0, :, out.shape[2] // 2, out.shape[3] // 2].sum().backward()
    reached = image.grad[0].abs().sum(dim=(0, 2)).nonzero()
    return int(reached.max() - reached.min() + 1)


def stacked_convs(channels: int = 64) -> Table:
    """Receptive field and parameters of stacks of 3x3 convolutions (stride 1) against one larger filter."""
    table = Table("stacked_convs", f"Stacked 3x3 convolutions vs one large filter, C = {channels} channels per layer",
                  ["layers", "receptive field", "params (no biases)", "params / C^2"])
    for depth, kernel in ((1, 3), (2, 3), (3, 3), (1, 5), (1, 7)):
        stack = nn.Sequential(*(nn.Conv2d(channels, channels, kernel, padding=kernel // 2, bias=False)
                                for _ in range(depth)))
        rf = _receptive_field(stack, channels)
        params = param_count(stack)
        table.rows.append([f"{depth} x {kernel}x{kernel} conv", f"{rf}x{rf}", params, params // channels ** 2])
    table.note = "Three 3x3 convs see a 7x7 region like one 7x7 conv, with 27 C^2 instead of 49 C^2 weights."
    return table


def vit_sizes() -> Table:
    """Layers, width, MLP size, heads and parameters of the ViT models, read from timm's definitions."""
    from models.catalogue import FAMILIES

    vit = next(f for f in FAMILIES if f.name == "ViT")
    table = Table("vit_sizes", "Vision Transformer sizes (ImageNet, 1000 classes)",
                  ["model", "layers", "hidden size D", "MLP size", "heads", "params (M)", "name"])
    for name in vit.imagenet_models:
        model = meta_model(name)
        block = model.blocks[0]
        size = name.split("_")[1].title()
        table.rows.append([f"ViT-{size}/{model.patch_embed.patch_size[0]}", len(model.blocks), model.embed_dim,
                           block.mlp.fc1.out_features, block.attn.num_heads, param_count(model) / 1e6, name])
    return table


def catalogue_models() -> list[tuple[str, str]]:
    """(family, model) of every architecture at the scale of its paper: ImageNet, or LeNet's 32x32 digits."""
    from models.catalogue import FAMILIES

    return [(f.name, m) for f in FAMILIES for m in (f.imagenet_models or f.small_models)]


def model_row(name: str, **kwargs) -> dict[str, Any]:
    """Params, GMACs, activation memory and depth of one model at its native input size."""
    from models._factory import model_complexity

    shape = input_shape(name)
    complexity = model_complexity(name, num_classes_of(name), shape[0], shape[1], **kwargs)
    values, depth = forward_profile(meta_model(name, **kwargs), shape)
    return {"input": shape_text(shape), "params_m": complexity["param_count"], "gmacs": complexity["gmacs"],
            "activations_m": values / 1e6, "activation_mb": values * BYTES_FP32 / 1e6, "depth": depth}


def complexity(entries: list[tuple[str, dict]] | None = None) -> Table:
    """Params, GMACs and forward activation memory per image of every architecture (or of `entries`)."""
    from models.catalogue import family_of

    entries = entries if entries is not None else [(m, {}) for _, m in catalogue_models()]
    table = Table("complexity", "Complexity of every architecture, one image at its paper's input size",
                  ["model", "family", "input", "params (M)", "GMACs", "activations (M values)",
                   "activation memory (MB, fp32)", "weight layers"])
    for name, kwargs in entries:
        row = model_row(name, **kwargs)
        table.rows.append([name, family_of(name), row["input"], row["params_m"], row["gmacs"], row["activations_m"],
                           row["activation_mb"], row["depth"]])
    table.note = ("MACs by torch's FlopCounterMode; activations = input + outputs of conv, linear and pooling "
                  "layers (forward pass, batch of one); weight layers = convs and FCs on the longest path, "
                  "in eval mode (auxiliary heads off).")
    return table


def models_table() -> Table:
    """`pipeline models`: every architecture with its family, paper, size and cost, small variants, ILSVRC result."""
    from models._factory import model_complexity
    from models.catalogue import FAMILIES, family_of
    from pipeline.spec.reference import catalogue

    ilsvrc = {family_of(row.model): row.value for row in catalogue()["ilsvrc-winners"]}
    table = Table("models", "The model zoo",
                  ["model", "family", "year", "input", "params (M)", "GMACs", "small-image variants",
                   "ILSVRC top-5 err (%)", "paper"])
    for family in FAMILIES:
        for i, name in enumerate(family.imagenet_models or family.small_models):
            shape = input_shape(name)
            c = model_complexity(name, num_classes_of(name), shape[0], shape[1])
            first = i == 0  # the family's cells once, on its first row
            table.rows.append([name, family.name, str(family.year), shape_text(shape), c["param_count"], c["gmacs"],
                               ", ".join(family.small_models) if first else "",
                               ilsvrc.get(family.name, "") if first else "",
                               family.paper if first else ""])
    return table


BUILDERS: dict[str, Callable[[], Table]] = {
    "conv_examples": conv_examples, "alexnet_layers": alexnet_layers, "vgg16_memory": vgg16_memory,
    "inception_modules": inception_modules, "stacked_convs": stacked_convs, "vit_sizes": vit_sizes,
    "complexity": complexity,
}


def build_tables(only: list[str] | None = None, entries: list[tuple[str, dict]] | None = None) -> list[Table]:
    """The lecture's tables (or those named in `only`); `entries` picks the complexity table's models."""
    for key in only or []:
        if key not in BUILDERS:
            raise PipelineError(f"unknown table '{key}': use one of {', '.join(BUILDERS)}")
    tables = [complexity(entries) if key == "complexity" else BUILDERS[key]()
              for key in BUILDERS if not only or key in only]
    for table in tables:
        annotate(table)
    return tables


def cell(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return str(value)


def to_markdown(table: Table) -> str:
    lines = [f"### {table.title}", "", "| " + " | ".join(table.columns) + " |",
             "|" + "|".join("---" for _ in table.columns) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.rows]
    if table.note:
        lines += ["", table.note]
    return "\n".join(lines) + "\n"


def to_csv(table: Table) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(table.columns)
    writer.writerows(table.rows)
    return out.getvalue()


def to_rich(table: Table):
    from rich.table import Table as RichTable

    rich = RichTable(title=table.title, caption=table.note or None)
    for i, column in enumerate(table.columns):
        numeric = any(isinstance(row[i], (int, float)) and not isinstance(row[i], bool) for row in table.rows)
        rich.add_column(column, justify="right" if numeric else "left")
    for row in table.rows:
        rich.add_row(*(cell(v) for v in row))
    return rich


def show(tables: list[Table], fmt: str, console) -> None:
    if fmt not in FORMATS:
        raise PipelineError(f"unknown format '{fmt}': use one of {', '.join(FORMATS)}")
    for table in tables:
        if fmt == "table":
            console.print(to_rich(table))
        elif fmt == "markdown":
            console.print(to_markdown(table), markup=False, highlight=False, soft_wrap=True)
        else:
            console.print(f"# {table.key}", markup=False, highlight=False)
            console.print(to_csv(table), markup=False, highlight=False, soft_wrap=True)


def write(tables: list[Table], directory: str | Path) -> list[Path]:
    """Each table as DIRECTORY/KEY.md and KEY.csv, and all of them in DIRECTORY/tables.md."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PipelineError(f"cannot create output folder {directory}: {exc.strerror}; choose another --out") from None
    paths = []
    for table in tables:
        for suffix, text in ((".md", to_markdown(table)), (".csv", to_csv(table))):
            path = directory / f"{table.key}{suffix}"
            path.write_text(text)
            paths.append(path)
    combined = directory / "tables.md"
    combined.write_text("\n".join(to_markdown(t) for t in tables))
    return [*paths, combined]
