"""The code shown in README.md runs."""

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_layer_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    source = next(b for b in blocks if "DynamicClusterConv" in b)
    namespace: dict = {}
    exec(compile(source, "README.md", "exec"), namespace)
    net = namespace["Net"]()
    x = torch.randn(9, 32)
    edge_index = torch.tensor([[0, 1, 2, 5, 6], [1, 2, 3, 6, 7]])
    batch = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 1])
    out, cluster = net(x, edge_index, batch)
    assert out.shape == (9, 32) and cluster.shape == (9,)
    out.sum().backward()


def test_readme_opens_with_two_make_commands():
    lines = README.read_text().splitlines()
    block = lines[lines.index("```bash") + 1 : lines.index("```")]
    assert [line.split()[0:2] for line in block] == [["make", "demo"], ["make", "test"]]
