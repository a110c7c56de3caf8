"""The lecture's numbers (seed lecture, "Classification Models based on CNNs and Vision Transformers")
checked against what `pipeline tables` recomputes from the model definitions.

The lecture's figures are typed in here, and only here: the product computes every one of them.
"""
import csv
import os

import pytest
from conftest import ROOT, run_cli
from mlflow import MlflowClient
from rich.console import Console

from pipeline.results import tables
from pipeline.spec.loading import load_spec

LECTURE_TABLES = ["conv_examples", "alexnet_layers", "vgg16_memory", "inception_modules", "stacked_convs",
                  "vit_sizes"]


@pytest.fixture(scope="module")
def output(tmp_path_factory):
    """`pipeline tables` as a user runs it, every table but the zoo-wide complexity one, as CSV files."""
    out = tmp_path_factory.mktemp("tables")
    args = [arg for key in LECTURE_TABLES for arg in ("--only", key)]
    result = run_cli("tables", "--format", "csv", "--out", str(out), *args, cwd=out)
    assert result.returncode == 0, result.stderr
    assert "# vgg16_memory" in result.stdout  # printed too

    def read(key):
        with open(out / f"{key}.csv") as f:
            return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]
    read.dir = out
    return read


def _number(text):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def by_first(rows):
    return {next(iter(row.values())): row for row in rows}


def test_convolution_output_sizes_and_parameters(output):
    rows = by_first(output("conv_examples"))
    assert rows["7x7 input, 3x3 filter, stride 1"]["output"] == "5x5x1"  # (7 - 3)/1 + 1 = 5
    assert rows["7x7 input, 3x3 filter, stride 2"]["output"] == "3x3x1"  # (7 - 3)/2 + 1 = 3
    assert rows["7x7 input, 3x3 filter, stride 1, pad 1"]["output"] == "7x7x1"  # "7x7 output!"
    # zero-padding (F-1)/2 preserves the size: F = 3, 5, 7 with pad 1, 2, 3
    assert rows["7x7 input, 5x5 filter, stride 1, pad 2"]["output"] == "7x7x1"
    assert rows["7x7 input, 7x7 filter, stride 1, pad 3"]["output"] == "7x7x1"
    assert rows["6x6 input, 3x3 kernel (cross-correlation)"]["output"] == "4x4x1"  # (H - (kH - 1))
    example = rows["32x32x3 input, 10 5x5 filters, stride 1, pad 2"]
    assert example["output"] == "32x32x10"
    assert example["params per filter"] == 76 and example["params"] == 760  # 5*5*3 + 1 = 76, x 10 = 760
    assert rows["56x56x64 input, 32 1x1 filters"]["params per filter"] == 64 + 1  # a 1x1x64 filter
    assert rows["4x4 input, 2x2 max pool, stride 2"]["output"] == "2x2x1"
    assert rows["4x4 input, 2x2 max pool, stride 2"]["params"] == 0


def test_alexnet_layer_by_layer(output):
    rows = by_first(output("alexnet_layers"))
    lecture = {  # [output] LAYER: configuration, as the lecture lists them
        "INPUT": ("227x227x3", None),
        "CONV1": ("55x55x96", "96 11x11 filters at stride 4, pad 0"),
        "MAX POOL1": ("27x27x96", "3x3 filters at stride 2"),
        "CONV2": ("27x27x256", "256 5x5 filters at stride 1, pad 2"),
        "MAX POOL2": ("13x13x256", "3x3 filters at stride 2"),
        "CONV3": ("13x13x384", "384 3x3 filters at stride 1, pad 1"),
        "CONV4": ("13x13x384", "384 3x3 filters at stride 1, pad 1"),
        "CONV5": ("13x13x256", "256 3x3 filters at stride 1, pad 1"),
        "MAX POOL3": ("6x6x256", "3x3 filters at stride 2"),
        "FC6": ("4096", "4096 neurons"),
        "FC7": ("4096", "4096 neurons"),
        "FC8": ("1000", "1000 neurons"),
    }
    for layer, (shape, configuration) in lecture.items():
        assert str(rows[layer]["output"]) == shape, layer
        if configuration:
            assert rows[layer]["configuration"] == configuration, layer
    # NORM1/NORM2 keep their input's shape; the paper (and the model) normalizes before pooling,
    # where the lecture's simplified list puts them after it.
    assert rows["NORM1"]["output"] == rows["CONV1"]["output"]
    assert rows["NORM2"]["output"] == rows["CONV2"]["output"]
    # The two-GPU split: CONV2, CONV4, CONV5 see only their own GPU's half of the maps; CONV3 and the FCs all.
    split = "params, two-GPU split (groups=2)"
    for layer in ("CONV2", "CONV4", "CONV5"):
        assert rows[layer][split] < rows[layer]["params"]
    for layer in ("CONV1", "CONV3", "FC6", "FC7", "FC8"):
        assert rows[layer][split] == rows[layer]["params"]
    assert round(rows["TOTAL"][split] / 1e6) == 61  # "about 61M"


LECTURE_VGG16 = [  # (layer, output, memory as the lecture rounds it, weights); biases are not in its counts
    ("INPUT", "224x224x3", 150e3, 0),
    ("CONV3-64", "224x224x64", 3.2e6, 1_728), ("CONV3-64", "224x224x64", 3.2e6, 36_864),
    ("POOL2", "112x112x64", 800e3, 0),
    ("CONV3-128", "112x112x128", 1.6e6, 73_728), ("CONV3-128", "112x112x128", 1.6e6, 147_456),
    ("POOL2", "56x56x128", 400e3, 0),
    ("CONV3-256", "56x56x256", 800e3, 294_912), ("CONV3-256", "56x56x256", 800e3, 589_824),
    ("CONV3-256", "56x56x256", 800e3, 589_824),
    ("POOL2", "28x28x256", 200e3, 0),
    ("CONV3-512", "28x28x512", 400e3, 1_179_648), ("CONV3-512", "28x28x512", 400e3, 2_359_296),
    ("CONV3-512", "28x28x512", 400e3, 2_359_296),
    ("POOL2", "14x14x512", 100e3, 0),
    ("CONV3-512", "14x14x512", 100e3, 2_359_296), ("CONV3-512", "14x14x512", 100e3, 2_359_296),
    ("CONV3-512", "14x14x512", 100e3, 2_359_296),
    ("POOL2", "7x7x512", 25e3, 0),
    ("FC", "1x1x4096", 4096, 102_760_448), ("FC", "1x1x4096", 4096, 16_777_216), ("FC", "1000", 1000, 4_096_000),
]


def test_vgg16_memory_and_parameters(output):
    rows = output("vgg16_memory")
    layers, totals = rows[:-2], by_first(rows[-2:])
    assert len(layers) == len(LECTURE_VGG16)
    for row, (layer, shape, memory, weights) in zip(layers, LECTURE_VGG16):
        assert (row["layer"], str(row["output"])) == (layer, shape)
        assert row["memory (values)"] == pytest.approx(memory, rel=0.05)  # the lecture rounds: 150K, 3.2M...
        assert row["weights"] == weights  # exact: (3*3*3)*64 = 1,728 ...
    assert round(totals["TOTAL"]["params (weights + biases)"] / 1e6) == 138  # "TOTAL params: 138M parameters"
    # "TOTAL memory: 24M * 4 bytes ~ 96MB / image": the lecture's own rows add up to 15.2M values (61 MB),
    # not 24M; the recomputed total is the sum of the rows.
    assert totals["TOTAL"]["memory (values)"] == pytest.approx(sum(m for _, _, m, _ in LECTURE_VGG16), rel=0.01)
    assert totals["TOTAL bytes (fp32)"]["memory (values)"] == 4 * totals["TOTAL"]["memory (values)"]
    # "Most memory is in early CONV, most params are in late FC"
    assert max(layers, key=lambda r: r["memory (values)"])["layer"] == "CONV3-64"
    fc_params = sum(r["params (weights + biases)"] for r in layers if r["layer"] == "FC")
    assert fc_params > 0.85 * totals["TOTAL"]["params (weights + biases)"]


def test_inception_naive_vs_bottleneck(output):
    rows = output("inception_modules")
    naive = [r for r in rows if r["module"] == "naive"]
    reduced = [r for r in rows if r["module"] == "with dimension reduction"]
    # Q1-Q3: the output sizes of every branch and after concatenation
    assert [(r["layer"], r["output"]) for r in naive] == [
        ("[1x1 conv, 128]", "28x28x128"), ("[3x3 conv, 192]", "28x28x192"), ("[5x5 conv, 96]", "28x28x96"),
        ("[3x3 pool]", "28x28x256"), ("filter concatenation", "28x28x672")]  # 28x28x(128+192+96+256)
    # "Conv Ops" of the naive module, row by row, and "Total: 854M ops"
    assert [r["MACs"] for r in naive[:3]] == [28 * 28 * 128 * 1 * 1 * 256, 28 * 28 * 192 * 3 * 3 * 256,
                                              28 * 28 * 96 * 5 * 5 * 256]
    assert round(naive[-1]["MACs"] / 1e6) == 854
    # The same layers with "1x1 conv, 64 filter" bottlenecks: the lecture's six rows
    lecture_rows = sorted([28 * 28 * 64 * 1 * 1 * 256, 28 * 28 * 64 * 1 * 1 * 256, 28 * 28 * 128 * 1 * 1 * 256,
                           28 * 28 * 192 * 3 * 3 * 64, 28 * 28 * 96 * 5 * 5 * 64, 28 * 28 * 64 * 1 * 1 * 256])
    convs = [r for r in reduced if "conv" in r["layer"]]
    assert sorted(r["MACs"] for r in convs) == lecture_rows
    # Its "Total: 358M ops" is not the sum of those rows (271M): the recomputed total is.
    assert reduced[-1]["MACs"] == sum(lecture_rows)
    assert reduced[-1]["MACs"] < naive[-1]["MACs"] / 3
    assert reduced[-1]["output"] == "28x28x480"  # the pooling branch's bottleneck keeps the depth from growing


def test_the_lecture_column_stands_beside_each_stated_figure_and_marks_the_wrong_totals(output):
    vgg = by_first(output("vgg16_memory")[-2:])["TOTAL"]
    assert round(vgg["memory (values)"] / 1e5) == 152 and vgg["lecture says (memory)"] == "≠ 24M"
    assert round(vgg["weights"] / 1e6) == 138 and vgg["lecture says (weights)"] == "138M"
    rows = output("inception_modules")
    totals = {r["module"]: r for r in rows if r["layer"] == "filter concatenation"}
    assert round(totals["naive"]["MACs"] / 1e6) == 854 and totals["naive"]["lecture says"] == "854M"
    assert round(totals["with dimension reduction"]["MACs"] / 1e6) == 271
    assert totals["with dimension reduction"]["lecture says"] == "≠ 358M"
    # every conv row the slide states agrees with ours; the pools it does not state stay empty
    assert all(not str(r["lecture says"]).startswith("≠") for r in rows if "conv" in r["layer"])
    assert all(r["lecture says"] in ("", None) for r in rows if "pool" in r["layer"])
    notes = (output.dir / "inception_modules.md").read_text() + (output.dir / "vgg16_memory.md").read_text()
    assert "the slide says 358M for with dimension reduction filter concatenation, but its own rows add up to " \
           "271.4M" in notes
    assert "the slide says 24M for TOTAL, but its own rows add up to 15.2M" in notes
    alexnet = by_first(output("alexnet_layers"))
    assert alexnet["CONV1"]["lecture says"] == "55x55x96" and alexnet["NORM1"]["lecture says"] == "≠ 27x27x96"


def test_stacked_3x3_convolutions(output):
    rows = by_first(output("stacked_convs"))
    assert [rows[f"{n} x 3x3 conv"]["receptive field"] for n in (1, 2, 3)] == ["3x3", "5x5", "7x7"]
    assert rows["3 x 3x3 conv"]["receptive field"] == rows["1 x 7x7 conv"]["receptive field"]  # same field
    assert rows["3 x 3x3 conv"]["params / C^2"] == 3 * 3 ** 2  # 3 * (3^2 C^2)
    assert rows["1 x 7x7 conv"]["params / C^2"] == 7 ** 2  # vs. 7^2 C^2


def test_vit_sizes(output):
    rows = by_first(output("vit_sizes"))
    lecture = {"ViT-Base/16": (12, 768, 3072, 12, 86), "ViT-Large/16": (24, 1024, 4096, 16, 307),
               "ViT-Huge/14": (32, 1280, 5120, 16, 632)}
    for model, (layers, hidden, mlp, heads, params) in lecture.items():
        row = rows[model]
        assert (row["layers"], row["hidden size D"], row["MLP size"], row["heads"]) == (layers, hidden, mlp, heads)
        assert row["params (M)"] == pytest.approx(params, rel=0.01)  # the paper's rounded counts


def test_outputs_as_markdown_files(output):
    markdown = (output.dir / "vgg16_memory.md").read_text()
    assert markdown.startswith("### VGG-16") and "| CONV3-64 | 224x224x64 | 3,211,264 | 224*224*64 | 1,728 | 1,728 | 1,792 |" in markdown
    combined = (output.dir / "tables.md").read_text()
    assert all(f"### {t}" in combined for t in ("AlexNet", "Inception module", "Vision Transformer"))


def test_depth_and_complexity_from_the_definitions():
    """The lecture's layer counts: AlexNet 8, VGG 16-19, GoogLeNet 22, ResNet 34...152."""
    names = ["alexnet2012", "vgg16", "vgg19", "googlenet_v1", "resnet34", "resnet152"]
    table = tables.complexity([(name, {}) for name in names])
    depth = {name: table.row(name)["weight layers"] for name in names}
    assert depth == {"alexnet2012": 8, "vgg16": 16, "vgg19": 19, "googlenet_v1": 22, "resnet34": 34,
                     "resnet152": 152}
    vgg = table.row("vgg16")
    assert vgg["activations (M values)"] == pytest.approx(
        tables.vgg16_memory().row("TOTAL")["memory (values)"] / 1e6)  # one definition of memory for all
    assert vgg["params (M)"] == pytest.approx(138.357544)
    assert table.row("alexnet2012")["input"] == "227x227x3"
    # GoogLeNet (with its auxiliary heads) is far cheaper than VGG-16 in parameters and MACs
    assert table.row("googlenet_v1")["GMACs"] < vgg["GMACs"] / 5
    assert table.row("googlenet_v1")["params (M)"] < vgg["params (M)"] / 10


def test_models_lists_every_architecture():
    result = run_cli("models", "--format", "csv", cwd=ROOT)
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(line for line in result.stdout.splitlines() if not line.startswith("# ")))
    listed = {row["model"]: row for row in rows}
    assert {name for _, name in tables.catalogue_models()} == set(listed)
    assert float(listed["vgg16"]["params (M)"]) == pytest.approx(138.357544)
    assert float(listed["resnet50"]["GMACs"]) == pytest.approx(4.09, abs=0.01)
    # the ILSVRC top-5 errors the lecture gives: ZFNet 11.7, VGG 7.3, GoogLeNet 6.7, ResNet 3.57
    ilsvrc = {row["family"]: row["ILSVRC top-5 err (%)"] for row in rows if row["ILSVRC top-5 err (%)"]}
    assert {k: float(v) for k, v in ilsvrc.items() if k in ("ZFNet", "VGG", "GoogLeNet", "ResNet")} == {
        "ZFNet": 11.7, "VGG": 7.3, "GoogLeNet": 6.7, "ResNet": 3.57}
    assert "resnet20" in listed["resnet18"]["small-image variants"]
    assert listed["resnet18"]["year"] == "2015"


def test_bad_table_options_are_one_line_errors(tmp_path):
    result = run_cli("tables", "--only", "vgg17", cwd=tmp_path)
    assert result.returncode == 2 and "unknown table 'vgg17'" in result.stderr
    assert "Traceback" not in result.stderr
    result = run_cli("tables", "--format", "html", "--only", "conv_examples", cwd=tmp_path)
    assert result.returncode == 2 and "unknown format 'html'" in result.stderr


def test_tables_stage_logs_markdown_and_csv_to_mlflow(ray_cluster, workdir):
    from pipeline.engine import workflow

    spec = load_spec(ROOT / "experiments" / "lecture_tables.yaml",
                     ["models=[lenet5, googlenet_v1]", f"tracking.uri=sqlite:///{workdir / 'mlflow.db'}"])
    context = workflow.run(spec, Console(file=open(os.devnull, "w")))
    run_id = context.outputs["tables"]["run_id"]
    client = MlflowClient(spec.tracking.uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["stage"] == "tables"
    assert run.data.tags["mlflow.parentRunId"] == context.parent_run_id
    logged = {a.path for a in client.list_artifacts(run_id, "tables")}
    assert logged == {f"tables/{key}.{ext}" for key in [*LECTURE_TABLES, "complexity"] for ext in ("md", "csv")}
    path = client.download_artifacts(run_id, "tables/complexity.csv", str(workdir))
    with open(path) as f:
        models = [row["model"] for row in csv.DictReader(f)]
    assert models == ["lenet5", "googlenet_v1"]  # the complexity table covers the spec's models
    path = client.download_artifacts(run_id, "tables/vgg16_memory.csv", str(workdir))
    with open(path) as f:
        assert f.read() == tables.to_csv(tables.build_tables(only=["vgg16_memory"])[0])  # as `pipeline tables` shows it
