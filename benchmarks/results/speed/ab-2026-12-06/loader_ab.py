import sys, time, json, statistics
import torch
torch.set_num_threads(1)
from mdgr_graph.data.dataset import SequenceDataset
from mdgr_graph.data.prepare import DataOptions, prepare_dataset
from mdgr_graph.models import build_model
from mdgr_graph.train import TrainConfig, _train_epoch, evaluate
import mdgr_graph
path = "/work/shared/data/ml-1m-subset/ratings.dat.gz"
paper = prepare_dataset(DataOptions(format="movielens", path=path, protocol="paper"))
loo = prepare_dataset(DataOptions(format="movielens", path=path, protocol="loo"))
train = SequenceDataset(paper, "train")[: 16 * 128]
config = TrainConfig(batch_size=128, progress=False, seed=0)
out = {"code": mdgr_graph.__file__}
for name, kw in [("sasrec", {}), ("mdgr_m1", {"m": 1}), ("mdgr", {})]:
    torch.manual_seed(0)
    model = build_model(name.split("_")[0], paper, **kw)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    ts = []
    for e in range(3):
        t0 = time.perf_counter(); loss = _train_epoch(model, opt, train, config, e); ts.append(time.perf_counter() - t0)
    torch.manual_seed(0)
    em = build_model(name.split("_")[0], loo, **kw)
    es = []
    for r in range(2):
        t0 = time.perf_counter(); met = evaluate(em, loo, "test", batch_size=256); es.append(time.perf_counter() - t0)
    out[name] = {"train_per_batch": statistics.median(ts) / 16, "loss": loss,
                 "eval_users_per_s": 2999 / min(es), "ndcg": met["ndcg@10/full"]}
print(json.dumps(out))
