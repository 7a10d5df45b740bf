import time, torch, statistics, json
torch.set_num_threads(1)
from torch_geometric.loader import DataLoader
from mdgr_graph.data.dataset import SequenceDataset
from mdgr_graph.data.prepare import DataOptions, prepare_dataset
from mdgr_graph.models import build_model
import mdgr_graph
p = prepare_dataset(DataOptions(format="amazon", path="/work/shared/data/amazon-beauty/interactions.tsv.gz", protocol="loo"))
ds = SequenceDataset(p, "train", loo_train_targets="all")
g = torch.Generator().manual_seed(0)
batches = [b for _, b in zip(range(16), DataLoader(ds, batch_size=128, shuffle=True, generator=g))]
torch.manual_seed(0)
model = build_model("mip", p, dim=64, loss="ce")
opt = torch.optim.Adam(model.parameters(), 1e-3)
times = []; losses = []
for r in range(3):
    t = time.perf_counter()
    for b in batches:
        opt.zero_grad(); l = model.loss(b); l.backward(); opt.step(); losses.append(float(l))
    times.append((time.perf_counter() - t) / len(batches))
print(json.dumps({"code": mdgr_graph.__file__, "s_per_batch": statistics.median(times), "last_loss": losses[-1], "loss_sum": sum(losses)}))
