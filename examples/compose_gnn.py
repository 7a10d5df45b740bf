"""DynamicClusterConv inside a small PyG graph classifier, on PyG's generated FakeDataset.

GCNConv on the dataset's edges -> DynamicClusterConv on the graph it builds itself ->
global mean + max pooling -> MLP (``mdgr_graph.nn.DynamicClusterGNN``). No download:
FakeDataset draws random graphs whose node features are shifted by their class.

Example::

    python examples/compose_gnn.py --epochs 10 --sparse
"""

import argparse
import json
import random

import torch
import torch.nn.functional as F
from torch_geometric.datasets import FakeDataset
from torch_geometric.loader import DataLoader

from mdgr_graph.nn import DynamicClusterGNN

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
parser.add_argument("--graphs", type=int, default=400, help="graphs in the dataset")
parser.add_argument("--classes", type=int, default=3)
parser.add_argument("--epochs", type=int, default=10)
parser.add_argument("--lr", type=float, default=0.01)
parser.add_argument("--k", type=int, default=4, help="clusters of DynamicClusterConv")
parser.add_argument("--sparse", action="store_true", help="its message-passing path")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--metrics-json", help="write the test accuracy here")
args = parser.parse_args()

random.seed(args.seed)  # FakeDataset draws sizes and labels with `random`, the rest with torch
torch.manual_seed(args.seed)
dataset = FakeDataset(num_graphs=args.graphs, avg_num_nodes=16, avg_degree=4,
                      num_channels=8, num_classes=args.classes, task="graph")
dataset = dataset.shuffle()
split = int(0.75 * len(dataset))
train_loader = DataLoader(dataset[:split], batch_size=32, shuffle=True)
test_loader = DataLoader(dataset[split:], batch_size=64)

model = DynamicClusterGNN(dataset.num_features, args.classes, k=args.k, sparse=args.sparse)
optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)


def train() -> float:
    model.train()
    total = 0.0
    for data in train_loader:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(data.x, data.edge_index, data.batch, data.num_graphs),
                               data.y)
        loss.backward()
        optimizer.step()
        total += loss.item() * data.num_graphs
    return total / split


@torch.no_grad()
def test(loader) -> float:
    model.eval()
    correct = 0
    for data in loader:
        pred = model(data.x, data.edge_index, data.batch, data.num_graphs).argmax(dim=-1)
        correct += int((pred == data.y).sum())
    return correct / len(loader.dataset)


for epoch in range(1, args.epochs + 1):
    loss = train()
    print(f"epoch {epoch:02d} loss {loss:.4f} train {test(train_loader):.3f} "
          f"test {test(test_loader):.3f}")
accuracy = test(test_loader)
print(f"test accuracy {accuracy:.3f} (chance {1 / args.classes:.3f})")
if args.metrics_json:
    with open(args.metrics_json, "w") as f:
        json.dump({"accuracy/test": accuracy, "chance": 1 / args.classes}, f)
